//! The admin routes that publish and retire index versions, `/v1/admin/indexes/{index}/...`:
//! which action a method and path ask for. Path segments are percent-decoded (the client
//! encodes them), and a segment that is not a name an index, version or file may have is 404.
use super::ApiError;
use crate::manifest::is_index_name;

/// One admin action on one index.
#[derive(Debug, Clone, PartialEq)]
pub enum AdminRoute {
    /// `GET {index}/versions`
    Versions { index: String },
    /// `PUT {index}/versions/{version}/manifest`: stage a version (its manifest, in every region).
    Stage { index: String, version: String },
    /// `PUT {index}/versions/{version}/blobs/{file}`: one shard blob, into every region it is placed in.
    Blob {
        index: String,
        version: String,
        file: String,
    },
    /// `GET {index}/versions/{version}`: which blobs are verified in which region.
    Status { index: String, version: String },
    /// `DELETE {index}/versions/{version}`
    DeleteVersion { index: String, version: String },
    /// `PUT {index}/current`: publish (or roll back or forward to) a complete version.
    SetCurrent { index: String },
    /// `DELETE {index}`
    DeleteIndex { index: String },
    /// `POST {index}/gc`: delete all but the newest N versions (and the live one).
    Gc { index: String },
    /// `GET {index}/hosts`: what each shard host of the live version (durable mode, the
    /// caller's region) holds in memory.
    Hosts { index: String },
    /// `GET {index}/export`: every live passage (the base version's, less those written over,
    /// plus the written ones) as NDJSON, for `shardc compact`.
    Export { index: String },
}

pub const ADMIN_PREFIX: &str = "/v1/admin/indexes/";

impl AdminRoute {
    /// `rest` is the path after [`ADMIN_PREFIX`], without a trailing `/`.
    pub fn parse(method: &str, rest: &str) -> Result<AdminRoute, ApiError> {
        let not_found = || ApiError::NotFound(format!("{ADMIN_PREFIX}{rest}"));
        let segments: Vec<String> = rest
            .split('/')
            .map(|s| percent_decode(s).filter(|s| is_index_name(s)))
            .collect::<Option<_>>()
            .ok_or_else(not_found)?;
        let owned = |i: usize| segments[i].clone();
        let words: Vec<&str> = segments.iter().map(String::as_str).collect();
        let (route, allowed) = match words.as_slice() {
            [_] => (AdminRoute::DeleteIndex { index: owned(0) }, "DELETE"),
            [_, "versions"] => (AdminRoute::Versions { index: owned(0) }, "GET"),
            [_, "current"] => (AdminRoute::SetCurrent { index: owned(0) }, "PUT"),
            [_, "gc"] => (AdminRoute::Gc { index: owned(0) }, "POST"),
            [_, "export"] => (AdminRoute::Export { index: owned(0) }, "GET"),
            [_, "hosts"] => (AdminRoute::Hosts { index: owned(0) }, "GET"),
            [_, "versions", _] => {
                let (index, version) = (owned(0), owned(2));
                match method {
                    "DELETE" => (AdminRoute::DeleteVersion { index, version }, "DELETE"),
                    _ => (AdminRoute::Status { index, version }, "GET"),
                }
            }
            [_, "versions", _, "manifest"] => (
                AdminRoute::Stage {
                    index: owned(0),
                    version: owned(2),
                },
                "PUT",
            ),
            [_, "versions", _, "blobs", _] => (
                AdminRoute::Blob {
                    index: owned(0),
                    version: owned(2),
                    file: owned(4),
                },
                "PUT",
            ),
            _ => return Err(not_found()),
        };
        if method != allowed {
            return Err(ApiError::MethodNotAllowed {
                method: method.to_string(),
                path: format!("{ADMIN_PREFIX}{rest}"),
            });
        }
        Ok(route)
    }

    pub fn index(&self) -> &str {
        match self {
            AdminRoute::Versions { index }
            | AdminRoute::Stage { index, .. }
            | AdminRoute::Blob { index, .. }
            | AdminRoute::Status { index, .. }
            | AdminRoute::DeleteVersion { index, .. }
            | AdminRoute::SetCurrent { index }
            | AdminRoute::DeleteIndex { index }
            | AdminRoute::Gc { index }
            | AdminRoute::Export { index }
            | AdminRoute::Hosts { index } => index,
        }
    }

    /// The route's fixed name in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            AdminRoute::Versions { .. } => "admin_versions",
            AdminRoute::Stage { .. } => "admin_stage",
            AdminRoute::Blob { .. } => "admin_blob",
            AdminRoute::Status { .. } => "admin_status",
            AdminRoute::DeleteVersion { .. } => "admin_delete_version",
            AdminRoute::SetCurrent { .. } => "admin_set_current",
            AdminRoute::DeleteIndex { .. } => "admin_delete_index",
            AdminRoute::Gc { .. } => "admin_gc",
            AdminRoute::Export { .. } => "admin_export",
            AdminRoute::Hosts { .. } => "admin_hosts",
        }
    }
}

/// `%XX` for everything but unreserved characters (RFC 3986), so any text survives a path
/// segment or a query value.
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `%XX` escapes decoded; `None` for a bad escape or bytes that are not UTF-8.
pub fn percent_decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_paths_name_one_action_each() {
        let parse = |m: &str, p: &str| AdminRoute::parse(m, p);
        assert_eq!(
            parse("GET", "docs/versions"),
            Ok(AdminRoute::Versions {
                index: "docs".into()
            })
        );
        assert_eq!(
            parse("PUT", "docs/versions/abc/blobs/shard-000.x.shard"),
            Ok(AdminRoute::Blob {
                index: "docs".into(),
                version: "abc".into(),
                file: "shard-000.x.shard".into()
            })
        );
        assert_eq!(
            parse("GET", "docs/hosts"),
            Ok(AdminRoute::Hosts {
                index: "docs".into()
            })
        );
        assert_eq!(
            parse("DELETE", "docs/versions/abc"),
            Ok(AdminRoute::DeleteVersion {
                index: "docs".into(),
                version: "abc".into()
            })
        );
        assert_eq!(
            parse("GET", "my%20docs/versions/abc").map(|r| r.index().to_string()),
            Ok("my docs".into())
        );
        assert_eq!(
            parse("DELETE", "docs").map(|r| r.label()),
            Ok("admin_delete_index")
        );
        assert_eq!(parse("POST", "docs/gc").map(|r| r.label()), Ok("admin_gc"));
        assert_eq!(
            parse("PUT", "docs/current").map(|r| r.label()),
            Ok("admin_set_current")
        );
        assert_eq!(
            parse("PUT", "docs/versions/v/manifest").map(|r| r.label()),
            Ok("admin_stage")
        );
        assert_eq!(parse("GET", "docs/current").unwrap_err().status(), 405);
        assert_eq!(parse("POST", "docs/versions/v").unwrap_err().status(), 405);
        for bad in [
            "docs/nope",
            "docs/versions/v/blobs",
            "docs/versions/../x",
            "docs/%zz",
            "docs/%2e%2e/versions",
            "",
        ] {
            assert_eq!(parse("GET", bad).unwrap_err().status(), 404, "{bad}");
        }
    }
}
