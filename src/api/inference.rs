//! `POST /v1/embeddings`, `/v1/rag` and `/v1/chat/completions` without I/O: request parsing and
//! validation, how search matches become prompt passages and answer sources, and what an
//! origin's HTTP answer means for the balancer and for the client.
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value};

use super::search::{check_query_text, search_mode, Query, SearchRequest, TEXT_MODE_DEFAULT};
use super::{parse_json, ApiError, Match, K_MAX};
use crate::balancer::{BalancerError, FailureKind};
use crate::lexical::RRF_K_DEFAULT;
use crate::rag::{format_event, ChatCompletionRequest, EmbeddingsRequest, Passage, RagError};
use crate::rerank::RerankOption;
use crate::retrieve::SearchMode;

/// Chat histories are longer than search bodies; 1 MiB of text is beyond any context window.
pub const INFERENCE_BODY_LIMIT: usize = 1 << 20;
/// Passages retrieved for a prompt when the request does not say: enough to answer most
/// questions, few enough to keep the prompt (and the origin's prefill) short.
pub const RAG_K_DEFAULT: usize = 5;
/// Characters in one chat message's text: room for a long pasted document, while a history of
/// a few such messages still fits the body limit.
pub const MESSAGE_CHARS_MAX: usize = 65_536;

fn rag_k_default() -> usize {
    RAG_K_DEFAULT
}

/// `POST /v1/rag`: retrieve from `index` for `query`, answer with `model`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RagRequest {
    pub index: String,
    pub query: String,
    #[serde(default = "rag_k_default")]
    pub k: usize,
    pub model: String,
    #[serde(default)]
    pub stream: bool,
    pub max_tokens: Option<u32>,
    /// Retrieve from a view that includes every write up to this seq.
    pub min_seq: Option<u64>,
    /// The retrieval's ranking, as `/v1/search` takes it (default: hybrid).
    pub mode: Option<SearchMode>,
    pub rrf_k: Option<u32>,
    /// Reorder the retrieved passages by a reranker model before they reach the prompt.
    pub rerank: Option<RerankOption>,
}

pub fn parse_rag(content_type: Option<&str>, body: &[u8]) -> Result<RagRequest, ApiError> {
    let request: RagRequest = parse_json(content_type, body, INFERENCE_BODY_LIMIT)?;
    if !(1..=K_MAX).contains(&request.k) {
        return Err(ApiError::Invalid(format!(
            "`k` must be in 1..={K_MAX}, got {}",
            request.k
        )));
    }
    if request.query.trim().is_empty() {
        return Err(ApiError::Invalid("`query` is empty".into()));
    }
    non_empty_model(&request.model)?;
    let query = check_query_text("query", request.query)?;
    let (mode, rrf_k) = search_mode(&Query::Text(query.clone()), request.mode, request.rrf_k)?;
    if let Some(rerank) = &request.rerank {
        rerank.check(request.k).map_err(ApiError::Invalid)?;
    }
    Ok(RagRequest {
        query,
        mode: Some(mode),
        rrf_k: Some(rrf_k),
        ..request
    })
}

impl RagRequest {
    /// The retrieval a RAG request asks for: its query text, ranked as `mode` and `rrf_k` say
    /// (validated by [`parse_rag`], else the defaults).
    pub fn search(&self) -> SearchRequest {
        SearchRequest {
            min_seq: self.min_seq,
            mode: self.mode.unwrap_or(TEXT_MODE_DEFAULT),
            rrf_k: self.rrf_k.unwrap_or(RRF_K_DEFAULT),
            rerank: self.rerank.clone(),
            ..SearchRequest::text(&self.index, &self.query, self.k)
        }
    }
}

/// `POST /v1/chat/completions`: the completion to forward, and the index to augment it from.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatRequest {
    pub completion: ChatCompletionRequest,
    pub index: Option<String>,
    /// The retrieval's ranking (the `mode`, `rrf_k` and `rerank` extension members, as
    /// `/v1/search` takes them; removed like `index`).
    pub mode: SearchMode,
    pub rrf_k: u32,
    pub rerank: Option<RerankOption>,
}

/// Parses an OpenAI chat completion request. The index comes from the body's `index` member (an
/// extension, removed so the origin sees a plain OpenAI request) or else the `x-rag-index` header.
pub fn parse_chat(
    content_type: Option<&str>,
    body: &[u8],
    index_header: Option<&str>,
) -> Result<ChatRequest, ApiError> {
    let mut completion: ChatCompletionRequest =
        parse_json(content_type, body, INFERENCE_BODY_LIMIT)?;
    non_empty_model(&completion.model)?;
    if completion.messages.is_empty() {
        return Err(ApiError::Invalid("`messages` is empty".into()));
    }
    for (i, message) in completion.messages.iter().enumerate() {
        let chars = message.text().chars().count();
        if chars > MESSAGE_CHARS_MAX {
            return Err(ApiError::Invalid(format!(
                "`messages[{i}]` has {chars} characters of text; the limit is {MESSAGE_CHARS_MAX}"
            )));
        }
    }
    let index = match completion.extra.remove("index") {
        None | Some(Value::Null) => index_header
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        Some(Value::String(name)) if !name.is_empty() => Some(name),
        Some(other) => {
            return Err(ApiError::Invalid(format!(
                "`index` must be a non-empty string, got {other}"
            )))
        }
    };
    if index.is_some() && completion.last_user_index().is_none() {
        return Err(RagError::NoUserMessage.into());
    }
    let mode = match completion.extra.remove("mode") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            serde_json::from_value::<SearchMode>(value.clone()).map_err(|_| {
                ApiError::Invalid(format!(
                    "`mode` must be \"vector\", \"lexical\" or \"hybrid\", got {value}"
                ))
            })?,
        ),
    };
    let rrf_k = match completion.extra.remove("rrf_k") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|k| u32::try_from(k).ok())
                .ok_or_else(|| {
                    ApiError::Invalid(format!("`rrf_k` must be an integer, got {value}"))
                })?,
        ),
    };
    let (mode, rrf_k) = search_mode(&Query::Text(String::new()), mode, rrf_k)?;
    let rerank = match completion.extra.remove("rerank") {
        None | Some(Value::Null) => None,
        Some(value) => {
            let rerank: RerankOption = serde_json::from_value(value)
                .map_err(|e| ApiError::Invalid(format!("`rerank`: {e}")))?;
            // A chat retrieves RAG_K_DEFAULT passages (the `k` of the edge's chat retrieval).
            rerank.check(RAG_K_DEFAULT).map_err(ApiError::Invalid)?;
            Some(rerank)
        }
    };
    Ok(ChatRequest {
        completion,
        index,
        mode,
        rrf_k,
        rerank,
    })
}

pub fn parse_embeddings(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<EmbeddingsRequest, ApiError> {
    let request: EmbeddingsRequest = parse_json(content_type, body, INFERENCE_BODY_LIMIT)?;
    non_empty_model(&request.model)?;
    if request.input.texts().is_empty() {
        return Err(ApiError::Invalid("`input` is empty".into()));
    }
    Ok(request)
}

fn non_empty_model(model: &str) -> Result<(), ApiError> {
    if model.trim().is_empty() {
        return Err(ApiError::Invalid("`model` is empty".into()));
    }
    Ok(())
}

impl From<RagError> for ApiError {
    fn from(e: RagError) -> ApiError {
        ApiError::Invalid(e.to_string())
    }
}

/// Search matches as prompt passages, in rank order: `source` and `title` come from the corpus
/// fields of the same names (kept as metadata by `shardc`); without a `source` the shard is named.
pub fn passages(matches: &[Match]) -> Vec<Passage> {
    let field = |m: &Match, name: &str| {
        m.metadata
            .get(name)
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    matches
        .iter()
        .map(|m| Passage {
            id: m.id.clone(),
            source: field(m, "source").unwrap_or_else(|| m.shard.clone()),
            title: field(m, "title"),
            text: m.text.clone(),
            score: Some(m.score),
            shard: Some(m.shard.clone()),
        })
        .collect()
}

/// The origin's completion with the passages its prompt held as `sources` (`sources[i]` is the
/// prompt's `[i+1]`). Every other member of the origin's answer is kept as sent.
pub fn with_sources(completion: &[u8], sources: &[Passage]) -> Result<Value, ApiError> {
    let mut body: Map<String, Value> = serde_json::from_slice(completion).map_err(|e| {
        ApiError::BadGateway(format!("the origin's completion is not a JSON object: {e}"))
    })?;
    let sources = serde_json::to_value(sources)
        .map_err(|e| ApiError::BadGateway(format!("serialising sources: {e}")))?;
    body.insert("sources".into(), sources);
    Ok(Value::Object(body))
}

/// The last event of a stream whose origin broke off mid-answer: an OpenAI-style error object,
/// which OpenAI SDKs raise as an error instead of presenting a silently truncated answer.
pub fn interrupted_event(why: &str) -> String {
    let error = serde_json::json!({"error": {"message": format!("the origin broke off the answer: {why}"), "type": "origin_interrupted"}});
    format_event(None, &error.to_string())
}

/// What an origin's response status means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// 2xx: the answer is the origin's to give.
    Answered,
    /// 5xx or 429: the origin's trouble; the balancer records it and may retry elsewhere.
    Failed(FailureKind),
    /// Any other status: the origin refused this request, and another origin would too.
    Refused,
}

/// Judges a response head. `now` is time since the Unix epoch, for HTTP-date `Retry-After`.
pub fn judge_origin(status: u16, retry_after: Option<&str>, now: Duration) -> Verdict {
    if (200..=299).contains(&status) {
        return Verdict::Answered;
    }
    match FailureKind::from_status(status, retry_after) {
        // The balancer reads delta-seconds; the other form RFC 9110 allows is a date.
        Some(FailureKind::RateLimited { retry_after: None }) => {
            Verdict::Failed(FailureKind::RateLimited {
                retry_after: retry_after
                    .and_then(parse_imf_fixdate)
                    .map(|at| at.saturating_sub(now)),
            })
        }
        Some(kind) => Verdict::Failed(kind),
        None => Verdict::Refused,
    }
}

/// What the client is told when the origins did not answer: a bad `ORIGINS` configuration is the
/// deployment's fault (500), an unserved model 404, no answer within the deadline and budget 503,
/// and an origin's refusal is passed on ([`refusal`]).
impl From<BalancerError> for ApiError {
    fn from(e: BalancerError) -> ApiError {
        match e {
            BalancerError::Config { .. } => ApiError::Misconfigured(e.to_string()),
            BalancerError::UnknownModel(model) => ApiError::UnknownModel(model),
            BalancerError::Unavailable(why) => ApiError::OriginsUnavailable(why),
            BalancerError::Refused {
                origin,
                status,
                body,
            } => refusal(&origin, status, &body),
        }
    }
}

/// The client's error for a refused request, quoting the origin's OpenAI-style `error.message`.
/// 400 and 422 blame the request; anything else (401, 403, 404 ...) blames this deployment's
/// origin configuration, so the client gets a 502 rather than a misleading 4xx.
pub fn refusal(origin: &str, status: u16, body: &[u8]) -> ApiError {
    let message = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned());
    match status {
        400 | 422 => ApiError::Invalid(format!("origin {origin} rejected the request: {message}")),
        _ => ApiError::BadGateway(format!("origin {origin} answered {status}: {message}")),
    }
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Sun, 06 Nov 1994 08:49:37 GMT` → time since the Unix epoch. The obsolete RFC 850 and asctime
/// forms are not accepted: RFC 9110 requires senders to use this one.
fn parse_imf_fixdate(s: &str) -> Option<Duration> {
    let (_, rest) = s.split_once(", ")?;
    let parts: Vec<&str> = rest.split(' ').collect();
    let [day, month, year, time, "GMT"] = parts[..] else {
        return None;
    };
    let day: u32 = day.parse().ok().filter(|d| (1..=31).contains(d))?;
    let month = MONTHS.iter().position(|m| *m == month)? as u32 + 1;
    let year: i64 = year.parse().ok()?;
    let hms: Vec<u64> = time
        .split(':')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let [h, m, sec] = hms[..] else { return None };
    if h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let days = u64::try_from(days_from_civil(year, month, day)).ok()?;
    Some(Duration::from_secs(days * 86_400 + h * 3600 + m * 60 + sec))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(month) + 9) % 12; // March = 0, so the leap day ends the year
    let doy = (153 * mp + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rag::SseParser;

    const JSON: Option<&str> = Some("application/json");

    fn status<T: std::fmt::Debug>(r: Result<T, ApiError>) -> u16 {
        r.expect_err("an error").status()
    }

    #[test]
    fn rag_requests_are_validated() {
        let r = parse_rag(JSON, br#"{"index":"docs","query":"how?","model":"m"}"#).expect("valid");
        assert_eq!((r.k, r.stream, r.max_tokens), (RAG_K_DEFAULT, false, None));
        assert_eq!(
            status(parse_rag(JSON, br#"{"index":"docs","query":"how?""#)),
            400
        );
        assert_eq!(
            status(parse_rag(
                JSON,
                br#"{"index":"docs","query":"how?","model":"m","k":0}"#
            )),
            422
        );
        assert_eq!(
            status(parse_rag(
                JSON,
                br#"{"index":"docs","query":" ","model":"m"}"#
            )),
            422
        );
        assert_eq!(
            status(parse_rag(JSON, br#"{"index":"docs","query":"q"}"#)),
            422
        );
        assert_eq!(
            status(parse_rag(
                JSON,
                br#"{"index":"docs","query":"q","model":"m","colour":1}"#
            )),
            422
        );
        assert_eq!(status(parse_rag(Some("text/plain"), b"{}")), 415);
        let long = format!(
            r#"{{"index":"docs","query":"{}","model":"m"}}"#,
            "q".repeat(crate::api::QUERY_CHARS_MAX + 1)
        );
        assert_eq!(status(parse_rag(JSON, long.as_bytes())), 422);
    }

    #[test]
    fn chat_requests_take_the_index_from_body_or_header() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"q"}],"index":"docs","temperature":0}"#;
        let r = parse_chat(JSON, body, Some("other")).expect("valid");
        assert_eq!(r.index.as_deref(), Some("docs"));
        assert!(
            !r.completion.extra.contains_key("index"),
            "the extension is not forwarded"
        );
        assert_eq!(r.completion.extra["temperature"], 0);
        let plain = br#"{"model":"m","messages":[{"role":"user","content":"q"}]}"#;
        assert_eq!(
            parse_chat(JSON, plain, Some("docs"))
                .expect("valid")
                .index
                .as_deref(),
            Some("docs")
        );
        assert_eq!(parse_chat(JSON, plain, None).expect("valid").index, None);
        assert_eq!(
            status(parse_chat(JSON, br#"{"model":"m","messages":[]}"#, None)),
            422
        );
        assert_eq!(
            status(parse_chat(
                JSON,
                br#"{"model":"m","messages":[{"role":"system","content":"s"}]}"#,
                Some("docs")
            )),
            422
        );
        assert_eq!(
            status(parse_chat(
                JSON,
                br#"{"model":"m","messages":[{"role":"user","content":"q"}],"index":3}"#,
                None
            )),
            422
        );
        assert_eq!(status(parse_chat(JSON, br#"{"messages":[]}"#, None)), 422);
        assert_eq!(
            status(parse_chat(JSON, br#"{"model":"m","messages":["#, None)),
            400
        );
        let long = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":[{{"type":"text","text":"{}"}}]}}]}}"#,
            "q".repeat(MESSAGE_CHARS_MAX + 1)
        );
        let error = parse_chat(JSON, long.as_bytes(), None).expect_err("over the limit");
        assert!(
            error.status() == 422 && error.to_string().contains("messages[0]"),
            "{error}"
        );
        let deep = format!(
            r#"{{"model":"m","messages":[{{"role":"user","content":"q","x":{}{}}}]}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(status(parse_chat(JSON, deep.as_bytes(), None)), 400);
    }

    #[test]
    fn embeddings_requests_need_input() {
        assert!(parse_embeddings(JSON, br#"{"model":"e","input":["a","b"]}"#).is_ok());
        assert_eq!(
            status(parse_embeddings(JSON, br#"{"model":"e","input":[]}"#)),
            422
        );
        assert_eq!(status(parse_embeddings(JSON, br#"{"model":"e"}"#)), 422);
    }

    fn found(id: u64, metadata: Value) -> Match {
        let metadata = metadata.as_object().cloned().unwrap_or_default();
        Match {
            id: id.into(),
            score: 0.5,
            text: format!("text {id}"),
            metadata,
            shard: "s-0".into(),
            stages: None,
        }
    }

    #[test]
    fn matches_become_passages_and_sources() {
        let ps = passages(&[
            found(
                7,
                serde_json::json!({"source": "os.html", "title": "os.walk"}),
            ),
            found(9, Value::Null),
        ]);
        assert_eq!(
            (ps[0].source.as_str(), ps[0].title.as_deref()),
            ("os.html", Some("os.walk"))
        );
        assert_eq!(
            (ps[1].source.as_str(), ps[1].title.as_deref()),
            ("s-0", None)
        );
        let answer = with_sources(
            br#"{"id":"c","choices":[],"usage":{"total_tokens":3}}"#,
            &ps,
        )
        .expect("an object");
        assert_eq!(answer["usage"]["total_tokens"], 3);
        assert_eq!(answer["sources"][1]["id"], 9);
        assert_eq!(answer["sources"][0]["text"], "text 7");
        assert_eq!(answer["sources"][0]["shard"], "s-0");
        assert_eq!(status(with_sources(b"[1]", &ps)), 502);
    }

    #[test]
    fn balancer_errors_become_their_problem_statuses() {
        let cases = [
            (
                BalancerError::Config {
                    field: "ORIGINS[0].url".into(),
                    reason: "not http(s)".into(),
                },
                500,
                "the service is misconfigured: ORIGINS[0].url: not http(s)",
            ),
            (
                BalancerError::UnknownModel("m".into()),
                404,
                "no inference origin serves the model \"m\"",
            ),
            (
                BalancerError::Unavailable("no chat origin for \"m\" answered: x".into()),
                503,
                "no chat origin for \"m\" answered: x",
            ),
            (
                BalancerError::Refused {
                    origin: "gpu-1".into(),
                    status: 400,
                    body: br#"{"error":{"message":"bad temperature"}}"#.to_vec(),
                },
                422,
                "origin gpu-1 rejected the request: bad temperature",
            ),
            (
                BalancerError::Refused {
                    origin: "gpu-1".into(),
                    status: 401,
                    body: b"no key".to_vec(),
                },
                502,
                "origin gpu-1 answered 401: no key",
            ),
        ];
        for (error, status, text) in cases {
            let api = ApiError::from(error);
            assert_eq!((api.status(), api.to_string()), (status, text.to_string()));
        }
    }

    #[test]
    fn origin_statuses_are_judged() {
        let now = Duration::from_secs(784_111_000);
        assert_eq!(judge_origin(200, None, now), Verdict::Answered);
        assert_eq!(
            judge_origin(503, None, now),
            Verdict::Failed(FailureKind::ServerError { status: 503 })
        );
        assert_eq!(
            judge_origin(429, Some("2"), now),
            Verdict::Failed(FailureKind::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            })
        );
        assert_eq!(
            judge_origin(429, Some("soon"), now),
            Verdict::Failed(FailureKind::RateLimited { retry_after: None })
        );
        assert_eq!(judge_origin(400, None, now), Verdict::Refused);
        let e = refusal(
            "gpu-1",
            400,
            br#"{"error":{"message":"bad temperature","type":"invalid_request_error"}}"#,
        );
        assert_eq!(
            (e.status(), e.to_string()),
            (
                422,
                "origin gpu-1 rejected the request: bad temperature".to_string()
            )
        );
        assert_eq!(refusal("gpu-1", 401, b"no key").status(), 502);
    }

    #[test]
    fn retry_after_takes_seconds_or_an_http_date() {
        // RFC 9110's example date is 784111777 s after the epoch.
        let at = Duration::from_secs(784_111_777);
        assert_eq!(parse_imf_fixdate("Sun, 06 Nov 1994 08:49:37 GMT"), Some(at));
        assert_eq!(
            parse_imf_fixdate("Thu, 29 Feb 2024 00:00:00 GMT"),
            Some(Duration::from_secs(1_709_164_800))
        );
        let wait = |value: &str, now: Duration| match judge_origin(429, Some(value), now) {
            Verdict::Failed(FailureKind::RateLimited { retry_after }) => retry_after,
            other => panic!("429 judged {other:?}"),
        };
        let before = at - Duration::from_secs(5);
        assert_eq!(
            wait("Sun, 06 Nov 1994 08:49:37 GMT", before),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            wait("Sun, 06 Nov 1994 08:49:37 GMT", at + Duration::from_secs(9)),
            Some(Duration::ZERO)
        );
        assert_eq!(wait(" 120 ", before), Some(Duration::from_secs(120)));
        for bad in [
            "",
            "-1",
            "1.5",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
        ] {
            assert_eq!(wait(bad, before), None, "{bad}");
        }
    }

    #[test]
    fn an_interrupted_stream_ends_with_an_error_event() {
        let events = SseParser::new().push(interrupted_event("connection reset").as_bytes());
        let error: Value = serde_json::from_str(&events[0].data).expect("json");
        assert_eq!(error["error"]["type"], "origin_interrupted");
    }
}
