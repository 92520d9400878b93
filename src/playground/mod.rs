//! The playground: the static files of the browser page that `GET /` serves (HTML, script, style
//! and icon, compiled into the worker), and the headers they are served with. Pure: the edge glue
//! turns an [`Asset`] into a response.
//!
//! The page needs no key to load; every API call it makes sends the key the person typed, to its
//! own origin only, which the Content-Security-Policy enforces (`connect-src 'self'`). Nothing is
//! loaded from elsewhere: no CDN, no external font, no inline script or style.

/// One file of the page.
#[derive(Debug, PartialEq)]
pub struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
}

/// Every file, by the path it is served at (`/` is the page).
pub const ASSETS: &[Asset] = &[
    file("/", "text/html; charset=utf-8", include_str!("index.html")),
    file(
        "/playground.js",
        "text/javascript; charset=utf-8",
        include_str!("playground.js"),
    ),
    file(
        "/playground.css",
        "text/css; charset=utf-8",
        include_str!("playground.css"),
    ),
    file(
        "/playground.svg",
        "image/svg+xml",
        include_str!("playground.svg"),
    ),
];

const fn file(path: &'static str, content_type: &'static str, body: &'static str) -> Asset {
    Asset {
        path,
        content_type,
        body,
    }
}

/// The policy every file is served with: only this origin's script, style, icon and API, no
/// framing, no `<base>`, no form posts elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
style-src 'self'; img-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'none'";

/// The file served at `path` (as routing sees it: a trailing `/` removed, so the page is `""`).
pub fn asset(path: &str) -> Option<&'static Asset> {
    let path = if path.is_empty() { "/" } else { path };
    ASSETS.iter().find(|a| a.path == path)
}

impl Asset {
    /// The response headers besides `content-type`. The files change with each deployment, so
    /// a browser revalidates rather than keep an old script beside a new page.
    pub fn headers(&self) -> [(&'static str, &'static str); 6] {
        [
            ("content-type", self.content_type),
            ("content-security-policy", CONTENT_SECURITY_POLICY),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "no-referrer"),
            ("x-frame-options", "DENY"),
            ("cache-control", "no-cache"),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_and_its_files_are_found_by_path() {
        assert_eq!(asset("").map(|a| a.path), Some("/"));
        assert_eq!(asset("/").map(|a| a.path), Some("/"));
        for a in ASSETS {
            assert_eq!(asset(a.path), Some(a));
        }
        assert_eq!(asset("/playground.html"), None);
        assert_eq!(asset("/index.html"), None);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere_and_nothing_inline() {
        let page = asset("/").expect("page").body;
        // Everything the page references is one of its own files.
        for reference in page.split(['"', '\'']).filter(|s| s.starts_with('/')) {
            assert!(asset(reference).is_some(), "{reference} is not served");
        }
        for file in ASSETS {
            // The SVG namespace is a name, not an address anything is loaded from.
            let body = file
                .body
                .replace(r#"xmlns="http://www.w3.org/2000/svg""#, "");
            for banned in ["http://", "https://", "@import", "url("] {
                assert!(!body.contains(banned), "{} contains {banned}", file.path);
            }
        }
        // The CSP forbids inline script and style, so the page must not rely on them.
        assert!(!page.contains("<script>") && !page.contains("style="));
        let inline_handler = page.match_indices(" on").any(|(i, _)| {
            let rest = &page[i + 3..];
            let name = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            name > 0 && rest[name..].starts_with('=')
        });
        assert!(!inline_handler, "an inline event handler");
        // The script calls only this origin's API (relative paths).
        let script = asset("/playground.js").expect("script").body;
        assert!(!script.contains("fetch(\"http") && !script.contains("localStorage"));
    }

    #[test]
    fn every_file_is_served_with_a_strict_policy() {
        for directive in [
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ] {
            assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
        }
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
        let headers = asset("/").expect("page").headers();
        assert!(headers.contains(&("x-content-type-options", "nosniff")));
        assert!(headers.contains(&("content-type", "text/html; charset=utf-8")));
    }
}
