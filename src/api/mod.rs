//! The HTTP API without I/O: routing, request parsing and validation, response shapes, and the
//! problem documents every error becomes. The Workers handlers in `edge` are thin calls into it.
mod problem;
mod search;

pub use problem::{ApiError, Problem};
pub use search::{
    parse_search, IndexSummary, Match, Query, SearchRequest, SearchResponse, BODY_LIMIT, EF_DEFAULT,
    K_DEFAULT, K_MAX,
};

/// What a request asks for, decided from method and path alone.
#[derive(Debug, PartialEq)]
pub enum Route {
    Health,
    Indexes,
    Index(String),
    Search,
}

impl Route {
    pub fn parse(method: &str, path: &str) -> Result<Route, ApiError> {
        let path = path.trim_end_matches('/');
        let (route, allowed) = match path {
            "/healthz" => (Route::Health, "GET"),
            "/v1/indexes" => (Route::Indexes, "GET"),
            "/v1/search" => (Route::Search, "POST"),
            _ => match path.strip_prefix("/v1/indexes/") {
                Some(name) if !name.is_empty() && !name.contains('/') => {
                    (Route::Index(name.to_string()), "GET")
                }
                _ => return Err(ApiError::NotFound(path.to_string())),
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(Route::parse("GET", "/healthz"), Ok(Route::Health));
        assert_eq!(Route::parse("GET", "/v1/indexes/"), Ok(Route::Indexes));
        assert_eq!(Route::parse("GET", "/v1/indexes/docs"), Ok(Route::Index("docs".into())));
        assert_eq!(Route::parse("POST", "/v1/search"), Ok(Route::Search));
        assert_eq!(Route::parse("GET", "/v1/search").unwrap_err().status(), 405);
        assert_eq!(Route::parse("GET", "/v2/x").unwrap_err().status(), 404);
        assert_eq!(Route::parse("GET", "/v1/indexes/a/b").unwrap_err().status(), 404);
    }
}
