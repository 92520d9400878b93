//! Parses the `ORIGINS`, `ROUTING` and `AFFINITY` variables into validated origin configs,
//! naming the offending field in every error (`ORIGINS[2].url: ...`).

use serde_json::{Map, Value};

use super::BalancerError;

/// What an origin serves: OpenAI chat completions, embeddings, or reranking (TEI's or the
/// Cohere/Jina-style API, see [`crate::rerank`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Embeddings,
    Rerank,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Embeddings => "embeddings",
            Kind::Rerank => "rerank",
        }
    }
}

/// How a pool picks among its healthy candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Routing {
    /// Two random candidates, the one with the lower peak-EWMA latency × (1 + in-flight).
    #[default]
    P2cEwma,
    LeastInflight,
    RoundRobin,
    /// Random, proportional to `weight`.
    Weighted,
}

/// One inference origin, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct OriginConfig {
    pub name: String,
    /// Base URL, e.g. `https://gpu-1.example.com`; the glue appends `/v1/...`.
    pub url: String,
    /// Model names served; `"*"` serves any model.
    pub models: Vec<String>,
    /// Region label compared with the caller's region; `None` means no locality.
    pub region: Option<String>,
    pub weight: f64,
    /// Requests this edge isolate sends at once at most; beyond it the origin is not a candidate.
    pub max_inflight: u32,
    pub kind: Kind,
    /// Name of the Workers secret that holds the origin's API key, if it needs one.
    pub api_key_secret: Option<String>,
}

impl OriginConfig {
    pub fn serves(&self, kind: Kind, model: &str) -> bool {
        self.kind == kind && self.models.iter().any(|m| m == "*" || m == model)
    }
}

/// Default `max_inflight`: generous, so that only a deliberately configured limit bites.
const DEFAULT_MAX_INFLIGHT: u32 = 256;

impl Routing {
    /// Parses the `ROUTING` variable; absent or empty means the default, p2c-ewma.
    pub fn parse(value: Option<&str>) -> Result<Routing, BalancerError> {
        match value.map(str::trim) {
            None | Some("") | Some("p2c-ewma") => Ok(Routing::P2cEwma),
            Some("least-inflight") => Ok(Routing::LeastInflight),
            Some("round-robin") => Ok(Routing::RoundRobin),
            Some("weighted") => Ok(Routing::Weighted),
            Some(other) => Err(err(
                "ROUTING",
                format!("unknown strategy {other:?}; expected p2c-ewma, least-inflight, round-robin or weighted"),
            )),
        }
    }
}

/// Parses the `ORIGINS` variable: a JSON array of origin objects.
pub fn parse_origins(json: &str) -> Result<Vec<OriginConfig>, BalancerError> {
    let value: Value =
        serde_json::from_str(json).map_err(|e| err("ORIGINS", format!("not valid JSON: {e}")))?;
    let items = value
        .as_array()
        .ok_or_else(|| err("ORIGINS", "must be a JSON array of origins".into()))?;
    if items.is_empty() {
        return Err(err("ORIGINS", "must list at least one origin".into()));
    }
    let mut origins: Vec<OriginConfig> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("ORIGINS[{i}]");
        let origin = parse_origin(&at, item)?;
        if origins.iter().any(|o| o.name == origin.name) {
            return Err(err(
                &format!("{at}.name"),
                format!("duplicate origin name {:?}", origin.name),
            ));
        }
        origins.push(origin);
    }
    Ok(origins)
}

/// Parses the `AFFINITY` variable: `{"<model>": load_factor, ...}`. Pools (models) listed there
/// route by rendezvous hashing on the caller's context key, bounded by load.
pub fn parse_affinity(json: Option<&str>) -> Result<Vec<(String, f64)>, BalancerError> {
    let Some(json) = json.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(Vec::new());
    };
    let value: Value =
        serde_json::from_str(json).map_err(|e| err("AFFINITY", format!("not valid JSON: {e}")))?;
    let map = value.as_object().ok_or_else(|| {
        err(
            "AFFINITY",
            "must be a JSON object mapping model to load factor".into(),
        )
    })?;
    map.iter()
        .map(|(model, c)| {
            let field = format!("AFFINITY.{model}");
            match c.as_f64() {
                // A factor below 1 would refuse the average origin its share and disable affinity.
                Some(c) if c >= 1.0 && c.is_finite() => Ok((model.clone(), c)),
                _ => Err(err(
                    &field,
                    format!("load factor must be a number >= 1, got {c}"),
                )),
            }
        })
        .collect()
}

const FIELDS: [&str; 8] = [
    "name",
    "url",
    "models",
    "region",
    "weight",
    "max_inflight",
    "kind",
    "api_key_secret",
];

fn parse_origin(at: &str, item: &Value) -> Result<OriginConfig, BalancerError> {
    let obj = item
        .as_object()
        .ok_or_else(|| err(at, "must be a JSON object".into()))?;
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(err(
            at,
            format!(
                "unknown field {unknown:?}; known fields: {}",
                FIELDS.join(", ")
            ),
        ));
    }
    let field = |name: &str| format!("{at}.{name}");

    let name = required_str(obj, at, "name")?;
    let url = required_str(obj, at, "url")?;
    validate_url(&url).map_err(|reason| err(&field("url"), reason))?;

    let models = match obj.get("models") {
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(j, m)| match m.as_str() {
                Some(s) if !s.trim().is_empty() => Ok(s.to_string()),
                _ => Err(err(
                    &format!("{at}.models[{j}]"),
                    "must be a non-empty string".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(_) => {
            return Err(err(
                &field("models"),
                "must be a non-empty array of model names (\"*\" for any)".into(),
            ))
        }
        None => return Err(err(&field("models"), "is required".into())),
    };

    let kind = match required_str(obj, at, "kind")?.as_str() {
        "chat" => Kind::Chat,
        "embeddings" => Kind::Embeddings,
        "rerank" => Kind::Rerank,
        other => {
            return Err(err(
                &field("kind"),
                format!("must be \"chat\", \"embeddings\" or \"rerank\", got {other:?}"),
            ))
        }
    };

    let region = optional_str(obj, at, "region")?;
    let api_key_secret = optional_str(obj, at, "api_key_secret")?;

    let weight = match obj.get("weight") {
        None | Some(Value::Null) => 1.0,
        Some(v) => match v.as_f64() {
            Some(w) if w > 0.0 && w.is_finite() => w,
            _ => {
                return Err(err(
                    &field("weight"),
                    format!("must be a positive number, got {v}"),
                ))
            }
        },
    };
    let max_inflight = match obj.get("max_inflight") {
        None | Some(Value::Null) => DEFAULT_MAX_INFLIGHT,
        Some(v) => match v.as_u64() {
            Some(n) if n >= 1 && n <= u64::from(u32::MAX) => n as u32,
            _ => {
                return Err(err(
                    &field("max_inflight"),
                    format!("must be a positive integer, got {v}"),
                ))
            }
        },
    };

    Ok(OriginConfig {
        name,
        url,
        models,
        region,
        weight,
        max_inflight,
        kind,
        api_key_secret,
    })
}

fn required_str(obj: &Map<String, Value>, at: &str, name: &str) -> Result<String, BalancerError> {
    optional_str(obj, at, name)?.ok_or_else(|| err(&format!("{at}.{name}"), "is required".into()))
}

fn optional_str(
    obj: &Map<String, Value>,
    at: &str,
    name: &str,
) -> Result<Option<String>, BalancerError> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim().to_string())),
        Some(v) => Err(err(
            &format!("{at}.{name}"),
            format!("must be a non-empty string, got {v}"),
        )),
    }
}

/// Checks the shape the glue relies on (scheme, host, no trailing path noise) without a URL crate.
fn validate_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("must start with http:// or https://, got {url:?}"))?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("has no host: {url:?}"));
    }
    if rest.contains(['?', '#']) {
        return Err(format!(
            "must be a base URL without query or fragment: {url:?}"
        ));
    }
    if rest.chars().any(char::is_whitespace) {
        return Err(format!("contains whitespace: {url:?}"));
    }
    Ok(())
}

fn err(field: &str, reason: String) -> BalancerError {
    BalancerError::Config {
        field: field.to_string(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"[
      {"name":"a","url":"https://gpu-a.example.com","models":["llama"],"region":"eu","weight":2,"max_inflight":8,"kind":"chat","api_key_secret":"A_KEY"},
      {"name":"b","url":"http://127.0.0.1:8081","models":["*"],"kind":"embeddings"}
    ]"#;

    #[test]
    fn parses_full_and_minimal_origins() {
        let o = parse_origins(GOOD).expect("valid config");
        assert_eq!(o.len(), 2);
        assert_eq!(o[0].weight, 2.0);
        assert_eq!(o[0].max_inflight, 8);
        assert_eq!(o[0].region.as_deref(), Some("eu"));
        assert_eq!(o[0].api_key_secret.as_deref(), Some("A_KEY"));
        assert_eq!(o[1].weight, 1.0);
        assert_eq!(o[1].max_inflight, DEFAULT_MAX_INFLIGHT);
        assert!(o[1].serves(Kind::Embeddings, "anything"));
        assert!(!o[1].serves(Kind::Chat, "anything"));
        assert!(o[0].serves(Kind::Chat, "llama") && !o[0].serves(Kind::Chat, "mistral"));
    }

    fn field_of(json: &str) -> String {
        match parse_origins(json) {
            Err(BalancerError::Config { field, .. }) => field,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let base = r#"{"name":"x","url":"https://x.example","models":["m"],"kind":"chat"}"#;
        let with = |extra: &str| format!("[{base},{{{extra}}}]");
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"ftp://x","models":["m"],"kind":"chat""#
            )),
            "ORIGINS[1].url"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://","models":["m"],"kind":"chat""#
            )),
            "ORIGINS[1].url"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://y","models":[],"kind":"chat""#
            )),
            "ORIGINS[1].models"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://y","models":["m", 3],"kind":"chat""#
            )),
            "ORIGINS[1].models[1]"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://y","models":["m"],"kind":"image""#
            )),
            "ORIGINS[1].kind"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://y","models":["m"],"kind":"chat","weight":0"#
            )),
            "ORIGINS[1].weight"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://y","models":["m"],"kind":"chat","max_inflight":-1"#
            )),
            "ORIGINS[1].max_inflight"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"x","url":"https://y","models":["m"],"kind":"chat""#
            )),
            "ORIGINS[1].name"
        );
        assert_eq!(
            field_of(&with(r#""url":"https://y","models":["m"],"kind":"chat""#)),
            "ORIGINS[1].name"
        );
        assert_eq!(
            field_of(&with(
                r#""name":"y","url":"https://y","models":["m"],"kind":"chat","wieght":1"#
            )),
            "ORIGINS[1]"
        );
        assert_eq!(field_of("{}"), "ORIGINS");
        assert_eq!(field_of("[]"), "ORIGINS");
        assert_eq!(field_of("not json"), "ORIGINS");
        let message = parse_origins(&with(
            r#""name":"y","url":"ftp://x","models":["m"],"kind":"chat""#,
        ))
        .expect_err("bad url")
        .to_string();
        assert!(
            message.starts_with("ORIGINS[1].url: must start with http"),
            "{message}"
        );
    }

    #[test]
    fn routing_and_affinity_vars() {
        assert_eq!(Routing::parse(None).ok(), Some(Routing::P2cEwma));
        assert_eq!(
            Routing::parse(Some("weighted")).ok(),
            Some(Routing::Weighted)
        );
        assert!(
            matches!(Routing::parse(Some("random")), Err(BalancerError::Config { field, .. }) if field == "ROUTING")
        );
        assert_eq!(
            parse_affinity(Some(r#"{"llama": 1.5}"#)).ok(),
            Some(vec![("llama".to_string(), 1.5)])
        );
        assert!(parse_affinity(None).is_ok_and(|a| a.is_empty()));
        assert!(
            matches!(parse_affinity(Some(r#"{"llama": 0.5}"#)), Err(BalancerError::Config { field, .. }) if field == "AFFINITY.llama")
        );
    }
}
