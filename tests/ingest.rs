//! Runs `shardc ingest` end to end with `devorigin` as its remote embedder on a loopback port
//! (real all-MiniLM-L6-v2 vectors, one request at a time so that concurrent ones get 429 with
//! `Retry-After` and are retried), then re-runs it after an edit and checks that only the
//! edited file's chunks were embedded again and the vectors match the built-in embedder's.
//! Skipped, with the reason printed, when the model wheel is not installed.
#![cfg(not(target_arch = "wasm32"))]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use edgerag::build::embedder::{Embedder, LocalEmbedder, LOCAL_MAX_TOKENS};
use edgerag::build::IndexDir;
use serde_json::Value;

struct Origin {
    child: Child,
    addr: String,
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_origin() -> Origin {
    let mut child = Command::new(env!("CARGO_BIN_EXE_devorigin"))
        .args([
            "--port",
            "0",
            "--max-concurrency",
            "1",
            "--retry-after-secs",
            "1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn devorigin");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the listening line");
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .unwrap_or("")
        .to_string();
    assert!(
        addr.starts_with("127.0.0.1:"),
        "unexpected first line {line:?}"
    );
    Origin { child, addr }
}

fn metric(addr: &str, name: &str) -> f64 {
    let mut stream = TcpStream::connect(addr).expect("connect");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("metric {name} missing"))
}

fn ingest(src: &Path, out: &Path, addr: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("ingest")
        .arg(src)
        .arg("--out")
        .arg(out)
        .args(["--regions", "weur", "--name", "docs", "--threads", "1"])
        .args([
            "--embed-url",
            &format!("http://{addr}"),
            "--embed-model",
            "all-MiniLM-L6-v2",
        ])
        .args(["--embed-batch", "2", "--embed-concurrency", "3"])
        .env_remove("EDGERAG_EMBED_KEY")
        .output()
        .expect("run shardc ingest");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "shardc ingest failed:\n{stderr}");
    serde_json::from_slice(&output.stdout).expect("a JSON summary on stdout")
}

#[test]
fn shardc_ingest_through_devorigin_retries_429s_and_reembeds_only_edited_chunks() {
    let model_dir = match edgerag::embed::default_model_dir() {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!("SKIPPED: {e}");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("docs"), dir.path().join("index"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(
        src.join("os.md"),
        "# os\n\nMiscellaneous operating system interfaces.\n\n## Files\n\nUse open() to open a file and close() to close it.\n\n## Processes\n\nfork() creates a child process.\n",
    )
    .unwrap();
    std::fs::write(
        src.join("json.html"),
        "<nav>Home | Index</nav><main><h1>json</h1><p>Encode &amp; decode JSON documents.</p><h2>dumps</h2><p>Serialise an object to a JSON string.</p></main>",
    )
    .unwrap();
    std::fs::write(src.join("binary.dat"), b"\x00\x01\x02").unwrap();

    let origin = spawn_origin();
    let first = ingest(&src, &out, &origin.addr);
    assert_eq!(first["files"], 2);
    assert_eq!(first["skipped"]["binary"], 1);
    let chunks = first["chunks"].as_u64().unwrap();
    assert_eq!(chunks, 5);
    assert_eq!(
        (first["embedded"].as_u64(), first["reused"].as_u64()),
        (Some(5), Some(0))
    );
    assert_eq!(first["dims"], 384);
    assert!(
        metric(&origin.addr, "devorigin_rate_limited_total") >= 1.0,
        "three requests at once against a limit of one should have met a 429"
    );

    // The index holds the chunks with their metadata, and devorigin's vectors are the built-in
    // embedder's.
    let index = IndexDir::open(&out).unwrap();
    assert_eq!(index.manifest.count, 5);
    let local = LocalEmbedder::load(&model_dir, 8, 1, LOCAL_MAX_TOKENS).unwrap();
    let passages = std::fs::read_to_string(out.join("passages.jsonl")).unwrap();
    let rows: Vec<Value> = passages
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let texts: Vec<&str> = rows.iter().map(|r| r["text"].as_str().unwrap()).collect();
    assert!(texts.iter().all(|t| !t.contains("Home")));
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "json.html#0.0",
            "json.html#1.0",
            "os.md#0.0",
            "os.md#1.0",
            "os.md#2.0"
        ]
    );
    assert_eq!(rows[1]["title"], "json > dumps");
    assert_eq!(
        rows[1]["text"],
        "json > dumps\n\nSerialise an object to a JSON string."
    );
    let vectors = std::fs::read(out.join("vectors.f32")).unwrap();
    let want = local.embed(&texts).unwrap();
    for (i, w) in want.iter().enumerate() {
        let got: Vec<f32> = vectors[i * 384 * 4..(i + 1) * 384 * 4]
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let cosine: f32 = got.iter().zip(w).map(|(a, b)| a * b).sum();
        assert!(cosine >= 0.999, "row {i}: cosine {cosine}");
    }

    // Edit one section of one file: one chunk embedded, the rest from the cache.
    std::fs::write(
        src.join("os.md"),
        "# os\n\nMiscellaneous operating system interfaces.\n\n## Files\n\nUse open() to open a file and close() to close it.\n\n## Processes\n\nos.fork() creates a child process; os.wait() waits for it.\n",
    )
    .unwrap();
    let second = ingest(&src, &out, &origin.addr);
    assert_eq!(
        (second["embedded"].as_u64(), second["reused"].as_u64()),
        (Some(1), Some(4))
    );
    assert_ne!(second["version"], first["version"]);
}
