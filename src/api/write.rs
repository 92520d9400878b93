//! The write routes' bodies: `POST /v1/indexes` (create an empty index), `/upsert` (JSON
//! `{vectors: [...]}` or NDJSON, one vector per line) and `/delete` (`{ids: [...]}`). Every item is
//! checked before anything is written, and an error names the item: a rejected batch writes
//! nothing. An upsert item may carry `text` and no `values`: the worker embeds it with the
//! index's model ([`Upsert::embedded`] fits the vectors back in).
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::search::finite;
use super::{parse_json, ApiError};
use crate::shard::{DocId, Metric, Quant};
use crate::write::{Change, Put};

/// Room for 1,000 vectors of 1,536 dimensions written as JSON numbers, with their texts.
pub const WRITE_BODY_LIMIT: usize = 32 << 20;
/// Vectors (or ids) per request when `WRITE_BATCH_MAX` is not set.
pub const WRITE_BATCH_DEFAULT: usize = 1000;
/// A passage's text, in characters.
pub const TEXT_CHARS_MAX: usize = 32 * 1024;
/// A passage's metadata, as JSON bytes.
pub const METADATA_BYTES_MAX: usize = 8 * 1024;
/// A string id, in bytes.
pub const ID_BYTES_MAX: usize = 512;

/// A passage's own fields in a corpus line, which metadata may not reuse (a compaction writes
/// written passages back as corpus lines).
const RESERVED_FIELDS: [&str; 3] = ["id", "text", "vector"];

/// The media type of a body of JSON lines.
pub const NDJSON: &str = "application/x-ndjson";

/// `POST /v1/indexes`: a new, empty index.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateIndex {
    pub name: String,
    pub dims: usize,
    #[serde(default = "default_metric")]
    pub metric: Metric,
    #[serde(default = "default_quant")]
    pub quant: Quant,
    /// Regions whose buckets hold it; all bound regions when absent.
    pub regions: Option<Vec<String>>,
    /// The model its vectors come from, which text upserts and text queries are embedded with
    /// (the worker's `EMBEDDING_MODEL` when absent).
    pub embedding_model: Option<String>,
}

fn default_metric() -> Metric {
    Metric::Cosine
}

fn default_quant() -> Quant {
    Quant::F16
}

/// The largest dimensionality an index may be created with.
pub const DIMS_MAX: usize = 4096;

pub fn parse_create(content_type: Option<&str>, body: &[u8]) -> Result<CreateIndex, ApiError> {
    let create: CreateIndex = parse_json(content_type, body, 64 * 1024)?;
    if !(1..=DIMS_MAX).contains(&create.dims) {
        return Err(ApiError::Invalid(format!(
            "`dims` must be in 1..={DIMS_MAX}, got {}",
            create.dims
        )));
    }
    if let Some(regions) = &create.regions {
        if regions.is_empty() {
            return Err(ApiError::Invalid(
                "`regions` is empty: name at least one, or leave it out for every region".into(),
            ));
        }
    }
    Ok(create)
}

/// One vector of an upsert, as sent.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertItem {
    id: Value,
    // f64 first, so a component that overflows f32 is reported instead of becoming inf. Absent:
    // the worker embeds `text`.
    values: Option<Vec<f64>>,
    #[serde(default)]
    text: String,
    #[serde(default)]
    metadata: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpsertBody {
    vectors: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeleteBody {
    ids: Vec<Value>,
}

/// A checked upsert: a passage per id, each replacing that id whole.
#[derive(Debug, Clone, PartialEq)]
pub struct Upsert {
    pub changes: Vec<Change>,
    /// Which of `changes` came with `text` and no `values`: their vectors are still empty,
    /// until [`Upsert::embedded`] gives them their text's embedding.
    pub to_embed: Vec<usize>,
}

impl Upsert {
    /// The texts to embed, in the order [`Upsert::embedded`] takes their vectors.
    pub fn texts_to_embed(&self) -> Vec<&str> {
        self.to_embed
            .iter()
            .filter_map(|&i| self.changes[i].put.as_ref())
            .map(|put| put.text.as_str())
            .collect()
    }

    /// The changes, each text-only item given its vector from `vectors` (the embeddings of
    /// [`Upsert::texts_to_embed`], by `model`): refused whole when the model does not give
    /// vectors of the index's `dims`.
    pub fn embedded(
        mut self,
        vectors: Vec<Vec<f32>>,
        model: &str,
        dims: usize,
    ) -> Result<Vec<Change>, ApiError> {
        if vectors.len() != self.to_embed.len() {
            return Err(ApiError::BadGateway(format!(
                "the embeddings origin answered {} vectors for {} texts",
                vectors.len(),
                self.to_embed.len()
            )));
        }
        for (&i, vector) in self.to_embed.iter().zip(vectors) {
            if vector.len() != dims {
                return Err(ApiError::Invalid(format!(
                    "vectors[{i}]: the embedding model {model} gives {} dimensions; the index has {dims}: send `values` instead",
                    vector.len()
                )));
            }
            if vector.iter().any(|x| !x.is_finite()) {
                return Err(ApiError::BadGateway(format!(
                    "the embedding of vectors[{i}] by {model} has a value that is not finite"
                )));
            }
            if let Some(put) = self.changes[i].put.as_mut() {
                put.vector = vector;
            }
        }
        Ok(self.changes)
    }
}

/// An upsert body (JSON, or NDJSON when the content type says so), checked item by item against
/// the index's `dims` and the limits.
pub fn parse_upsert(
    content_type: Option<&str>,
    body: &[u8],
    dims: usize,
    batch_max: usize,
) -> Result<Upsert, ApiError> {
    let items: Vec<Value> = if is_ndjson(content_type) {
        ndjson_lines(body)?
    } else {
        parse_json::<UpsertBody>(content_type, body, WRITE_BODY_LIMIT)?.vectors
    };
    check_count(items.len(), batch_max, "vectors")?;
    let mut changes = Vec::with_capacity(items.len());
    let mut to_embed = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let item: UpsertItem = serde_json::from_value(item)
            .map_err(|e| ApiError::Invalid(format!("vectors[{i}]: {e}")))?;
        let id =
            doc_id(&item.id).map_err(|why| ApiError::Invalid(format!("vectors[{i}]: {why}")))?;
        let at = || format!("vectors[{i}] (id {})", crate::write::id_key(&id));
        let vector = match &item.values {
            Some(values) if values.len() != dims => {
                return Err(ApiError::Invalid(format!(
                    "{}: `values` has {} dimensions; the index has {dims}",
                    at(),
                    values.len()
                )))
            }
            Some(values) => finite("values", values)
                .map_err(|why| ApiError::Invalid(format!("{}: {why}", at())))?,
            None if item.text.trim().is_empty() => {
                return Err(ApiError::Invalid(format!(
                    "{}: no `values`, and no `text` to embed",
                    at()
                )))
            }
            None => {
                to_embed.push(i);
                Vec::new()
            }
        };
        let chars = item.text.chars().count();
        if chars > TEXT_CHARS_MAX {
            return Err(ApiError::Invalid(format!(
                "{}: `text` has {chars} characters; the limit is {TEXT_CHARS_MAX}",
                at()
            )));
        }
        if let Some(key) = item
            .metadata
            .keys()
            .find(|k| RESERVED_FIELDS.contains(&k.as_str()))
        {
            return Err(ApiError::Invalid(format!(
                "{}: `metadata` may not have a field {key:?} (the names {RESERVED_FIELDS:?} are the passage's own)",
                at()
            )));
        }
        let metadata_bytes = Value::Object(item.metadata.clone()).to_string().len();
        if metadata_bytes > METADATA_BYTES_MAX {
            return Err(ApiError::Invalid(format!(
                "{}: `metadata` is {metadata_bytes} bytes of JSON; the limit is {METADATA_BYTES_MAX}",
                at()
            )));
        }
        changes.push(Change {
            id,
            put: Some(Put {
                vector,
                text: item.text,
                metadata: item.metadata,
            }),
        });
    }
    no_duplicates(&changes, "vectors")?;
    Ok(Upsert { changes, to_embed })
}

/// A delete body: the ids to remove.
pub fn parse_delete(
    content_type: Option<&str>,
    body: &[u8],
    batch_max: usize,
) -> Result<Vec<Change>, ApiError> {
    let ids = parse_json::<DeleteBody>(content_type, body, WRITE_BODY_LIMIT)?.ids;
    check_count(ids.len(), batch_max, "ids")?;
    let changes = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            doc_id(id)
                .map(|id| Change { id, put: None })
                .map_err(|why| ApiError::Invalid(format!("ids[{i}]: {why}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    no_duplicates(&changes, "ids")?;
    Ok(changes)
}

fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(NDJSON))
}

/// Each non-empty line of an NDJSON body as a JSON value; a bad line is named by its number.
fn ndjson_lines(body: &[u8]) -> Result<Vec<Value>, ApiError> {
    if body.len() > WRITE_BODY_LIMIT {
        return Err(ApiError::TooLarge {
            size: body.len(),
            limit: WRITE_BODY_LIMIT,
        });
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| ApiError::MalformedJson(format!("the body is not UTF-8: {e}")))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .map_err(|e| ApiError::MalformedJson(format!("line {}: {e}", n + 1)))
        })
        .collect()
}

fn check_count(count: usize, batch_max: usize, field: &str) -> Result<(), ApiError> {
    if count == 0 {
        return Err(ApiError::Invalid(format!("`{field}` is empty")));
    }
    if count > batch_max {
        return Err(ApiError::Invalid(format!(
            "{count} {field} in one request; the limit is {batch_max} (WRITE_BATCH_MAX)"
        )));
    }
    Ok(())
}

/// An id as the corpus allows: a non-empty string or an integer.
fn doc_id(id: &Value) -> Result<DocId, String> {
    match id {
        Value::String(s) if s.is_empty() => Err("the id is an empty string".into()),
        Value::String(s) if s.len() > ID_BYTES_MAX => Err(format!(
            "the id has {} bytes; the limit is {ID_BYTES_MAX}",
            s.len()
        )),
        Value::String(s) => Ok(DocId::Str(s.clone())),
        Value::Number(n) => n
            .as_i64()
            .map(DocId::Int)
            .ok_or_else(|| format!("the id {n} is not a 64-bit integer")),
        other => Err(format!(
            "the id must be a string or an integer, got {other}"
        )),
    }
}

fn no_duplicates(changes: &[Change], field: &str) -> Result<(), ApiError> {
    let mut seen: HashMap<&DocId, usize> = HashMap::with_capacity(changes.len());
    for (i, change) in changes.iter().enumerate() {
        if let Some(first) = seen.insert(&change.id, i) {
            return Err(ApiError::Invalid(format!(
                "{field}[{i}] repeats the id {} of {field}[{first}]",
                crate::write::id_key(&change.id)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json");

    fn upsert(body: &str) -> Result<Vec<Change>, ApiError> {
        parse_upsert(JSON, body.as_bytes(), 2, 3).map(|u| u.changes)
    }

    fn invalid(result: Result<Vec<Change>, ApiError>) -> String {
        let error = result.unwrap_err();
        assert_eq!(error.status(), 422, "{error}");
        error.to_string()
    }

    #[test]
    fn upserts_parse_from_json_and_ndjson_alike() {
        let json = upsert(
            r#"{"vectors":[{"id":"a","values":[1,2],"text":"t","metadata":{"s":1}},{"id":7,"values":[0,1]}]}"#,
        )
        .unwrap();
        let ndjson = parse_upsert(
            Some("application/x-ndjson; charset=utf-8"),
            b"{\"id\":\"a\",\"values\":[1,2],\"text\":\"t\",\"metadata\":{\"s\":1}}\n\n{\"id\":7,\"values\":[0,1]}\n",
            2,
            3,
        )
        .unwrap()
        .changes;
        assert_eq!(json, ndjson);
        assert_eq!(json[0].id, DocId::Str("a".into()));
        assert_eq!(json[1].id, DocId::Int(7));
        assert_eq!(json[0].put.as_ref().unwrap().vector, vec![1.0, 2.0]);
    }

    #[test]
    fn text_only_items_wait_for_their_embedding_which_must_fit_the_index() {
        let body = r#"{"vectors":[{"id":1,"values":[1,2]},{"id":2,"text":"embed me"},{"id":3,"text":"me too","metadata":{"s":1}}]}"#;
        let parsed = parse_upsert(JSON, body.as_bytes(), 2, 3).unwrap();
        assert_eq!(parsed.to_embed, vec![1, 2]);
        assert_eq!(parsed.texts_to_embed(), vec!["embed me", "me too"]);
        let changes = parsed
            .clone()
            .embedded(vec![vec![0.5, 0.5], vec![0.0, 1.0]], "m", 2)
            .unwrap();
        let vectors: Vec<Vec<f32>> = changes
            .iter()
            .map(|c| c.put.as_ref().unwrap().vector.clone())
            .collect();
        assert_eq!(
            vectors,
            vec![vec![1.0, 2.0], vec![0.5, 0.5], vec![0.0, 1.0]]
        );
        assert_eq!(changes[2].put.as_ref().unwrap().metadata["s"], 1);
        let wrong = parsed
            .clone()
            .embedded(vec![vec![0.5; 3], vec![0.5; 3]], "big-model", 2)
            .unwrap_err();
        assert_eq!(wrong.status(), 422);
        assert!(
            wrong.to_string().contains("big-model") && wrong.to_string().contains("3 dimensions"),
            "{wrong}"
        );
        let short = parsed.embedded(vec![vec![0.5, 0.5]], "m", 2).unwrap_err();
        assert_eq!(short.status(), 502, "{short}");
        let why = invalid(upsert(r#"{"vectors":[{"id":1,"text":"  "}]}"#));
        assert!(why.contains("no `values`"), "{why}");
    }

    #[test]
    fn a_bad_item_is_named_and_fails_the_batch() {
        let why = invalid(upsert(
            r#"{"vectors":[{"id":"a","values":[1,2]},{"id":"b","values":[1]}]}"#,
        ));
        assert!(
            why.contains("vectors[1]") && why.contains("\"b\"") && why.contains("dimensions"),
            "{why}"
        );
        let why = invalid(upsert(r#"{"vectors":[{"id":"a","values":[1e39,2]}]}"#));
        assert!(why.contains("values[0]"), "{why}");
        let why = invalid(upsert(
            r#"{"vectors":[{"id":"a","values":[1,2]},{"id":"a","values":[1,2]}]}"#,
        ));
        assert!(
            why.contains("repeats") && why.contains("vectors[0]"),
            "{why}"
        );
        let long = format!(
            r#"{{"vectors":[{{"id":"a","values":[1,2],"text":"{}"}}]}}"#,
            "x".repeat(TEXT_CHARS_MAX + 1)
        );
        assert!(invalid(upsert(&long)).contains("`text`"));
        let meta = format!(
            r#"{{"vectors":[{{"id":"a","values":[1,2],"metadata":{{"m":"{}"}}}}]}}"#,
            "x".repeat(METADATA_BYTES_MAX)
        );
        assert!(invalid(upsert(&meta)).contains("`metadata`"));
        assert!(invalid(upsert(r#"{"vectors":[{"id":1.5,"values":[1,2]}]}"#)).contains("64-bit"));
        assert!(invalid(upsert(
            r#"{"vectors":[{"id":"a","values":[1,2],"metadata":{"text":"x"}}]}"#
        ))
        .contains("\"text\""));
        assert!(invalid(upsert(r#"{"vectors":[{"id":"","values":[1,2]}]}"#)).contains("empty"));
        assert!(
            invalid(upsert(r#"{"vectors":[{"id":true,"values":[1,2]}]}"#))
                .contains("string or an integer")
        );
        assert!(invalid(upsert(
            r#"{"vectors":[{"id":"a","values":[1,2],"colour":1}]}"#
        ))
        .contains("vectors[0]"));
        assert!(invalid(upsert(r#"{"vectors":[]}"#)).contains("empty"));
        let four = r#"{"vectors":[{"id":1,"values":[1,2]},{"id":2,"values":[1,2]},{"id":3,"values":[1,2]},{"id":4,"values":[1,2]}]}"#;
        assert!(invalid(upsert(four)).contains("WRITE_BATCH_MAX"));
    }

    #[test]
    fn malformed_bodies_are_client_errors() {
        assert_eq!(
            upsert(r#"{"vectors":[{"id":"a","values":[NaN,2]}]}"#)
                .unwrap_err()
                .status(),
            400
        );
        let line = parse_upsert(
            Some(NDJSON),
            b"{\"id\":1,\"values\":[1,2]}\n{\"id\":2,",
            2,
            3,
        )
        .unwrap_err();
        assert_eq!(line.status(), 400);
        assert!(line.to_string().contains("line 2"), "{line}");
        assert_eq!(
            parse_upsert(Some("text/plain"), b"{}", 2, 3)
                .unwrap_err()
                .status(),
            415
        );
    }

    #[test]
    fn deletes_and_creates_are_checked() {
        let ids = parse_delete(JSON, br#"{"ids":["a",3]}"#, 3).unwrap();
        assert_eq!(ids.len(), 2);
        assert!(ids.iter().all(|c| c.put.is_none()));
        assert!(invalid(parse_delete(JSON, br#"{"ids":["a","a"]}"#, 3)).contains("ids[1]"));
        let create = parse_create(JSON, br#"{"name":"n","dims":384}"#).unwrap();
        assert_eq!((create.metric, create.quant), (Metric::Cosine, Quant::F16));
        assert_eq!(
            parse_create(JSON, br#"{"name":"n","dims":0}"#)
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            parse_create(JSON, br#"{"name":"n","dims":4,"metric":"hamming"}"#)
                .unwrap_err()
                .status(),
            422
        );
        assert_eq!(
            parse_create(JSON, br#"{"name":"n","dims":4,"regions":[]}"#)
                .unwrap_err()
                .status(),
            422
        );
    }
}
