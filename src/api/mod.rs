//! The HTTP API without I/O: routing, request parsing and validation, response shapes, and the
//! problem documents every error becomes. The Workers handlers in `edge` are thin calls into it.
pub mod admin;
mod inference;
mod problem;
mod search;
pub mod write;

use std::future::Future;

use futures::future::{select, Either};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;

use crate::playground::{self, Asset};

pub use inference::{
    interrupted_event, judge_origin, parse_chat, parse_embeddings, parse_rag, passages,
    with_sources, ChatRequest, RagRequest, Verdict, INFERENCE_BODY_LIMIT, MESSAGE_CHARS_MAX,
    RAG_K_DEFAULT,
};
pub use problem::{ApiError, Problem};
pub use search::{
    parse_search, IndexSummary, Match, Query, SearchRequest, SearchResponse, BODY_LIMIT,
    EF_DEFAULT, K_DEFAULT, K_MAX, QUERY_CHARS_MAX,
};

/// What a request asks for, decided from method and path alone.
#[derive(Debug, PartialEq)]
pub enum Route {
    Health,
    Indexes,
    /// `POST /v1/indexes`: a new, empty index.
    CreateIndex,
    Index(String),
    /// `POST /v1/indexes/{name}/upsert`.
    Upsert(String),
    /// `POST /v1/indexes/{name}/delete`.
    Delete(String),
    Search,
    Embeddings,
    Rag,
    ChatCompletions,
    Metrics,
    /// The browser playground's page and files (`GET /`, `/playground.js`, ...).
    Playground(&'static Asset),
    /// Publishing and index lifecycle (`/v1/admin/indexes/...`).
    Admin(admin::AdminRoute),
}

/// The path of an absolute URL as the runtime serialises it (`scheme://authority/path?query#f`),
/// still percent-encoded; `/` when it has none.
pub fn url_path(url: &str) -> &str {
    let Some(scheme_end) = url.find("://") else {
        return "/";
    };
    let after_scheme = &url[scheme_end + 3..];
    let rest = match after_scheme.find(['/', '?', '#']) {
        Some(i) if after_scheme.as_bytes()[i] == b'/' => &after_scheme[i..],
        _ => return "/",
    };
    &rest[..rest.find(['?', '#']).unwrap_or(rest.len())]
}

impl Route {
    pub fn parse(method: &str, path: &str) -> Result<Route, ApiError> {
        let path = path.trim_end_matches('/');
        let (route, allowed) = match path {
            "/healthz" => (Route::Health, "GET"),
            "/v1/indexes" if method == "POST" => (Route::CreateIndex, "POST"),
            "/v1/indexes" => (Route::Indexes, "GET"),
            "/v1/search" => (Route::Search, "POST"),
            "/v1/embeddings" => (Route::Embeddings, "POST"),
            "/v1/rag" => (Route::Rag, "POST"),
            "/v1/chat/completions" => (Route::ChatCompletions, "POST"),
            "/metrics" => (Route::Metrics, "GET"),
            _ if path.starts_with(admin::ADMIN_PREFIX) => {
                return admin::AdminRoute::parse(method, &path[admin::ADMIN_PREFIX.len()..])
                    .map(Route::Admin)
            }
            _ => match path.strip_prefix("/v1/indexes/") {
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    (Route::Index(name.to_string()), "GET")
                }
                Some(rest) if rest.ends_with("/upsert") || rest.ends_with("/delete") => {
                    let (name, action) = rest.rsplit_once('/').unwrap_or_default();
                    if name.is_empty() || name.contains('/') {
                        return Err(ApiError::NotFound(path.to_string()));
                    }
                    let name = name.to_string();
                    let route = if action == "upsert" {
                        Route::Upsert(name)
                    } else {
                        Route::Delete(name)
                    };
                    (route, "POST")
                }
                _ => match playground::asset(path) {
                    Some(asset) => (Route::Playground(asset), "GET"),
                    None => return Err(ApiError::NotFound(path.to_string())),
                },
            },
        };
        // HEAD is not offered: every resource here is cheap enough to GET.
        if method != allowed {
            return Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: path.to_string(),
            });
        }
        Ok(route)
    }

    /// The route's name in metrics and logs: a fixed set, so label cardinality stays bounded
    /// (paths carry client input, such as index names).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Health => "health",
            Route::Indexes => "indexes",
            Route::CreateIndex => "create_index",
            Route::Index(_) => "index",
            Route::Upsert(_) => "upsert",
            Route::Delete(_) => "delete",
            Route::Search => "search",
            Route::Embeddings => "embeddings",
            Route::Rag => "rag",
            Route::ChatCompletions => "chat_completions",
            Route::Metrics => "metrics",
            Route::Playground(_) => "playground",
            Route::Admin(admin) => admin.label(),
        }
    }
}

/// The route label of a request that matched no route (404) or the wrong method (405).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// Checks the media type and size, then deserialises: syntax errors are 400, schema errors 422.
pub(crate) fn parse_json<T: DeserializeOwned>(
    content_type: Option<&str>,
    body: &[u8],
    limit: usize,
) -> Result<T, ApiError> {
    let media_type = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::UnsupportedMediaType(media_type.to_string()));
    }
    if body.len() > limit {
        return Err(ApiError::TooLarge {
            size: body.len(),
            limit,
        });
    }
    serde_json::from_slice(body).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::Invalid(e.to_string()),
        _ => ApiError::MalformedJson(e.to_string()),
    })
}

/// A request body from its chunks: refused as soon as it passes `limit` (so it is never held
/// whole), and with 408 when `deadline` (`timeout_ms` from now) comes first. The caller keeps
/// the stream, to release or cancel what is left.
pub async fn collect_body<S, E>(
    chunks: &mut S,
    limit: usize,
    deadline: impl Future<Output = ()>,
    timeout_ms: u64,
) -> Result<Vec<u8>, ApiError>
where
    S: Stream<Item = Result<Vec<u8>, E>> + Unpin,
    E: std::fmt::Display,
{
    let read = async move {
        let mut body = Vec::new();
        while let Some(chunk) = chunks.next().await {
            let chunk =
                chunk.map_err(|e| ApiError::MalformedJson(format!("reading the body: {e}")))?;
            if body.len() + chunk.len() > limit {
                return Err(ApiError::TooLarge {
                    size: body.len() + chunk.len(),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    };
    match select(std::pin::pin!(read), std::pin::pin!(deadline)).await {
        Either::Left((body, _)) => body,
        Either::Right(_) => Err(ApiError::BodyTimeout { ms: timeout_ms }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on;
    use futures::{future, stream};

    #[test]
    fn url_paths_stop_at_the_query_and_keep_their_encoding() {
        for (url, path) in [
            ("https://example.com/", "/"),
            ("https://example.com", "/"),
            ("http://127.0.0.1:8787/v1/search", "/v1/search"),
            (
                "https://example.com/v1/indexes/a%2Fb?x=/y",
                "/v1/indexes/a%2Fb",
            ),
            ("https://example.com/healthz#/frag?x", "/healthz"),
            ("https://example.com?q=/v1/rag", "/"),
            ("https://example.com#/v1/rag", "/"),
            ("not a url", "/"),
        ] {
            assert_eq!(url_path(url), path, "{url}");
        }
    }

    fn chunks(parts: &[&str]) -> impl Stream<Item = Result<Vec<u8>, String>> {
        stream::iter(
            parts
                .iter()
                .map(|p| Ok(p.as_bytes().to_vec()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn bodies_are_collected_within_size_and_time() {
        let whole = block_on(collect_body(
            &mut chunks(&["{\"a\"", ":1}"]),
            10,
            future::pending(),
            5,
        ));
        assert_eq!(whole, Ok(b"{\"a\":1}".to_vec()));
        let mut big = chunks(&["12345", "678901", "left for the caller"]);
        assert_eq!(
            block_on(collect_body(&mut big, 10, future::pending(), 5)),
            Err(ApiError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        assert_eq!(
            block_on(big.next()),
            Some(Ok(b"left for the caller".to_vec())),
            "reading stops at the limit"
        );
        // A body that stops arriving: the deadline answers 408.
        let mut stalled = chunks(&["{"]).chain(stream::pending());
        let late = block_on(collect_body(&mut stalled, 10, future::ready(()), 5)).unwrap_err();
        assert_eq!(
            (late.status(), late.to_string()),
            (
                408,
                "the request body did not arrive within 5 ms".to_string()
            )
        );
        let mut broken = stream::iter([Ok(b"{".to_vec()), Err("connection reset".to_string())]);
        assert_eq!(
            block_on(collect_body(&mut broken, 10, future::pending(), 5))
                .unwrap_err()
                .status(),
            400
        );
    }

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(Route::parse("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(Route::parse("GET", "/v1/indexes/"), Ok(Route::Indexes));
        assert_eq!(
            Route::parse("GET", "/v1/indexes/docs"),
            Ok(Route::Index("docs".into()))
        );
        assert_eq!(Route::parse("POST", "/v1/search"), Ok(Route::Search));
        assert_eq!(
            Route::parse("POST", "/v1/chat/completions"),
            Ok(Route::ChatCompletions)
        );
        assert_eq!(Route::parse("POST", "/v1/rag"), Ok(Route::Rag));
        assert_eq!(
            Route::parse("POST", "/v1/embeddings"),
            Ok(Route::Embeddings)
        );
        assert_eq!(Route::parse("GET", "/metrics"), Ok(Route::Metrics));
        for (path, file) in [("/", "/"), ("", "/"), ("/playground.js", "/playground.js")] {
            assert_eq!(
                Route::parse("GET", path),
                Ok(Route::Playground(playground::asset(file).expect(file)))
            );
        }
        assert_eq!(Route::parse("POST", "/").unwrap_err().status(), 405);
        assert_eq!(
            Route::parse("GET", "/index.html").unwrap_err().status(),
            404
        );
        assert_eq!(Route::parse("POST", "/metrics").unwrap_err().status(), 405);
        assert_eq!(
            Route::parse("GET", "/v1/admin/indexes/docs/versions/").map(|r| r.label()),
            Ok("admin_versions")
        );
        assert_eq!(Route::Index("any/thing".into()).label(), "index");
        assert_eq!(Route::parse("GET", "/v1/search").unwrap_err().status(), 405);
        assert_eq!(Route::parse("GET", "/v2/x").unwrap_err().status(), 404);
        assert_eq!(
            Route::parse("GET", "/v1/indexes/a/b").unwrap_err().status(),
            404
        );
    }
}
