//! Runs the `devorigin` binary on a free loopback port and checks its HTTP behaviour: real
//! embeddings, non-streamed and streamed (incrementally delivered) completions over a prompt built
//! by `edgerag::rag`, 429 above the concurrency limit, injected failures and the metrics.
#![cfg(not(target_arch = "wasm32"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgerag::rag::{augment, ChatCompletionRequest, ChatMessage, Passage, SseParser};
use serde_json::{json, Value};

struct Origin {
    child: Child,
    addr: String,
}

impl Origin {
    /// Starts devorigin with `--port 0` and reads the address it prints.
    fn spawn(args: &[&str]) -> Origin {
        let mut child = Command::new(env!("CARGO_BIN_EXE_devorigin"))
            .args(["--port", "0", "--seed", "7"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn devorigin");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr = line
            .trim()
            .rsplit("http://")
            .next()
            .expect("address")
            .to_string();
        assert!(
            addr.starts_with("127.0.0.1:"),
            "unexpected first line {line:?}"
        );
        Origin { child, addr }
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        http(&self.addr, "POST", path, Some(&body.to_string()))
    }

    fn metric(&self, name: &str) -> f64 {
        let text = String::from_utf8(http(&self.addr, "GET", "/metrics", None).body)
            .expect("utf-8 metrics");
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("metric {name} missing in:\n{text}"))
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    head: String,
    body: Vec<u8>,
    /// When each raw read ended, with the raw byte count so far: to date parts of the body.
    reads: Vec<(Instant, usize)>,
    raw: Vec<u8>,
}

impl Response {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }

    /// When the first occurrence of `needle` in the raw stream arrived.
    fn arrival_of(&self, needle: &str) -> Instant {
        let pos = self
            .raw
            .windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("{needle} not in response"));
        self.reads
            .iter()
            .find(|(_, end)| *end > pos)
            .map(|(t, _)| *t)
            .expect("a read covers every byte")
    }
}

/// Minimal HTTP/1.1 client (one request per connection), decoding chunked bodies.
fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> Response {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.unwrap_or("");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut raw = Vec::new();
    let mut reads = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stream.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        reads.push((Instant::now(), raw.len()));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of head")
        + 4;
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut response = Response {
        status,
        head,
        body: Vec::new(),
        reads,
        raw: Vec::new(),
    };
    let rest = &raw[split..];
    response.body = if response
        .header("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(rest)
    } else {
        rest.to_vec()
    };
    response.raw = raw;
    response
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line_end])
                .expect("ascii")
                .trim(),
            16,
        )
        .expect("hex size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[line_end + 2..line_end + 2 + size]);
        data = &data[line_end + 2 + size + 2..];
    }
}

fn passage(id: u64, source: &str, text: &str) -> Passage {
    Passage {
        id: id.into(),
        source: source.into(),
        title: None,
        text: text.into(),
        score: None,
        shard: None,
    }
}

fn rag_request(stream: bool) -> Value {
    let mut request = ChatCompletionRequest {
        model: "devorigin-extractive".into(),
        messages: vec![ChatMessage::new("user", "How do I list a directory tree?")],
        stream: Some(stream),
        max_tokens: None,
        extra: Default::default(),
    };
    let passages = [
        passage(
            11,
            "library/os.html",
            "os.walk() generates the file names in a directory tree. It walks top-down.",
        ),
        passage(
            12,
            "library/pathlib.html",
            "Path.rglob() yields all matching files below a path. Patterns are relative.",
        ),
    ];
    augment(&mut request, "Answer from the sources.", &passages, 1000).expect("augment");
    serde_json::to_value(&request).expect("serialise")
}

const EXPECTED_ANSWER: &str = "os.walk() generates the file names in a directory tree. [1] Path.rglob() yields all matching files below a path. [2]";

#[test]
fn embeddings_are_minilm_vectors() {
    let origin = Origin::spawn(&[]);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pydocs");
    let shared = data.join("queries_public.jsonl").is_file();
    let query = if shared {
        let first = std::fs::read_to_string(data.join("queries_public.jsonl")).expect("queries");
        let line: Value =
            serde_json::from_str(first.lines().next().expect("a query")).expect("json");
        line["text"].as_str().expect("text").to_string()
    } else {
        eprintln!(
            "SKIPPED comparison with the shared vectors: {} is absent",
            data.display()
        );
        "How do I use os.walk?".to_string()
    };
    let response = origin.post(
        "/v1/embeddings",
        &json!({"model": "all-MiniLM-L6-v2", "input": [query, "a second input"]}),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    let vectors: Vec<Vec<f32>> = body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect()
        })
        .collect();
    assert_eq!(vectors.len(), 2);
    for v in &vectors {
        assert_eq!(v.len(), 384);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-3, "norm {norm}");
    }
    assert!(body["usage"]["prompt_tokens"].as_u64().expect("usage") > 4);
    if shared {
        let bytes = std::fs::read(data.join("queries_public.f32")).expect("vectors");
        let want: Vec<f32> = bytes[..384 * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cosine: f32 = vectors[0].iter().zip(&want).map(|(a, b)| a * b).sum();
        assert!(
            cosine >= 0.999,
            "cosine {cosine} against queries_public.f32 row 0"
        );
    }
    assert_eq!(
        origin.post("/v1/embeddings", &json!({"model": "m"})).status,
        400
    );
}

#[test]
fn completions_quote_the_passages_streamed_incrementally() {
    let origin = Origin::spawn(&[
        "--ttft-ms",
        "50",
        "--tokens-per-sec",
        "20",
        "--jitter",
        "0",
        "--prefix-cache-ms",
        "60000",
    ]);

    let response = origin.post("/v1/chat/completions", &rag_request(false));
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["choices"][0]["message"]["content"], EXPECTED_ANSWER);
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    let completion_tokens = body["usage"]["completion_tokens"].as_u64().expect("usage");
    assert_eq!(
        completion_tokens as usize,
        EXPECTED_ANSWER.split_whitespace().count()
    );

    let response = origin.post("/v1/chat/completions", &rag_request(true));
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type").as_deref(),
        Some("text/event-stream")
    );
    let events = SseParser::new().push(&response.body);
    assert!(
        events.last().is_some_and(|e| e.is_done()),
        "stream ends with [DONE]"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(&e.data).expect("chunk json"))
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, EXPECTED_ANSWER);
    assert_eq!(
        chunks.last().expect("final chunk")["choices"][0]["finish_reason"],
        "stop"
    );
    // One token every 50 ms: the first words were on the wire long before the end of the stream.
    let spread = response
        .arrival_of("[DONE]")
        .duration_since(response.arrival_of("\"content\":\"os.walk() \""));
    let tokens = EXPECTED_ANSWER.split_whitespace().count() as u32;
    assert!(
        spread >= Duration::from_millis(50) * (tokens - 1) / 2,
        "stream not incremental: {spread:?}"
    );

    // Same passages a second time: a prefix-cache hit.
    assert_eq!(origin.metric("devorigin_prefix_cache_hits_total"), 1.0);
    assert_eq!(
        origin.metric("devorigin_requests_total{endpoint=\"chat\"}"),
        2.0
    );
    assert_eq!(origin.metric("devorigin_inflight"), 0.0);

    let models = http(&origin.addr, "GET", "/v1/models", None).json();
    assert_eq!(models["data"][0]["id"], "devorigin-extractive");
}

#[test]
fn rate_limits_above_max_concurrency() {
    let origin = Origin::spawn(&[
        "--max-concurrency",
        "1",
        "--ttft-ms",
        "1500",
        "--retry-after-secs",
        "2",
    ]);
    let addr = origin.addr.clone();
    let slow = std::thread::spawn(move || {
        http(
            &addr,
            "POST",
            "/v1/chat/completions",
            Some(&rag_request(false).to_string()),
        )
    });
    let waited = Instant::now();
    while origin.metric("devorigin_inflight") < 1.0 {
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "the first request never arrived"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = origin.post("/v1/chat/completions", &rag_request(false));
    assert_eq!(refused.status, 429);
    assert_eq!(refused.header("retry-after").as_deref(), Some("2"));
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    assert_eq!(slow.join().expect("first request").status, 200);
    assert_eq!(origin.metric("devorigin_rate_limited_total"), 1.0);
    // The slot is free again.
    assert_eq!(
        origin
            .post("/v1/chat/completions", &rag_request(false))
            .status,
        200
    );
}

#[test]
fn injects_failures_at_the_configured_rate() {
    let always = Origin::spawn(&["--fail-rate", "1", "--ttft-ms", "0"]);
    let failed = always.post("/v1/chat/completions", &rag_request(false));
    assert_eq!(failed.status, 503);
    assert_eq!(failed.json()["error"]["type"], "server_error");
    assert_eq!(always.metric("devorigin_failures_total"), 1.0);

    let half = Origin::spawn(&[
        "--fail-rate",
        "0.5",
        "--ttft-ms",
        "0",
        "--tokens-per-sec",
        "100000",
    ]);
    let statuses: Vec<u16> = (0..40)
        .map(|_| {
            half.post("/v1/chat/completions", &rag_request(false))
                .status
        })
        .collect();
    let failures = statuses.iter().filter(|&&s| s == 503).count();
    assert!(
        statuses.iter().all(|&s| s == 200 || s == 503),
        "{statuses:?}"
    );
    assert!((8..=32).contains(&failures), "{failures} of 40 failed");
    assert_eq!(half.metric("devorigin_failures_total"), failures as f64);
}
