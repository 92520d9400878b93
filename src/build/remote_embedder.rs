//! An [`Embedder`] over any OpenAI-compatible `POST /v1/embeddings`: batches of texts sent
//! with a bearer key, a bounded number of requests at once, each retried with exponential
//! backoff on transport errors, 408, 5xx and 429 (waiting as long as `Retry-After` asks);
//! answers checked for count, order (`index`) and dimensions.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::embedder::Embedder;
use super::BuildError;

/// How a remote embedder is reached and paced.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    /// A base URL (`http://host:8080`, `https://api.example.com/v1`) or the full
    /// `.../embeddings` endpoint.
    pub url: String,
    pub model: String,
    /// Sent as `Authorization: Bearer …` when present.
    pub key: Option<String>,
    /// Expected dimensions; asked of the model with one short text when `None`.
    pub dims: Option<usize>,
    pub batch: usize,
    pub concurrency: usize,
    /// Tries per batch, the first included.
    pub attempts: u32,
    /// The first retry's wait; doubled each time up to `max_delay`.
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured (a longer one is waited as this long).
    pub max_retry_after: Duration,
    pub timeout: Duration,
}

impl RemoteConfig {
    pub fn new(url: &str, model: &str, key: Option<String>) -> RemoteConfig {
        RemoteConfig {
            url: url.to_string(),
            model: model.to_string(),
            key,
            dims: None,
            batch: 64,
            concurrency: 4,
            attempts: 6,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(120),
            timeout: Duration::from_secs(120),
        }
    }
}

pub struct RemoteEmbedder {
    config: RemoteConfig,
    endpoint: String,
    dims: usize,
    agent: ureq::Agent,
}

#[derive(Deserialize)]
struct EmbeddingsAnswer {
    data: Vec<EmbeddingItem>,
}

#[derive(Deserialize)]
struct EmbeddingItem {
    #[serde(default)]
    index: Option<usize>,
    embedding: Vec<f32>,
}

/// One try's outcome: retry (after at least this long, if the server said) or give up.
enum Failure {
    Retry(String, Option<Duration>),
    Fatal(String),
}

/// The endpoint of `url`: kept if it ends in `/embeddings`, else `/embeddings` is added after
/// a trailing `/v1`, or `/v1/embeddings` after anything else.
pub fn endpoint(url: &str) -> String {
    let url = url.trim_end_matches('/');
    if url.ends_with("/embeddings") {
        url.to_string()
    } else if url.ends_with("/v1") {
        format!("{url}/embeddings")
    } else {
        format!("{url}/v1/embeddings")
    }
}

impl RemoteEmbedder {
    /// Checks the configuration and learns the dimensions (one request of one text when
    /// `config.dims` is not given), so a wrong URL, key or model fails before any work.
    pub fn connect(config: RemoteConfig) -> Result<RemoteEmbedder, BuildError> {
        if config.model.is_empty() {
            return Err(BuildError::Invalid(
                "--embed-model must name the model".into(),
            ));
        }
        if config.batch == 0 || config.concurrency == 0 || config.attempts == 0 {
            return Err(BuildError::Invalid(
                "--embed-batch and --embed-concurrency must be at least 1".into(),
            ));
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(config.timeout))
            .build()
            .into();
        let mut embedder = RemoteEmbedder {
            endpoint: endpoint(&config.url),
            dims: config.dims.unwrap_or(0),
            config,
            agent,
        };
        if embedder.config.dims.is_none() {
            let probe = embedder.request(&["dimensions probe"])?;
            embedder.dims = probe.first().map_or(0, Vec::len);
            if embedder.dims == 0 {
                return Err(BuildError::Embed(format!(
                    "{}: model {} answered an empty vector",
                    embedder.endpoint, embedder.config.model
                )));
            }
        }
        Ok(embedder)
    }

    /// One batch, retried as the configuration says.
    fn request(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BuildError> {
        let body = json!({ "model": self.config.model, "input": texts }).to_string();
        let mut delay = self.config.base_delay;
        let mut attempt = 1;
        loop {
            match self.try_once(body.as_bytes(), texts.len()) {
                Ok(vectors) => return Ok(vectors),
                Err(Failure::Fatal(why)) => {
                    return Err(BuildError::Embed(format!("{}: {why}", self.endpoint)))
                }
                Err(Failure::Retry(why, retry_after)) => {
                    if attempt >= self.config.attempts {
                        return Err(BuildError::Embed(format!(
                            "{}: {why} (gave up after {attempt} tries)",
                            self.endpoint
                        )));
                    }
                    let wait = match retry_after {
                        Some(asked) => asked.min(self.config.max_retry_after),
                        None => delay,
                    };
                    std::thread::sleep(wait);
                    delay = (delay * 2).min(self.config.max_delay);
                    attempt += 1;
                }
            }
        }
    }

    fn try_once(&self, body: &[u8], expected: usize) -> Result<Vec<Vec<f32>>, Failure> {
        let mut request = self
            .agent
            .post(&self.endpoint)
            .header("content-type", "application/json");
        if let Some(key) = &self.config.key {
            request = request.header("authorization", &format!("Bearer {key}"));
        }
        let mut response = request
            .send(body)
            .map_err(|e| Failure::Retry(e.to_string(), None))?;
        let status = response.status().as_u16();
        let retry_after = retry_after(response.headers());
        let text = response
            .body_mut()
            .with_config()
            .limit(256 << 20)
            .read_to_string()
            .map_err(|e| Failure::Retry(format!("reading the answer: {e}"), None))?;
        match status {
            200..=299 => {}
            429 | 408 | 500..=599 => {
                return Err(Failure::Retry(
                    format!("{status}: {}", error_detail(&text)),
                    retry_after,
                ))
            }
            _ => return Err(Failure::Fatal(format!("{status}: {}", error_detail(&text)))),
        }
        let answer: EmbeddingsAnswer = serde_json::from_str(&text).map_err(|e| {
            Failure::Fatal(format!(
                "the answer is not an embeddings response ({e}): {}",
                text.chars().take(200).collect::<String>()
            ))
        })?;
        if answer.data.len() != expected {
            return Err(Failure::Fatal(format!(
                "{} embeddings for {expected} inputs",
                answer.data.len()
            )));
        }
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
        for (position, item) in answer.data.into_iter().enumerate() {
            let index = item.index.unwrap_or(position);
            if self.dims != 0 && item.embedding.len() != self.dims {
                return Err(Failure::Fatal(format!(
                    "model {} answered {} dimensions, expected {} (a different model than the \
                     one the cache and index were built with?)",
                    self.config.model,
                    item.embedding.len(),
                    self.dims
                )));
            }
            match vectors.get_mut(index) {
                Some(slot @ None) => *slot = Some(item.embedding),
                _ => {
                    return Err(Failure::Fatal(format!(
                        "embedding index {index} is out of range or repeated"
                    )))
                }
            }
        }
        Ok(vectors.into_iter().flatten().collect())
    }
}

/// The `error.message` (OpenAI), `detail` (RFC 9457) or the start of the body.
fn error_detail(text: &str) -> String {
    let value: Option<Value> = serde_json::from_str(text).ok();
    value
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("detail"))
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| text.chars().take(200).collect())
}

impl Embedder for RemoteEmbedder {
    fn model(&self) -> &str {
        &self.config.model
    }

    fn dims(&self) -> usize {
        self.dims
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BuildError> {
        self.request(texts)
    }

    fn batch_size(&self) -> usize {
        self.config.batch
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }
}

/// The wait a `Retry-After` header asks for, in seconds (an HTTP date is not honoured: no
/// service this talks to sends one).
pub(crate) fn retry_after(headers: &ureq::http::HeaderMap) -> Option<Duration> {
    headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    /// What the test server answers to the n-th request (after that, the last script entry).
    #[derive(Clone)]
    enum Reply {
        Ok,
        TooMany { retry_after: &'static str },
        Status(u16, &'static str),
        Dims(usize),
    }

    /// A loopback HTTP/1.1 server answering embeddings requests by a script; records
    /// (authorization header, inputs) of every request.
    /// (authorization header, inputs) of one request.
    type Seen = (Option<String>, Vec<String>);

    struct Server {
        url: String,
        requests: Arc<Mutex<Vec<Seen>>>,
    }

    fn serve(script: Vec<Reply>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        std::thread::spawn(move || {
            for (n, stream) in listener.incoming().enumerate() {
                let Ok(mut stream) = stream else { return };
                let reply = script[n.min(script.len() - 1)].clone();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let (mut length, mut auth) = (0, None);
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                assert!(line.starts_with("POST /v1/embeddings "), "{line}");
                loop {
                    line.clear();
                    reader.read_line(&mut line).unwrap();
                    let header = line.trim_end();
                    if header.is_empty() {
                        break;
                    }
                    let (name, value) = header.split_once(':').unwrap();
                    match name.to_ascii_lowercase().as_str() {
                        "content-length" => length = value.trim().parse().unwrap(),
                        "authorization" => auth = Some(value.trim().to_string()),
                        _ => {}
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                let request: Value = serde_json::from_slice(&body).unwrap();
                let inputs: Vec<String> = request["input"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_str().unwrap().to_string())
                    .collect();
                seen.lock().unwrap().push((auth, inputs.clone()));
                let (status, extra, body) = match reply {
                    Reply::Ok | Reply::Dims(_) => {
                        let dims = if let Reply::Dims(d) = reply { d } else { 3 };
                        // Answered in reverse order: the client must sort by `index`.
                        let data: Vec<Value> = inputs
                            .iter()
                            .enumerate()
                            .rev()
                            .map(|(i, text)| {
                                json!({"object": "embedding", "index": i,
                                       "embedding": vec![text.len() as f32; dims]})
                            })
                            .collect();
                        (
                            200,
                            String::new(),
                            json!({"data": data, "model": "m"}).to_string(),
                        )
                    }
                    Reply::TooMany { retry_after } => (
                        429,
                        format!("retry-after: {retry_after}\r\n"),
                        json!({"error": {"message": "slow down"}}).to_string(),
                    ),
                    Reply::Status(status, body) => (status, String::new(), body.to_string()),
                };
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        Server { url, requests }
    }

    fn config(url: &str) -> RemoteConfig {
        RemoteConfig {
            dims: Some(3),
            base_delay: Duration::from_millis(10),
            ..RemoteConfig::new(url, "m", Some("k3y".into()))
        }
    }

    #[test]
    fn endpoint_accepts_base_urls_and_full_endpoints() {
        assert_eq!(endpoint("http://h:1"), "http://h:1/v1/embeddings");
        assert_eq!(endpoint("http://h:1/v1/"), "http://h:1/v1/embeddings");
        assert_eq!(endpoint("http://h/x/embeddings"), "http://h/x/embeddings");
    }

    #[test]
    fn remote_embedder_learns_dims_sends_the_key_and_orders_by_index() {
        let server = serve(vec![Reply::Ok]);
        let embedder = RemoteEmbedder::connect(RemoteConfig {
            dims: None,
            ..config(&server.url)
        })
        .unwrap();
        assert_eq!(embedder.dims(), 3);
        let vectors = embedder.embed(&["a", "bbb"]).unwrap();
        assert_eq!(vectors, vec![vec![1.0; 3], vec![3.0; 3]]);
        let requests = server.requests.lock().unwrap();
        assert_eq!(requests.len(), 2, "one probe, one batch");
        assert_eq!(requests[1].0.as_deref(), Some("Bearer k3y"));
        assert_eq!(requests[1].1, ["a", "bbb"]);
    }

    #[test]
    fn remote_embedder_waits_for_retry_after_on_429_and_retries() {
        let server = serve(vec![Reply::TooMany { retry_after: "1" }, Reply::Ok]);
        let embedder = RemoteEmbedder::connect(config(&server.url)).unwrap();
        let started = Instant::now();
        let vectors = embedder.embed(&["xy"]).unwrap();
        let waited = started.elapsed();
        assert_eq!(vectors, vec![vec![2.0; 3]]);
        assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");
        assert_eq!(server.requests.lock().unwrap().len(), 2);
    }

    #[test]
    fn remote_embedder_retries_5xx_with_backoff_then_gives_up() {
        let server = serve(vec![Reply::Status(503, r#"{"detail":"warming up"}"#)]);
        let embedder = RemoteEmbedder::connect(RemoteConfig {
            attempts: 3,
            ..config(&server.url)
        })
        .unwrap();
        let error = embedder.embed(&["a"]).err().unwrap().to_string();
        assert!(
            error.contains("warming up") && error.contains("3 tries"),
            "{error}"
        );
        assert_eq!(server.requests.lock().unwrap().len(), 3);
    }

    #[test]
    fn remote_embedder_fails_fast_on_4xx_bad_json_and_wrong_dims() {
        let server = serve(vec![Reply::Status(
            401,
            r#"{"error":{"message":"bad key"}}"#,
        )]);
        let error = RemoteEmbedder::connect(config(&server.url))
            .unwrap()
            .embed(&["a"])
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("401") && error.contains("bad key"),
            "{error}"
        );
        assert_eq!(server.requests.lock().unwrap().len(), 1);

        let server = serve(vec![Reply::Status(200, "not json")]);
        let error = RemoteEmbedder::connect(config(&server.url))
            .unwrap()
            .embed(&["a"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("not an embeddings response"), "{error}");

        let server = serve(vec![Reply::Dims(5)]);
        let error = RemoteEmbedder::connect(config(&server.url))
            .unwrap()
            .embed(&["a"])
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("5 dimensions, expected 3"), "{error}");
    }
}
