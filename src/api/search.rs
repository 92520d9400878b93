//! `POST /v1/search` and `GET /v1/indexes[/{name}]`: request parsing/validation and response shapes.
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{parse_json, ApiError};
pub use crate::lexical::RRF_K_DEFAULT;
use crate::rerank::RerankOption;
pub use crate::retrieve::{Match, SearchMode};
use crate::shard::Filter;

pub const K_DEFAULT: usize = 10;
pub const K_MAX: usize = 100;
/// Beam width when the request names none (raised to `k`); recall@10 ≈ 0.97 on pydocs.
pub const EF_DEFAULT: usize = 64;
/// Wider beams cost latency without improving recall at k ≤ 100; also bounds per-request work.
pub const EF_MAX: usize = 1024;
/// Room for a 4096-dimension vector written with full f32 precision, and then some.
pub const BODY_LIMIT: usize = 128 * 1024;
/// Characters in a text query (`text`, and `/v1/rag`'s `query`): embedding models read a few
/// hundred tokens, so a longer query only costs the embeddings origin.
pub const QUERY_CHARS_MAX: usize = 4096;

/// The query: a vector, text (which the embeddings pool turns into a vector when a vector
/// ranking is asked for, and whose words a lexical ranking matches), or both (a hybrid search
/// with the caller's own vector).
#[derive(Debug, Clone, PartialEq)]
pub enum Query {
    Vector(Vec<f32>),
    Text(String),
    VectorAndText(Vec<f32>, String),
}

impl Query {
    /// The caller's vector, if it sent one.
    pub fn vector(&self) -> Option<&[f32]> {
        match self {
            Query::Vector(vector) | Query::VectorAndText(vector, _) => Some(vector),
            Query::Text(_) => None,
        }
    }

    /// The caller's text, if it sent any.
    pub fn text(&self) -> Option<&str> {
        match self {
            Query::Text(text) | Query::VectorAndText(_, text) => Some(text),
            Query::Vector(_) => None,
        }
    }
}

/// How a text query is ranked when the request names no `mode`: hybrid, which puts a passage
/// of the query's own section in the top 5 more often than either ranking alone on the pydocs
/// questions (README, "Hybrid search"). A vector alone is ranked by vector; a vector with text,
/// hybrid.
pub const TEXT_MODE_DEFAULT: SearchMode = SearchMode::Hybrid;
/// Largest reciprocal-rank-fusion constant accepted.
pub const RRF_K_MAX: u32 = 10_000;

/// A validated search request (schema rules only; `check_dims` needs the index).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchRequest {
    pub index: String,
    pub query: Query,
    pub k: usize,
    /// Beam width; `effective_ef` applies the default.
    pub ef: Option<usize>,
    /// Search only the `probe` shards with the nearest centroids; all shards when absent.
    pub probe: Option<usize>,
    /// The metadata filter, parsed (its fields are checked against the index by
    /// [`SearchRequest::check_filter_fields`]).
    pub filter: Option<Filter>,
    /// The answer must include every write up to this seq (a write's acknowledgement).
    pub min_seq: Option<u64>,
    /// Which rankings answer: vector, lexical or both fused.
    pub mode: SearchMode,
    /// The fusion constant of a hybrid search (reciprocal rank fusion's k).
    pub rrf_k: u32,
    /// Reorder the `k` found by a reranker model (`rerank.top_n` of them kept).
    pub rerank: Option<RerankOption>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchBody {
    index: String,
    // f64 first so that a component which overflows f32 is reported instead of becoming inf.
    vector: Option<Vec<f64>>,
    text: Option<String>,
    k: Option<usize>,
    ef: Option<usize>,
    probe: Option<usize>,
    filter: Option<Map<String, Value>>,
    min_seq: Option<u64>,
    mode: Option<SearchMode>,
    rrf_k: Option<u32>,
    rerank: Option<RerankOption>,
}

/// The ranking a query asks for, checked against what it sent: a lexical or hybrid ranking
/// needs text, and a vector with text is a hybrid search.
pub(crate) fn search_mode(
    query: &Query,
    mode: Option<SearchMode>,
    rrf_k: Option<u32>,
) -> Result<(SearchMode, u32), ApiError> {
    let mode = match (query, mode) {
        (Query::Vector(_), None) => SearchMode::Vector,
        (Query::Text(_), None) => TEXT_MODE_DEFAULT,
        (Query::VectorAndText(..), None) => SearchMode::Hybrid,
        (Query::Vector(_), Some(SearchMode::Lexical | SearchMode::Hybrid)) => {
            return Err(ApiError::Invalid(
                "a lexical or hybrid search matches words: send `text` too".into(),
            ))
        }
        (Query::VectorAndText(..), Some(SearchMode::Vector | SearchMode::Lexical)) => {
            return Err(ApiError::Invalid(
                "`vector` with `text` is a hybrid search; send one of them for a vector or lexical search".into(),
            ))
        }
        (_, Some(mode)) => mode,
    };
    let rrf_k = rrf_k.unwrap_or(RRF_K_DEFAULT);
    if !(1..=RRF_K_MAX).contains(&rrf_k) {
        return Err(ApiError::Invalid(format!(
            "`rrf_k` must be in 1..={RRF_K_MAX}, got {rrf_k}"
        )));
    }
    Ok((mode, rrf_k))
}

/// Checks the media type and size, then parses and validates the body.
pub fn parse_search(content_type: Option<&str>, body: &[u8]) -> Result<SearchRequest, ApiError> {
    let body: SearchBody = parse_json(content_type, body, BODY_LIMIT)?;
    let query = match (body.vector, body.text) {
        (Some(vector), None) => Query::Vector(finite_f32(&vector)?),
        (None, Some(text)) => Query::Text(check_query_text("text", text)?),
        (Some(vector), Some(text)) => {
            Query::VectorAndText(finite_f32(&vector)?, check_query_text("text", text)?)
        }
        (None, None) => return Err(ApiError::Invalid("give `vector`, `text` or both".into())),
    };
    let (mode, rrf_k) = search_mode(&query, body.mode, body.rrf_k)?;
    if mode == SearchMode::Lexical && body.probe.is_some() {
        return Err(ApiError::Invalid(
            "`probe` picks shards by the query vector; a lexical search reads every shard".into(),
        ));
    }
    let k = body.k.unwrap_or(K_DEFAULT);
    if !(1..=K_MAX).contains(&k) {
        return Err(ApiError::Invalid(format!(
            "`k` must be in 1..={K_MAX}, got {k}"
        )));
    }
    if let Some(ef) = body.ef {
        if !(k..=EF_MAX).contains(&ef) {
            return Err(ApiError::Invalid(format!(
                "`ef` must be in k..={EF_MAX} (k = {k}), got {ef}"
            )));
        }
    }
    if body.probe == Some(0) {
        return Err(ApiError::Invalid("`probe` must be at least 1".into()));
    }
    if let Some(rerank) = &body.rerank {
        check_rerank(rerank, &query, k)?;
    }
    Ok(SearchRequest {
        index: body.index,
        query,
        k,
        ef: body.ef,
        probe: body.probe,
        filter: body.filter.map(parse_filter).transpose()?,
        min_seq: body.min_seq,
        mode,
        rrf_k,
        rerank: body.rerank,
    })
}

/// A reranker scores the candidates against the query's words: it needs `text`, and `top_n`
/// within `k`.
fn check_rerank(rerank: &RerankOption, query: &Query, k: usize) -> Result<(), ApiError> {
    if query.text().is_none() {
        return Err(ApiError::Invalid(
            "`rerank` scores passages against the query's words: send `text` too".into(),
        ));
    }
    rerank.check(k).map_err(ApiError::Invalid)
}

/// A filter object parsed by the filter language; what is wrong is a 422 naming its path.
fn parse_filter(json: Map<String, Value>) -> Result<Filter, ApiError> {
    Filter::parse(json).map_err(|e| ApiError::Invalid(e.to_string()))
}

/// The query text, within [`QUERY_CHARS_MAX`].
pub(crate) fn check_query_text(field: &str, text: String) -> Result<String, ApiError> {
    let chars = text.chars().count();
    if chars > QUERY_CHARS_MAX {
        return Err(ApiError::Invalid(format!(
            "`{field}` has {chars} characters; the limit is {QUERY_CHARS_MAX}"
        )));
    }
    Ok(text)
}

fn finite_f32(vector: &[f64]) -> Result<Vec<f32>, ApiError> {
    if vector.is_empty() {
        return Err(ApiError::Invalid("`vector` is empty".into()));
    }
    finite("vector", vector).map_err(ApiError::Invalid)
}

/// The components as f32, or which one is not a finite f32 (named as `field[i]`).
pub(crate) fn finite(field: &str, values: &[f64]) -> Result<Vec<f32>, String> {
    values
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            let v = x as f32;
            if v.is_finite() {
                Ok(v)
            } else {
                Err(format!("`{field}[{i}]` = {x} is not a finite f32"))
            }
        })
        .collect()
}

impl SearchRequest {
    /// A text query with default beam and no probe limit or filter: retrieval for a prompt.
    pub fn text(index: &str, text: &str, k: usize) -> SearchRequest {
        SearchRequest {
            index: index.to_string(),
            query: Query::Text(text.to_string()),
            k,
            ef: None,
            probe: None,
            filter: None,
            min_seq: None,
            mode: TEXT_MODE_DEFAULT,
            rrf_k: RRF_K_DEFAULT,
            rerank: None,
        }
    }

    pub fn effective_ef(&self) -> usize {
        self.ef.unwrap_or(EF_DEFAULT.max(self.k))
    }

    /// A filter may name only fields the index declares filterable (`filterable`; `None`, for an
    /// index built before they were recorded, accepts any field): a field the index does not
    /// have is refused, never answered with silently empty results.
    pub fn check_filter_fields(
        filter: Option<&Filter>,
        filterable: Option<&[String]>,
    ) -> Result<(), ApiError> {
        let (Some(filter), Some(filterable)) = (filter, filterable) else {
            return Ok(());
        };
        let unknown: Vec<&str> = filter
            .fields()
            .into_iter()
            .filter(|field| !filterable.iter().any(|f| f.as_str() == *field))
            .collect();
        if unknown.is_empty() {
            return Ok(());
        }
        fn quoted<'a>(fields: impl Iterator<Item = &'a str>) -> String {
            fields
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
        Err(ApiError::Invalid(format!(
            "`filter` names {} {}, which the index cannot filter on; its filterable fields are [{}]",
            if unknown.len() == 1 { "the field" } else { "the fields" },
            quoted(unknown.iter().copied()),
            quoted(filterable.iter().map(String::as_str)),
        )))
    }

    /// The vector must have the index's dimensionality.
    pub fn check_dims(vector: &[f32], dims: usize) -> Result<(), ApiError> {
        if vector.len() != dims {
            return Err(ApiError::Invalid(format!(
                "`vector` has {} dimensions; the index has {dims}",
                vector.len()
            )));
        }
        Ok(())
    }
}

/// Also read back from the response cache, hence `Deserialize`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SearchResponse {
    pub matches: Vec<Match>,
    pub index: String,
    pub version: String,
    pub partial: bool,
    pub failed_shards: Vec<String>,
    /// Shards the plan visited (the `probe` nearest, or with boundary replication those within
    /// the index's probe margin), failed ones included. Absent in answers cached before it.
    #[serde(default)]
    pub shards_searched: usize,
    /// Every write up to this seq is in the answer.
    pub seq: u64,
    /// Writes in the answer's view that are not yet compacted into shards.
    pub pending_writes: u64,
}

/// `GET /v1/indexes/{name}`: the live version's shape.
#[derive(Debug, Serialize)]
pub struct IndexSummary {
    pub name: String,
    pub version: String,
    pub dims: usize,
    pub metric: String,
    pub shards: usize,
    pub vectors: u64,
    pub bytes: u64,
    pub regions: Vec<String>,
    /// The metadata fields a search `filter` may name (absent for an index built before they
    /// were recorded: then any field is accepted).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_fields: Option<Vec<String>>,
    /// The model text queries and text upserts of this index are embedded with.
    pub embedding_model: String,
    /// The index's live writes.
    pub writes: crate::write::WriteState,
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: Option<&str> = Some("application/json; charset=utf-8");

    fn status(ct: Option<&str>, body: &str) -> u16 {
        parse_search(ct, body.as_bytes()).unwrap_err().status()
    }

    #[test]
    fn parses_defaults_and_options() {
        let r = parse_search(
            JSON,
            br#"{"index":"d","vector":[1,0.5],"probe":2,"ef":40,"filter":{"a":1}}"#,
        )
        .unwrap();
        assert_eq!(r.k, K_DEFAULT);
        assert_eq!(r.query, Query::Vector(vec![1.0, 0.5]));
        assert_eq!((r.ef, r.probe), (Some(40), Some(2)));
        assert_eq!(r.filter.unwrap().as_json()["a"], 1);
    }

    #[test]
    fn bad_input_gets_its_status() {
        assert_eq!(status(Some("text/plain"), "{}"), 415);
        assert_eq!(status(None, "{}"), 415);
        assert_eq!(status(JSON, "{\"index\":"), 400);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[NaN]}"#), 400);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1e999]}"#), 400);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1e39]}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1],"k":0}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1],"k":101}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1],"k":-1}"#), 422);
        assert_eq!(
            status(JSON, r#"{"index":"d","vector":[1],"k":10,"ef":5}"#),
            422
        );
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1],"probe":0}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1],"bogus":1}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d","vector":["x"]}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d","vector":[]}"#), 422);
        assert_eq!(status(JSON, r#"{"index":"d"}"#), 422);
        let big = format!(r#"{{"index":"d","vector":[{}1]}}"#, "1,".repeat(BODY_LIMIT));
        assert_eq!(status(JSON, &big), 413);
    }

    #[test]
    fn abusive_bodies_are_client_errors() {
        // serde_json's recursion limit (128) turns deep nesting into a syntax error, not a stack overflow.
        let deep = format!(
            r#"{{"index":"d","vector":[1],"filter":{{"a":{}{}}}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(status(JSON, &deep), 400);
        // Nesting where the schema wants an object stops at the first bracket: a schema error.
        assert_eq!(status(JSON, &"[".repeat(10_000)), 422);
        let mut invalid_utf8 = br#"{"index":"d","text":"caf"#.to_vec();
        invalid_utf8.extend_from_slice(&[0xff, 0xfe]);
        invalid_utf8.extend_from_slice(br#""}"#);
        assert_eq!(parse_search(JSON, &invalid_utf8).unwrap_err().status(), 400);
        assert_eq!(
            status(JSON, r#"{"index":"d","vector":[1],"k":1000000000000}"#),
            422
        );
        assert_eq!(status(JSON, r#"{"index":"d","vector":[1],"k":1e300}"#), 422);
    }

    #[test]
    fn text_queries_parse() {
        let r = parse_search(JSON, br#"{"index":"d","text":"how?"}"#).unwrap();
        assert_eq!(r.query, Query::Text("how?".into()));
        let longest = format!(
            r#"{{"index":"d","text":"{}"}}"#,
            "é".repeat(QUERY_CHARS_MAX)
        );
        assert!(
            parse_search(JSON, longest.as_bytes()).is_ok(),
            "the limit counts characters, not bytes"
        );
        let over = format!(
            r#"{{"index":"d","text":"{}"}}"#,
            "a".repeat(QUERY_CHARS_MAX + 1)
        );
        let error = parse_search(JSON, over.as_bytes()).unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(
            error.to_string().contains(&QUERY_CHARS_MAX.to_string()),
            "{error}"
        );
    }

    #[test]
    fn bad_filters_are_422_naming_the_path() {
        let error = parse_search(
            JSON,
            br#"{"index":"d","vector":[1],"filter":{"$or":[{"year":{"$gte":"x","$foo":1}}]}}"#,
        )
        .unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(
            error.to_string().contains("filter.$or[0].year.$foo"),
            "{error}"
        );
        assert_eq!(
            status(JSON, r#"{"index":"d","vector":[1],"filter":{"$and":[]}}"#),
            422
        );
        assert_eq!(
            status(JSON, r#"{"index":"d","vector":[1],"filter":[1]}"#),
            422
        );
    }

    #[test]
    fn filter_fields_the_index_lacks_are_422_naming_them() {
        let r = parse_search(
            JSON,
            br#"{"index":"d","vector":[1],"filter":{"lang":"en","$not":{"yeer":{"$gt":1}}}}"#,
        )
        .unwrap();
        let declared = ["lang".to_string(), "year".to_string()];
        let error =
            SearchRequest::check_filter_fields(r.filter.as_ref(), Some(&declared[..])).unwrap_err();
        assert_eq!(error.status(), 422);
        assert!(error.to_string().contains(r#""yeer""#), "{error}");
        assert!(SearchRequest::check_filter_fields(r.filter.as_ref(), None).is_ok());
        let known =
            parse_search(JSON, br#"{"index":"d","vector":[1],"filter":{"year":1}}"#).unwrap();
        assert!(
            SearchRequest::check_filter_fields(known.filter.as_ref(), Some(&declared[..])).is_ok()
        );
    }

    #[test]
    fn the_mode_follows_the_query_unless_named_and_must_fit_it() {
        let parsed = |body: &str| parse_search(JSON, body.as_bytes());
        let mode = |body: &str| parsed(body).map(|r| (r.mode, r.rrf_k));
        assert_eq!(
            mode(r#"{"index":"d","vector":[1]}"#).unwrap(),
            (SearchMode::Vector, RRF_K_DEFAULT)
        );
        assert_eq!(
            mode(r#"{"index":"d","text":"q"}"#).unwrap().0,
            TEXT_MODE_DEFAULT
        );
        let both = parsed(r#"{"index":"d","vector":[1],"text":"q","rrf_k":5}"#).unwrap();
        assert_eq!((both.mode, both.rrf_k), (SearchMode::Hybrid, 5));
        assert_eq!(both.query, Query::VectorAndText(vec![1.0], "q".into()));
        assert_eq!(
            mode(r#"{"index":"d","text":"q","mode":"vector"}"#)
                .unwrap()
                .0,
            SearchMode::Vector
        );
        assert_eq!(
            mode(r#"{"index":"d","text":"q","mode":"lexical"}"#)
                .unwrap()
                .0,
            SearchMode::Lexical
        );
        for refused in [
            r#"{"index":"d","vector":[1],"mode":"lexical"}"#,
            r#"{"index":"d","vector":[1],"mode":"hybrid"}"#,
            r#"{"index":"d","vector":[1],"text":"q","mode":"vector"}"#,
            r#"{"index":"d","text":"q","mode":"lexical","probe":1}"#,
            r#"{"index":"d","text":"q","rrf_k":0}"#,
            r#"{"index":"d","text":"q","rrf_k":10001}"#,
            r#"{"index":"d","text":"q","mode":"fuzzy"}"#,
        ] {
            assert_eq!(parsed(refused).unwrap_err().status(), 422, "{refused}");
        }
    }

    #[test]
    fn dims_are_checked_against_the_index() {
        assert!(SearchRequest::check_dims(&[1.0, 2.0], 2).is_ok());
        assert_eq!(
            SearchRequest::check_dims(&[1.0], 2).unwrap_err().status(),
            422
        );
    }
}
