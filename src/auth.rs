//! Who may call: the API key table (the `API_KEYS` secret), the constant-time lookup of a
//! presented bearer token, and the rules for what a key grants (which routes need a key or an
//! admin key, which indexes a key may read). Pure: the edge glue reads the secret and the header.
//!
//! Keys are stored as SHA-256 hashes only. A presented token is hashed and compared with every
//! entry in constant time, so the time taken says neither whether nor which entry matched.
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use crate::api::{ApiError, Route};
use crate::ratelimit::Rate;

/// What a route asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Access {
    Public,
    Key,
    Admin,
    /// An admin key over every index (`["*"]`): for what tells of every tenant at once.
    Operator,
}

/// The access rule of every route: exhaustive on purpose, so that a new route must take a side.
pub fn access(route: &Route) -> Access {
    match route {
        // The page carries no data; its API calls send the key the person typed.
        Route::Health | Route::Playground(_) => Access::Public,
        // Every isolate's counters tell of every tenant's traffic: not for one tenant's admin key.
        Route::Metrics => Access::Operator,
        // And then only on the key's own indexes (`Grant::check_manage`).
        Route::Admin(_) => Access::Admin,
        // Which index a write grant names is checked where the index is named.
        Route::Indexes
        | Route::CreateIndex
        | Route::Upsert(_)
        | Route::Delete(_)
        | Route::Index(_)
        | Route::Search
        | Route::Embeddings
        | Route::Rag
        | Route::ChatCompletions => Access::Key,
    }
}

/// The indexes a key may read.
#[derive(Debug, Clone, PartialEq)]
pub enum Indexes {
    All,
    Only(Vec<String>),
}

/// What one request may do: its key's grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    pub key_id: String,
    pub tenant: String,
    pub indexes: Indexes,
    /// `None`: unlimited (and no rate-limiter call).
    pub rate: Option<Rate>,
    pub admin: bool,
    /// The indexes the key may write to (create, upsert, delete), among those it may read.
    pub write: Indexes,
}

/// The same words whether the index is someone else's or does not exist at all.
const FORBIDDEN_INDEX: &str = "this API key may not read the requested index";
const FORBIDDEN_MANAGE: &str = "this API key may not manage the requested index";
const FORBIDDEN_WRITE: &str = "this API key may not write to the requested index";

impl Grant {
    /// A public route's caller: no index, nothing else.
    fn anonymous() -> Grant {
        Grant {
            key_id: String::new(),
            tenant: String::new(),
            indexes: Indexes::Only(Vec::new()),
            rate: None,
            admin: false,
            write: Indexes::Only(Vec::new()),
        }
    }

    /// `AUTH = off` (development only): everything, unlimited.
    fn open() -> Grant {
        Grant {
            key_id: "auth-off".into(),
            tenant: "dev".into(),
            indexes: Indexes::All,
            rate: None,
            admin: true,
            write: Indexes::All,
        }
    }

    pub fn may_read(&self, index: &str) -> bool {
        reads(&self.indexes, index)
    }

    /// Checked before any store lookup, so an unknown index and another tenant's look alike.
    pub fn check_index(&self, index: &str) -> Result<(), ApiError> {
        if self.may_read(index) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(FORBIDDEN_INDEX.into()))
        }
    }

    /// A write to `index` (or its creation): the key's `write` grant names it, or it is an
    /// admin key that may manage it. Checked before the index is looked up, as reads are.
    pub fn check_write(&self, index: &str) -> Result<(), ApiError> {
        if self.may_read(index) && (reads(&self.write, index) || self.admin) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(FORBIDDEN_WRITE.into()))
        }
    }

    /// An admin action on `index`: the key must be an admin key whose indexes (its tenant's)
    /// include it, `["*"]` for all. Checked before any bucket is read, so that an unknown index
    /// and another tenant's give the same 403.
    pub fn check_manage(&self, index: &str) -> Result<(), ApiError> {
        if self.admin && self.may_read(index) {
            Ok(())
        } else {
            Err(ApiError::Forbidden(FORBIDDEN_MANAGE.into()))
        }
    }

    /// 403 for a non-admin key on an admin route.
    pub fn check_access(&self, needs: Access) -> Result<(), ApiError> {
        if matches!(needs, Access::Admin | Access::Operator) && !self.admin {
            return Err(ApiError::Forbidden(
                "this route needs an admin API key".into(),
            ));
        }
        if needs == Access::Operator && self.indexes != Indexes::All {
            return Err(ApiError::Forbidden(
                "this route needs an admin API key for every index ([\"*\"])".into(),
            ));
        }
        Ok(())
    }

    /// The subset of `names` this key may see.
    pub fn visible(&self, names: Vec<String>) -> Vec<String> {
        names.into_iter().filter(|n| self.may_read(n)).collect()
    }
}

fn reads(indexes: &Indexes, name: &str) -> bool {
    match indexes {
        Indexes::All => true,
        Indexes::Only(names) => names.iter().any(|n| n == name),
    }
}

/// One `API_KEYS` entry as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyEntry {
    id: String,
    tenant: String,
    sha256: String,
    indexes: Vec<String>,
    rate: Option<Rate>,
    #[serde(default)]
    admin: bool,
    /// Indexes the key may write to: names among `indexes`, or `["*"]` for all of them.
    #[serde(default)]
    write: Vec<String>,
}

struct Key {
    digest: [u8; 32],
    grant: Grant,
}

/// The parsed `API_KEYS` table.
pub struct KeyTable {
    keys: Vec<Key>,
}

impl KeyTable {
    /// A JSON array of `{id, tenant, sha256, indexes, rate?, admin?}`; an error names the entry and
    /// field (never a hash).
    pub fn parse(json: &str) -> Result<KeyTable, String> {
        let entries: Vec<Value> =
            serde_json::from_str(json).map_err(|e| format!("API_KEYS is not a JSON array: {e}"))?;
        if entries.is_empty() {
            return Err("API_KEYS has no keys".into());
        }
        let mut keys: Vec<Key> = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let at = |field: &str| format!("API_KEYS[{i}].{field}");
            let entry: KeyEntry =
                serde_json::from_value(entry).map_err(|e| format!("API_KEYS[{i}]: {e}"))?;
            if entry.id.trim().is_empty() || entry.tenant.trim().is_empty() {
                return Err(format!(
                    "API_KEYS[{i}]: `id` and `tenant` must not be empty"
                ));
            }
            let digest = parse_digest(&entry.sha256)
                .ok_or_else(|| format!("{}: 64 lowercase hex digits expected", at("sha256")))?;
            let indexes = match entry.indexes.as_slice() {
                [] => {
                    return Err(format!(
                        "{}: empty (list the indexes, or [\"*\"] for all)",
                        at("indexes")
                    ))
                }
                [all] if all == "*" => Indexes::All,
                names if names.iter().any(|n| n.is_empty() || n == "*") => {
                    return Err(format!(
                        "{}: \"*\" must stand alone, and names must not be empty",
                        at("indexes")
                    ))
                }
                names => Indexes::Only(names.to_vec()),
            };
            let write = match entry.write.as_slice() {
                [all] if all == "*" => Indexes::All,
                names => {
                    if let Some(name) = names
                        .iter()
                        .find(|n| n.as_str() == "*" || !reads(&indexes, n))
                    {
                        return Err(format!(
                            "{}: {name:?} is not among the key's indexes (\"*\" must stand alone)",
                            at("write")
                        ));
                    }
                    Indexes::Only(names.to_vec())
                }
            };
            if let Some(rate) = &entry.rate {
                rate.validate()
                    .map_err(|e| format!("{}: {e}", at("rate")))?;
            }
            if let Some(j) = keys.iter().position(|k| k.grant.key_id == entry.id) {
                return Err(format!(
                    "{}: {:?} is also the id of API_KEYS[{j}]",
                    at("id"),
                    entry.id
                ));
            }
            if let Some(j) = keys.iter().position(|k| k.digest == digest) {
                return Err(format!("{}: the same hash as API_KEYS[{j}]", at("sha256")));
            }
            let grant = Grant {
                key_id: entry.id,
                tenant: entry.tenant,
                indexes,
                rate: entry.rate,
                admin: entry.admin,
                write,
            };
            keys.push(Key { digest, grant });
        }
        Ok(KeyTable { keys })
    }

    /// The grant of the key in an `Authorization` header. Every entry is compared, without
    /// branching on the outcome until the end; missing, malformed and unknown keys are one error.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<&Grant, ApiError> {
        let token = authorization
            .and_then(bearer_token)
            .ok_or(ApiError::Unauthorized)?;
        let presented: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = Choice::from(0);
        let mut at = 0u64;
        for (i, key) in self.keys.iter().enumerate() {
            let matched = key.digest.ct_eq(&presented);
            at.conditional_assign(&(i as u64), matched);
            found |= matched;
        }
        if bool::from(found) {
            self.keys
                .get(at as usize)
                .map(|k| &k.grant)
                .ok_or(ApiError::Unauthorized)
        } else {
            Err(ApiError::Unauthorized)
        }
    }
}

/// `Bearer <token>`, the scheme case-insensitive (RFC 9110 §11.1).
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (o, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *o = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// The deployment's authentication: `AUTH = required` (the default) with its key table, or
/// `off`, which only a development deployment may choose.
pub enum Auth {
    Required(KeyTable),
    Off,
}

impl Auth {
    pub fn from_vars(
        auth: Option<&str>,
        dev: bool,
        api_keys: Option<&str>,
    ) -> Result<Auth, ApiError> {
        match auth.map(str::trim) {
            None | Some("required") => {
                let json = api_keys.ok_or_else(|| {
                    ApiError::Misconfigured("API_KEYS is not set; AUTH = \"required\" needs the key table (`wrangler secret put API_KEYS`)".into())
                })?;
                KeyTable::parse(json)
                    .map(Auth::Required)
                    .map_err(ApiError::Misconfigured)
            }
            Some("off") if dev => Ok(Auth::Off),
            Some("off") => Err(ApiError::Misconfigured(
                "AUTH = \"off\" is only allowed with ENVIRONMENT = \"dev\"".into(),
            )),
            Some(other) => Err(ApiError::Misconfigured(format!(
                "AUTH = {other:?}: expected \"required\" or \"off\""
            ))),
        }
    }

    /// The caller's grant for `route`: 401 without a valid key where one is needed, 403 for a
    /// non-admin key on an admin route. Index rules apply later, where the index is named.
    pub fn admit(&self, route: &Route, authorization: Option<&str>) -> Result<Grant, ApiError> {
        let needs = access(route);
        let grant = match self {
            _ if needs == Access::Public => return Ok(Grant::anonymous()),
            Auth::Off => Grant::open(),
            Auth::Required(table) => table.authenticate(authorization)?.clone(),
        };
        grant.check_access(needs)?;
        Ok(grant)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `printf %s "$KEY" | sha256sum` prints.
    fn key_hash(key: &str) -> String {
        Sha256::digest(key.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn table() -> KeyTable {
        let json = serde_json::json!([
            {"id": "k-acme", "tenant": "acme", "sha256": key_hash("acme-secret"), "indexes": ["docs"],
             "rate": {"requests": 60, "per_s": 60}},
            {"id": "k-beta", "tenant": "beta", "sha256": key_hash("beta-secret"), "indexes": ["other", "more"]},
            {"id": "k-ops", "tenant": "ops", "sha256": key_hash("ops-secret"), "indexes": ["*"], "admin": true},
        ]);
        KeyTable::parse(&json.to_string()).expect("a valid table")
    }

    #[test]
    fn the_hash_is_sha256_hex() {
        // `printf %s abc | sha256sum`
        assert_eq!(
            key_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(parse_digest(&key_hash("abc")).map(|d| d[0]), Some(0xba));
        assert_eq!(parse_digest(&key_hash("abc").to_uppercase()), None);
        assert_eq!(parse_digest("ab"), None);
    }

    #[test]
    fn tokens_find_their_keys_and_everything_else_is_one_401() {
        let t = table();
        let acme = t.authenticate(Some("Bearer acme-secret")).expect("acme");
        assert_eq!(
            (acme.key_id.as_str(), acme.tenant.as_str(), acme.admin),
            ("k-acme", "acme", false)
        );
        assert_eq!(
            acme.rate,
            Some(Rate {
                requests: 60,
                per_s: 60
            })
        );
        assert_eq!(
            t.authenticate(Some("bearer  ops-secret "))
                .expect("ops")
                .key_id,
            "k-ops"
        );
        assert_eq!(
            t.authenticate(Some("Bearer beta-secret"))
                .expect("beta")
                .indexes,
            Indexes::Only(vec!["other".into(), "more".into()])
        );
        for bad in [
            None,
            Some(""),
            Some("Bearer"),
            Some("Bearer "),
            Some("Basic acme-secret"),
            Some("acme-secret"),
            Some("Bearer acme-secret2"),
            Some("Bearer ACME-SECRET"),
            Some(key_hash("acme-secret").as_str()),
        ] {
            assert_eq!(
                t.authenticate(bad).unwrap_err(),
                ApiError::Unauthorized,
                "{bad:?}"
            );
        }
        assert_eq!(ApiError::Unauthorized.status(), 401);
    }

    #[test]
    fn keys_read_only_their_indexes() {
        let t = table();
        let acme = t.authenticate(Some("Bearer acme-secret")).expect("acme");
        assert!(acme.check_index("docs").is_ok());
        let foreign = acme.check_index("other").unwrap_err();
        let unknown = acme.check_index("no-such-index").unwrap_err();
        assert_eq!(foreign.status(), 403);
        assert_eq!(
            foreign, unknown,
            "a foreign and an unknown index look alike"
        );
        let names = vec!["docs".to_string(), "more".into(), "other".into()];
        assert_eq!(acme.visible(names.clone()), ["docs"]);
        assert_eq!(
            t.authenticate(Some("Bearer beta-secret"))
                .expect("beta")
                .visible(names.clone()),
            ["more", "other"]
        );
        assert_eq!(
            t.authenticate(Some("Bearer ops-secret"))
                .expect("ops")
                .visible(names.clone()),
            names
        );
    }

    #[test]
    fn routes_need_a_key_except_health_and_the_playground() {
        let auth = Auth::Required(table());
        let page = Route::Playground(crate::playground::asset("/").expect("page"));
        for public in [Route::Health, page] {
            assert_eq!(
                auth.admit(&public, None).expect("public").indexes,
                Indexes::Only(vec![])
            );
        }
        for route in [
            Route::Indexes,
            Route::Index("docs".into()),
            Route::Search,
            Route::Embeddings,
            Route::Rag,
            Route::ChatCompletions,
        ] {
            assert_eq!(
                auth.admit(&route, None).unwrap_err().status(),
                401,
                "{route:?}"
            );
            assert_eq!(
                auth.admit(&route, Some("Bearer acme-secret"))
                    .expect("acme")
                    .key_id,
                "k-acme"
            );
        }
    }

    #[test]
    fn admin_routes_need_an_admin_key() {
        let t = table();
        let grant = |token: &str| {
            t.authenticate(Some(&format!("Bearer {token}")))
                .expect("a key")
                .clone()
        };
        assert!(grant("ops-secret").check_access(Access::Admin).is_ok());
        assert_eq!(
            grant("acme-secret")
                .check_access(Access::Admin)
                .unwrap_err()
                .status(),
            403
        );
        assert!(grant("acme-secret").check_access(Access::Key).is_ok());
    }

    #[test]
    fn write_grants_name_readable_indexes_and_read_keys_may_not_write() {
        let table = serde_json::json!([
            {"id": "k-w", "tenant": "acme", "sha256": key_hash("writer"), "indexes": ["docs", "faq"], "write": ["docs"]},
            {"id": "k-r", "tenant": "acme", "sha256": key_hash("reader"), "indexes": ["docs"]},
            {"id": "k-all", "tenant": "acme", "sha256": key_hash("all"), "indexes": ["docs", "faq"], "write": ["*"]},
        ]);
        let keys = KeyTable::parse(&table.to_string()).unwrap();
        let grant = |token: &str| {
            keys.authenticate(Some(&format!("Bearer {token}")))
                .unwrap()
                .clone()
        };
        assert!(grant("writer").check_write("docs").is_ok());
        assert_eq!(
            grant("writer").check_write("faq").unwrap_err().status(),
            403
        );
        assert_eq!(
            grant("reader").check_write("docs").unwrap_err().status(),
            403
        );
        assert!(grant("all").check_write("faq").is_ok());
        assert_eq!(grant("all").check_write("other").unwrap_err().status(), 403);
        let outside = serde_json::json!([
            {"id": "k", "tenant": "t", "sha256": key_hash("x"), "indexes": ["docs"], "write": ["faq"]}
        ]);
        let why = KeyTable::parse(&outside.to_string()).err().unwrap();
        assert!(
            why.contains("API_KEYS[0].write") && why.contains("faq"),
            "{why}"
        );
    }

    #[test]
    fn admin_keys_manage_only_their_tenants_indexes() {
        let json = serde_json::json!([
            {"id": "k-acme-admin", "tenant": "acme", "sha256": key_hash("acme-admin"), "indexes": ["docs"], "admin": true},
            {"id": "k-acme", "tenant": "acme", "sha256": key_hash("acme-secret"), "indexes": ["docs"]},
            {"id": "k-ops", "tenant": "ops", "sha256": key_hash("ops-secret"), "indexes": ["*"], "admin": true},
        ]);
        let t = KeyTable::parse(&json.to_string()).expect("a valid table");
        let grant = |token: &str| {
            t.authenticate(Some(&format!("Bearer {token}")))
                .expect("a key")
        };
        assert!(grant("acme-admin").check_manage("docs").is_ok());
        let foreign = grant("acme-admin").check_manage("other").unwrap_err();
        let unknown = grant("acme-admin")
            .check_manage("no-such-index")
            .unwrap_err();
        assert_eq!((foreign.status(), &foreign), (403, &unknown));
        assert!(grant("ops-secret").check_manage("anything").is_ok());
        let metrics = Route::parse("GET", "/metrics").unwrap();
        let auth = Auth::Required(KeyTable::parse(&json.to_string()).expect("a valid table"));
        assert_eq!(
            auth.admit(&metrics, Some("Bearer acme-admin"))
                .unwrap_err()
                .status(),
            403,
            "one tenant's admin key does not see every tenant's counters"
        );
        assert!(auth.admit(&metrics, Some("Bearer ops-secret")).is_ok());
        assert_eq!(
            grant("acme-secret")
                .check_manage("docs")
                .unwrap_err()
                .status(),
            403
        );
        let route = Route::parse("GET", "/v1/admin/indexes/docs/versions").unwrap();
        assert_eq!(
            Auth::Required(t)
                .admit(&route, Some("Bearer acme-secret"))
                .unwrap_err()
                .status(),
            403,
            "a reading key may not reach admin routes at all"
        );
    }

    #[test]
    fn auth_off_is_for_development_only() {
        assert!(matches!(
            Auth::from_vars(Some("off"), true, None),
            Ok(Auth::Off)
        ));
        let open = Auth::Off.admit(&Route::Search, None).expect("open");
        assert!(open.may_read("anything") && open.rate.is_none());
        assert_eq!(
            Auth::from_vars(Some("off"), false, None)
                .err()
                .map(|e| e.status()),
            Some(500)
        );
        assert_eq!(
            Auth::from_vars(None, true, None).err().map(|e| e.status()),
            Some(500),
            "required needs a table"
        );
        assert_eq!(
            Auth::from_vars(Some("maybe"), true, Some("[]"))
                .err()
                .map(|e| e.status()),
            Some(500)
        );
        assert!(matches!(
            Auth::from_vars(
                Some("required"),
                false,
                Some(&format!(
                    r#"[{{"id":"a","tenant":"t","sha256":"{}","indexes":["*"]}}]"#,
                    key_hash("k")
                ))
            ),
            Ok(Auth::Required(_))
        ));
    }

    #[test]
    fn bad_tables_name_the_entry_and_field() {
        let h = key_hash("x");
        let h2 = key_hash("y");
        let cases = [
            ("{}".to_string(), "not a JSON array"),
            ("[]".to_string(), "no keys"),
            (
                format!(r#"[{{"id":"a","tenant":"t","sha256":"{h}","indexes":["*"],"colour":1}}]"#),
                "API_KEYS[0]: unknown field `colour`",
            ),
            (
                r#"[{"id":"a","tenant":"t","indexes":["*"]}]"#.to_string(),
                "API_KEYS[0]: missing field `sha256`",
            ),
            (
                r#"[{"id":"a","tenant":"t","sha256":"abc","indexes":["*"]}]"#.to_string(),
                "API_KEYS[0].sha256",
            ),
            (
                format!(
                    r#"[{{"id":"a","tenant":"t","sha256":"{}","indexes":["*"]}}]"#,
                    h.to_uppercase()
                ),
                "API_KEYS[0].sha256",
            ),
            (
                format!(r#"[{{"id":"a","tenant":"t","sha256":"{h}","indexes":[]}}]"#),
                "API_KEYS[0].indexes",
            ),
            (
                format!(r#"[{{"id":"a","tenant":"t","sha256":"{h}","indexes":["*","docs"]}}]"#),
                "API_KEYS[0].indexes",
            ),
            (
                format!(
                    r#"[{{"id":"a","tenant":"t","sha256":"{h}","indexes":["d"],"rate":{{"requests":0,"per_s":1}}}}]"#
                ),
                "API_KEYS[0].rate",
            ),
            (
                format!(r#"[{{"id":"a","tenant":"","sha256":"{h}","indexes":["d"]}}]"#),
                "API_KEYS[0]",
            ),
            (
                format!(
                    r#"[{{"id":"a","tenant":"t","sha256":"{h}","indexes":["d"]}},{{"id":"a","tenant":"t","sha256":"{h2}","indexes":["d"]}}]"#
                ),
                "API_KEYS[1].id",
            ),
            (
                format!(
                    r#"[{{"id":"a","tenant":"t","sha256":"{h}","indexes":["d"]}},{{"id":"b","tenant":"t","sha256":"{h}","indexes":["d"]}}]"#
                ),
                "API_KEYS[1].sha256",
            ),
        ];
        for (json, want) in cases {
            let error = KeyTable::parse(&json)
                .err()
                .unwrap_or_else(|| panic!("{json} parsed"));
            assert!(error.contains(want), "{json}: {error}");
            assert!(
                !error.contains(&h[..16]) && !error.contains(&h2[..16]),
                "no hash in {error}"
            );
        }
    }
}
