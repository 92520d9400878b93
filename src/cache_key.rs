//! Response-cache keys without I/O: the synthetic URLs under which the worker keeps search
//! results and query embeddings in the Cache API (`edge::cache`).
//!
//! A search key holds the index name and the version the request pinned, so a publish that
//! flips `<index>/current` moves every query to new keys: an answer cached for the old version
//! is never served for the new one. The rest of the query (vector bits or normalised text with
//! the embedding model, `k`, effective `ef`, `probe`, the filter) is hashed with SHA-256 over a
//! canonical JSON form (object keys sorted at every depth), so equal queries share a key however
//! their JSON was spelled, and no query can be crafted to collide with another's.
use std::fmt::Write;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::api::{Query, SearchRequest};

/// Not a real host: the Cache API keys by URL, and this one can never be fetched.
pub const CACHE_ORIGIN: &str = "https://cache.edgerag.internal";

/// Trims and collapses every whitespace run to one space. Not lowercased: the worker cannot
/// tell whether the configured embedding model is uncased (all-MiniLM-L6-v2's BERT normaliser
/// lowercases; many models do not), and the text embedded is exactly this normalised text, so
/// a cached vector is always the one its key's text would get.
pub fn normalise_text(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Where the results of `request` against `version` of its index are cached. `embedding_model`
/// is the model a text query is embedded with (part of what the text means).
pub fn search_key(request: &SearchRequest, version: &str, embedding_model: &str) -> String {
    let bits = |vector: &[f32]| vector.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let query = match &request.query {
        Query::Vector(vector) => serde_json::json!({ "vector_bits": bits(vector) }),
        Query::Text(text) => {
            serde_json::json!({ "text": normalise_text(text), "model": embedding_model })
        }
        Query::VectorAndText(vector, text) => {
            serde_json::json!({ "vector_bits": bits(vector), "text": normalise_text(text) })
        }
    };
    let shape = serde_json::json!({
        "query": query,
        "k": request.k,
        "ef": request.effective_ef(),
        "probe": request.probe,
        "filter": request.filter.as_ref().map(|f| Value::Object(f.as_json().clone())),
        "mode": request.mode,
        "rrf_k": request.rrf_k,
    });
    format!(
        "{CACHE_ORIGIN}/search/{}/{}/{}",
        segment(&request.index),
        segment(version),
        sha256_hex(&canonical(&shape))
    )
}

/// Where the embedding of (already normalised) `text` by `model` is cached; independent of any
/// index version.
pub fn embedding_key(model: &str, text: &str) -> String {
    format!(
        "{CACHE_ORIGIN}/embedding/{}/{}",
        segment(model),
        sha256_hex(text)
    )
}

/// JSON with object keys sorted at every depth, whatever order the map kept them in.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let members: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[*k])))
                .collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        scalar => scalar.to_string(),
    }
}

fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Percent-encodes all but RFC 3986's unreserved characters, so a name is one path segment.
fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse_search;

    fn key(body: &str, version: &str) -> String {
        let request = parse_search(Some("application/json"), body.as_bytes()).expect("valid");
        search_key(&request, version, "minilm")
    }

    #[test]
    fn equal_queries_share_a_key_however_spelled() {
        let a = key(
            r#"{"index":"docs","vector":[1,0.5],"k":3,"filter":{"a":1,"b":{"y":2,"x":1}}}"#,
            "v1",
        );
        let b = key(
            r#"{"filter":{"b":{"x":1,"y":2},"a":1},"k":3,"vector":[1.0,0.50],"index":"docs","ef":64}"#,
            "v1",
        );
        assert_eq!(
            a, b,
            "key order, number spelling and the default ef do not matter"
        );
        assert!(
            a.starts_with("https://cache.edgerag.internal/search/docs/v1/"),
            "{a}"
        );
        let text = key(
            r#"{"index":"docs","text":"  How do I\tread\n a file? "}"#,
            "v1",
        );
        assert_eq!(
            text,
            key(r#"{"index":"docs","text":"How do I read a file?"}"#, "v1")
        );
    }

    #[test]
    fn anything_that_changes_the_answer_changes_the_key() {
        let base = key(r#"{"index":"docs","vector":[1,0.5]}"#, "v1");
        let others = [
            key(r#"{"index":"docs","vector":[1,0.5]}"#, "v2"),
            key(r#"{"index":"other","vector":[1,0.5]}"#, "v1"),
            key(r#"{"index":"docs","vector":[1,0.25]}"#, "v1"),
            key(r#"{"index":"docs","vector":[1,0.5],"k":3}"#, "v1"),
            key(r#"{"index":"docs","vector":[1,0.5],"ef":65}"#, "v1"),
            key(r#"{"index":"docs","vector":[1,0.5],"probe":1}"#, "v1"),
            key(
                r#"{"index":"docs","vector":[1,0.5],"filter":{"a":1}}"#,
                "v1",
            ),
            key(
                r#"{"index":"docs","vector":[1,0.5],"filter":{"a":"1"}}"#,
                "v1",
            ),
            key(r#"{"index":"docs","text":"1 0.5"}"#, "v1"),
            key(r#"{"index":"docs","vector":[1,0.5],"text":"q"}"#, "v1"),
        ];
        for (i, other) in others.iter().enumerate() {
            assert_ne!(&base, other, "variant {i}");
        }
        let text = key(r#"{"index":"docs","text":"q"}"#, "v1");
        for other in [
            key(r#"{"index":"docs","text":"q","mode":"lexical"}"#, "v1"),
            key(r#"{"index":"docs","text":"q","mode":"vector"}"#, "v1"),
            key(r#"{"index":"docs","text":"q","rrf_k":1}"#, "v1"),
        ] {
            assert_ne!(text, other);
        }
        let request = parse_search(Some("application/json"), br#"{"index":"docs","text":"q"}"#)
            .expect("valid");
        assert_ne!(
            search_key(&request, "v1", "minilm"),
            search_key(&request, "v1", "other-model")
        );
        assert_ne!(
            normalise_text("Read"),
            normalise_text("read"),
            "no lowercasing: the model may be cased"
        );
    }

    #[test]
    fn names_are_one_path_segment() {
        let k = key(r#"{"index":"a/b?c#d e","vector":[1]}"#, "v1");
        assert!(
            k.starts_with("https://cache.edgerag.internal/search/a%2Fb%3Fc%23d%20e/v1/"),
            "{k}"
        );
        assert_eq!(
            embedding_key("all-MiniLM-L6-v2", "hello"),
            "https://cache.edgerag.internal/embedding/all-MiniLM-L6-v2/2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(
            canonical(&serde_json::json!({"b":[{"d":1,"c":"\n"}],"a":null})),
            r#"{"a":null,"b":[{"c":"\n","d":1}]}"#
        );
    }
}
