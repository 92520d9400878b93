//! The API's one error type and its single mapping to RFC 9457 problem documents.
//!
//! Status policy (documented in the README's API section):
//! - 400: the body is not JSON at all (syntax errors, truncated bodies, `NaN`/`Infinity` literals
//!   and numbers beyond f64, which JSON cannot carry).
//! - 422: well-formed JSON that breaks the schema or a rule: unknown or mistyped field, wrong
//!   vector length, a component that is not finite as f32, `k`/`ef`/`probe` out of range.
//! - 401 no valid API key (missing, malformed and unknown keys look the same), 403 a key that may
//!   not use the route or read the index (whether the index exists is not said).
//! - 404 unknown route, index or model (no configured origin serves it), 405 wrong method,
//!   409 a publishing action the version's state forbids (incomplete, live, no bucket),
//!   408 a body that did not arrive in time, 413 body over the limit, 415 not JSON, 429 the key's
//!   rate limit is spent (with `Retry-After`).
//! - 502 an origin answered with something unusable (a body that is not the OpenAI shape, or a
//!   4xx that blames this service rather than the caller).
//! - 503 shards unavailable, or no inference origin answered within the deadline and budget.
//! - 500 only for a misconfigured deployment (a bad var), naming the var and field.
use serde::Serialize;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ApiError {
    #[error("no resource at {0}")]
    NotFound(String),
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("the request body is not valid JSON: {0}")]
    MalformedJson(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the content type must be application/json, not {0:?}")]
    UnsupportedMediaType(String),
    #[error("the request body has at least {size} bytes; the limit is {limit}")]
    TooLarge { size: usize, limit: usize },
    /// An upload over the platform's body limit, the message naming what and the limit.
    #[error("{0}")]
    UploadTooLarge(String),
    /// The resource is not in a state that allows the action (publishing: a version that is
    /// incomplete or live, a region without a bucket).
    #[error("{0}")]
    Conflict(String),
    #[error("a valid API key is required: send `Authorization: Bearer <key>`")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("this API key's rate limit is used up; retry after {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("the request body did not arrive within {ms} ms")]
    BodyTimeout { ms: u64 },
    #[error("no index named {0:?}")]
    UnknownIndex(String),
    #[error("no inference origin serves the model {0:?}")]
    UnknownModel(String),
    #[error("{0}")]
    Unavailable(String),
    /// A read asked for writes up to `min_seq` that the index's view does not hold within the wait.
    #[error(
        "the index has writes up to seq {seq}, not yet {min_seq}; retry after {retry_after_s} s"
    )]
    NotYetVisible {
        min_seq: u64,
        seq: u64,
        retry_after_s: u64,
    },
    /// The index's writer cannot take the write now (it is unreachable, or the uncompacted
    /// writes are at their limit).
    #[error("{0}")]
    WritesUnavailable(String),
    #[error("{0}")]
    OriginsUnavailable(String),
    #[error("{0}")]
    BadGateway(String),
    #[error("the service is misconfigured: {0}")]
    Misconfigured(String),
}

/// An RFC 9457 problem document, plus the request id as an extension member.
#[derive(Debug, Serialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    pub request_id: String,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::MalformedJson(_) => 400,
            ApiError::Unauthorized => 401,
            ApiError::Forbidden(_) => 403,
            ApiError::BodyTimeout { .. } => 408,
            ApiError::RateLimited { .. } => 429,
            ApiError::NotFound(_) | ApiError::UnknownIndex(_) | ApiError::UnknownModel(_) => 404,
            ApiError::MethodNotAllowed { .. } => 405,
            ApiError::TooLarge { .. } | ApiError::UploadTooLarge(_) => 413,
            ApiError::Conflict(_) => 409,
            ApiError::UnsupportedMediaType(_) => 415,
            ApiError::Invalid(_) => 422,
            ApiError::Misconfigured(_) => 500,
            ApiError::BadGateway(_) => 502,
            ApiError::Unavailable(_)
            | ApiError::NotYetVisible { .. }
            | ApiError::WritesUnavailable(_)
            | ApiError::OriginsUnavailable(_) => 503,
        }
    }

    fn slug_and_title(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::NotFound(_) => ("not-found", "Not found"),
            ApiError::MethodNotAllowed { .. } => ("method-not-allowed", "Method not allowed"),
            ApiError::MalformedJson(_) => ("malformed-json", "Malformed JSON"),
            ApiError::Invalid(_) => ("invalid-request", "Invalid request"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::TooLarge { .. } | ApiError::UploadTooLarge(_) => {
                ("body-too-large", "Request body too large")
            }
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::Unauthorized => ("unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::RateLimited { .. } => ("rate-limited", "Too many requests"),
            ApiError::BodyTimeout { .. } => ("request-timeout", "Request timeout"),
            ApiError::UnknownIndex(_) => ("unknown-index", "Unknown index"),
            ApiError::UnknownModel(_) => ("unknown-model", "Unknown model"),
            ApiError::Unavailable(_) => ("shard-unavailable", "Shard unavailable"),
            ApiError::NotYetVisible { .. } => ("write-not-visible", "Write not yet visible"),
            ApiError::WritesUnavailable(_) => ("writes-unavailable", "Writes unavailable"),
            ApiError::OriginsUnavailable(_) => {
                ("origins-unavailable", "Inference origins unavailable")
            }
            ApiError::BadGateway(_) => ("bad-gateway", "Bad answer from an inference origin"),
            ApiError::Misconfigured(_) => ("misconfigured", "Service misconfigured"),
        }
    }

    /// Headers the status calls for besides the problem document.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        match self {
            ApiError::Unauthorized => vec![("www-authenticate", "Bearer".into())],
            ApiError::RateLimited { retry_after_s }
            | ApiError::NotYetVisible { retry_after_s, .. } => {
                vec![("retry-after", retry_after_s.to_string())]
            }
            _ => Vec::new(),
        }
    }

    pub fn problem(&self, request_id: &str) -> Problem {
        let (slug, title) = self.slug_and_title();
        Problem {
            kind: format!("https://edgerag.dev/problems/{slug}"),
            title,
            status: self.status(),
            detail: self.to_string(),
            request_id: request_id.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_carries_status_type_and_detail() {
        let p = ApiError::UnknownIndex("nope".into()).problem("r1");
        assert_eq!(p.status, 404);
        assert_eq!(p.kind, "https://edgerag.dev/problems/unknown-index");
        assert!(p.detail.contains("nope"));
        let json = serde_json::to_value(&p).unwrap();
        for key in ["type", "title", "status", "detail"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn auth_and_rate_errors_carry_their_headers() {
        assert_eq!(
            ApiError::Unauthorized.headers(),
            vec![("www-authenticate", "Bearer".to_string())]
        );
        let limited = ApiError::RateLimited { retry_after_s: 7 };
        assert_eq!(
            (limited.status(), limited.headers()),
            (429, vec![("retry-after", "7".to_string())])
        );
        assert!(ApiError::Forbidden("no".into()).headers().is_empty());
    }
}
