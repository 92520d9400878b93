//! `shardc sync`: keeps a live index equal to a folder of documents through the worker's write
//! routes. The chunks and their vectors are made as `shardc ingest` makes them (with the same
//! embedding cache, kept in the state folder); a state file records each chunk id last synced
//! with a hash of what was sent (model, text, title, source). New and changed chunks are
//! upserted (`POST /v1/indexes/{name}/upsert`, `{"vectors":[{id, values, text, metadata}]}`),
//! chunks no longer produced — of removed or shortened files — deleted (`POST …/delete`,
//! `{"ids":[…]}`), at most 1000 items (and 16 MiB) per request. The state is saved after every
//! request that succeeded, so an interrupted sync resumes where it stopped.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::docs::chunk::{Chunk, TokenCounter};
use super::embedder::Embedder;
use super::ingest::{embed_with_cache, read_chunks, SourceArgs};
use super::output::write_atomic;
use super::BuildError;
use crate::api::admin::percent_encode;

pub const STATE_FILE: &str = "synced.json";
/// Items per write request (the worker's default `WRITE_BATCH_MAX`).
pub const SYNC_BATCH: usize = 1000;
/// Bytes of JSON per write request, well below the worker's 32 MiB body limit.
const SYNC_BODY_BYTES: usize = 16 << 20;

/// What was last synced: chunk id → hash of what was sent.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub url: String,
    pub index: String,
    pub chunks: BTreeMap<String, String>,
}

impl SyncState {
    fn load(dir: &Path) -> Result<SyncState, BuildError> {
        let path = dir.join(STATE_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| BuildError::Sync(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SyncState::default()),
            Err(e) => Err(BuildError::Io { path, source: e }),
        }
    }

    fn save(&self, dir: &Path) -> Result<(), BuildError> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| BuildError::Sync(format!("state: {e}")))?;
        write_atomic(dir, STATE_FILE, |f| f.write_all(&json))
    }
}

/// Where and what to sync.
#[derive(Debug, Clone)]
pub struct SyncTarget {
    pub url: String,
    pub index: String,
    /// A key with write access to the index (an admin key).
    pub key: String,
    /// Holds the state file and the embedding cache.
    pub state_dir: PathBuf,
}

/// What a sync did.
#[derive(Debug, Default)]
pub struct SyncReport {
    pub chunks: usize,
    pub embedded: usize,
    pub reused: usize,
    pub upserted: usize,
    pub deleted: usize,
    pub unchanged: usize,
}

fn chunk_hash(model: &str, chunk: &Chunk) -> String {
    let mut bytes = Vec::new();
    for part in [model, &chunk.text, &chunk.title, &chunk.source] {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0);
    }
    format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes))
}

/// Syncs the documents of `source` into the live index `target.index`.
pub fn sync(
    source: &SourceArgs,
    target: &SyncTarget,
    embedder: &dyn Embedder,
    counter: &TokenCounter,
    progress: bool,
) -> Result<SyncReport, BuildError> {
    let dir = &target.state_dir;
    std::fs::create_dir_all(dir).map_err(BuildError::io(dir))?;
    let mut state = SyncState::load(dir)?;
    if state.url != target.url || state.index != target.index {
        // Another index (or worker): nothing is known to be there.
        state = SyncState {
            url: target.url.clone(),
            index: target.index.clone(),
            chunks: BTreeMap::new(),
        };
    }
    let chunks = read_chunks(source, counter, progress)?.chunks;
    let embedded = embed_with_cache(&chunks, embedder, dir, progress)?;
    let hashes: Vec<String> = chunks
        .iter()
        .map(|c| chunk_hash(embedder.model(), c))
        .collect();
    let current: BTreeMap<&str, &str> = chunks
        .iter()
        .zip(&hashes)
        .map(|(c, h)| (c.id.as_str(), h.as_str()))
        .collect();
    let changed: Vec<usize> = (0..chunks.len())
        .filter(|&i| state.chunks.get(&chunks[i].id) != Some(&hashes[i]))
        .collect();
    let removed: Vec<String> = state
        .chunks
        .keys()
        .filter(|id| !current.contains_key(id.as_str()))
        .cloned()
        .collect();
    let client = WriteClient::new(&target.url, &target.key);
    let base = format!("/v1/indexes/{}", percent_encode(&target.index));

    let mut report = SyncReport {
        chunks: chunks.len(),
        embedded: embedded.embedded,
        reused: embedded.reused,
        unchanged: chunks.len() - changed.len(),
        ..SyncReport::default()
    };
    let mut batch: Vec<usize> = Vec::new();
    let mut body_bytes = 0;
    let mut items: Vec<Value> = Vec::new();
    for (n, &i) in changed.iter().enumerate() {
        let chunk = &chunks[i];
        let item = json!({
            "id": chunk.id,
            "values": embedded.vectors[i],
            "text": chunk.text,
            "metadata": {"title": chunk.title, "source": chunk.source},
        });
        body_bytes += item.to_string().len() + 1;
        items.push(item);
        batch.push(i);
        let last = n + 1 == changed.len();
        if last || items.len() == SYNC_BATCH || body_bytes >= SYNC_BODY_BYTES {
            let body = json!({ "vectors": std::mem::take(&mut items) });
            client.post(&format!("{base}/upsert"), &body)?;
            for &i in &batch {
                state.chunks.insert(chunks[i].id.clone(), hashes[i].clone());
            }
            report.upserted += batch.len();
            batch.clear();
            body_bytes = 0;
            state.save(dir)?;
        }
    }
    for ids in removed.chunks(SYNC_BATCH) {
        client.post(&format!("{base}/delete"), &json!({ "ids": ids }))?;
        for id in ids {
            state.chunks.remove(id);
        }
        report.deleted += ids.len();
        state.save(dir)?;
    }
    state.save(dir)?;
    Ok(report)
}

/// A blocking client of the write routes: 429 and 503 retried as `Retry-After` says.
struct WriteClient {
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl WriteClient {
    fn new(url: &str, key: &str) -> WriteClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(300)))
            .build()
            .into();
        WriteClient {
            base: url.trim_end_matches('/').to_string(),
            key: key.to_string(),
            agent,
        }
    }

    fn post(&self, path: &str, body: &Value) -> Result<Value, BuildError> {
        let body = body.to_string();
        let url = format!("{}{path}", self.base);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut response = self
                .agent
                .post(&url)
                .header("content-type", "application/json")
                .header("authorization", &format!("Bearer {}", self.key))
                .send(body.as_bytes())
                .map_err(|e| BuildError::Sync(format!("POST {path}: {e}")))?;
            let status = response.status().as_u16();
            let retry_after = super::remote_embedder::retry_after(response.headers());
            let text = response
                .body_mut()
                .with_config()
                .limit(16 << 20)
                .read_to_string()
                .map_err(|e| BuildError::Sync(format!("POST {path}: {e}")))?;
            if (200..300).contains(&status) {
                return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
            }
            if matches!(status, 429 | 503) && attempt < 6 {
                let wait = retry_after.unwrap_or(Duration::from_secs(1 << attempt.min(5)));
                std::thread::sleep(wait.min(Duration::from_secs(60)));
                continue;
            }
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(BuildError::Sync(format!("POST {path}: {status}: {detail}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::embedder::tests::FakeEmbedder;
    use std::io::{BufRead, BufReader, Read};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A loopback server that answers every write with 200 and records (path, body).
    type Requests = Arc<Mutex<Vec<(String, Value)>>>;

    fn serve() -> (String, Requests) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split(' ').nth(1).unwrap().to_string();
                let mut length = 0;
                loop {
                    let mut header = String::new();
                    reader.read_line(&mut header).unwrap();
                    if header.trim().is_empty() {
                        break;
                    }
                    if let Some((k, v)) = header.split_once(':') {
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                        if k.eq_ignore_ascii_case("authorization") {
                            assert_eq!(v.trim(), "Bearer adm1n");
                        }
                    }
                }
                let mut body = vec![0; length];
                reader.read_exact(&mut body).unwrap();
                record
                    .lock()
                    .unwrap()
                    .push((path, serde_json::from_slice(&body).unwrap()));
                let answer = r#"{"seq":1}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{answer}",
                    answer.len()
                );
            }
        });
        (url, seen)
    }

    fn words(topic: &str, n: usize) -> String {
        (0..n)
            .map(|i| format!("{topic}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn sync_upserts_new_and_changed_chunks_and_deletes_removed_ones() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a.md"), format!("# A\n\n{}", words("alpha", 120))).unwrap();
        std::fs::write(src.join("b.md"), format!("# B\n\n{}", words("beta", 20))).unwrap();
        let (url, seen) = serve();
        let source = SourceArgs {
            sources: vec![src.clone()],
            include: vec![],
            exclude: vec![],
            chunk_tokens: 48,
            chunk_overlap: 8,
        };
        let target = SyncTarget {
            url,
            index: "docs".into(),
            key: "adm1n".into(),
            state_dir: dir.path().join("state"),
        };
        let counter = TokenCounter::Estimate;
        let first = sync(&source, &target, &FakeEmbedder::new(4), &counter, false).unwrap();
        assert!(first.chunks > 3);
        assert_eq!((first.upserted, first.deleted), (first.chunks, 0));
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].0, "/v1/indexes/docs/upsert");
            let item = &seen[0].1["vectors"][0];
            assert_eq!(item["id"], "a.md#0.0");
            assert_eq!(item["metadata"], json!({"title": "A", "source": "a.md"}));
            assert_eq!(item["values"].as_array().unwrap().len(), 4);
        }

        // a.md shortened to one chunk whose text changed, b.md removed, c.md added.
        std::fs::write(src.join("a.md"), format!("# A\n\n{}", words("alpha", 5))).unwrap();
        std::fs::remove_file(src.join("b.md")).unwrap();
        std::fs::write(src.join("c.md"), "# C\n\ncee").unwrap();
        seen.lock().unwrap().clear();
        let second = sync(&source, &target, &FakeEmbedder::new(4), &counter, false).unwrap();
        assert_eq!((second.chunks, second.upserted), (2, 2));
        assert_eq!(second.deleted, first.chunks - 1);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 2);
        let upserted: Vec<&str> = seen[0].1["vectors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["id"].as_str().unwrap())
            .collect();
        assert_eq!(upserted, ["a.md#0.0", "c.md#0.0"]);
        assert_eq!(seen[1].0, "/v1/indexes/docs/delete");
        let deleted = seen[1].1["ids"].as_array().unwrap();
        assert!(deleted.iter().any(|id| id == "b.md#0.0"));
        assert!(deleted.iter().any(|id| id == "a.md#0.1"));
        drop(seen);

        // In sync: nothing sent.
        let third = sync(&source, &target, &FakeEmbedder::new(4), &counter, false).unwrap();
        assert_eq!((third.upserted, third.deleted, third.unchanged), (0, 0, 2));
    }

    #[test]
    fn sync_sends_at_most_1000_items_per_request() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(&src).unwrap();
        for i in 0..SYNC_BATCH + 1 {
            std::fs::write(src.join(format!("f{i:04}.txt")), format!("note {i}")).unwrap();
        }
        let (url, seen) = serve();
        let source = SourceArgs {
            sources: vec![src.clone()],
            include: vec![],
            exclude: vec![],
            chunk_tokens: 48,
            chunk_overlap: 8,
        };
        let target = SyncTarget {
            url,
            index: "many".into(),
            key: "adm1n".into(),
            state_dir: dir.path().join("state"),
        };
        let mut embedder = FakeEmbedder::new(2);
        embedder.batch = 64;
        let report = sync(&source, &target, &embedder, &TokenCounter::Estimate, false).unwrap();
        assert_eq!(report.upserted, SYNC_BATCH + 1);
        let sizes: Vec<usize> = seen
            .lock()
            .unwrap()
            .iter()
            .map(|(_, body)| body["vectors"].as_array().unwrap().len())
            .collect();
        assert_eq!(sizes, [SYNC_BATCH, 1]);
        let state: SyncState =
            serde_json::from_slice(&std::fs::read(target.state_dir.join(STATE_FILE)).unwrap())
                .unwrap();
        assert_eq!(state.chunks.len(), SYNC_BATCH + 1);
    }
}
