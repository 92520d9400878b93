//! The `shardc` side of publishing (native only): a blocking client of a worker's admin routes,
//! and the publish run over it: stage the manifest, upload what the worker does not yet hold
//! verified (progress bars with bytes/s), then flip `current`, or exit naming what is missing.
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{SetCurrent, VersionStatus};
use crate::api::admin::percent_encode;
use crate::manifest::{Manifest, MANIFEST_FILE};

/// The environment variable `shardc` reads the admin API key from.
pub const ADMIN_KEY_VAR: &str = "EDGERAG_ADMIN_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Something about the local index directory.
    #[error("{0}")]
    Local(String),
    /// The worker answered with an error (its problem document's detail).
    #[error("{method} {path}: {status}: {detail}")]
    Refused {
        method: &'static str,
        path: String,
        status: u16,
        detail: String,
    },
    /// No answer at all.
    #[error("{method} {path}: {error}")]
    Transport {
        method: &'static str,
        path: String,
        error: String,
    },
    /// The run ended with blobs missing; `current` was not changed.
    #[error("{0}")]
    Incomplete(String),
}

/// A worker's admin API, authenticated with one admin key.
pub struct AdminClient {
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl AdminClient {
    /// `url` is the worker's base URL; the key comes from [`ADMIN_KEY_VAR`].
    pub fn from_env(url: &str) -> Result<AdminClient, ClientError> {
        let key = std::env::var(ADMIN_KEY_VAR).map_err(|_| {
            ClientError::Local(format!(
                "set {ADMIN_KEY_VAR} to an admin API key of the worker"
            ))
        })?;
        Ok(AdminClient::new(url, &key))
    }

    pub fn new(url: &str, key: &str) -> AdminClient {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        AdminClient {
            base: url.trim_end_matches('/').to_string(),
            key: key.to_string(),
            agent,
        }
    }

    fn path(index: &str, rest: &[&str]) -> String {
        let mut path = format!("/v1/admin/indexes/{}", percent_encode(index));
        for part in rest {
            path.push('/');
            path.push_str(&percent_encode(part));
        }
        path
    }

    /// Sends one request (a body as its content type, reader and length); a JSON answer below
    /// 300 is decoded, anything else is an error naming the status and the problem's detail.
    fn call<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        body: Option<(&str, &mut dyn Read, u64)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.key);
        let transport = |e: ureq::Error| ClientError::Transport {
            method,
            path: path.to_string(),
            error: e.to_string(),
        };
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("authorization", &auth)
                .call(),
            (_, body) => {
                let request = match method {
                    "POST" => self.agent.post(&url),
                    _ => self.agent.put(&url),
                }
                .header("authorization", &auth);
                match body {
                    // The length is announced, so the body is not sent chunked.
                    Some((content_type, reader, length)) => request
                        .header("content-type", content_type)
                        .header("content-length", &length.to_string())
                        .send(ureq::SendBody::from_reader(reader)),
                    None => request.send_empty(),
                }
            }
        };
        let mut response = sent.map_err(transport)?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(transport)?;
        if status >= 300 {
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                method,
                path: path.to_string(),
                status,
                detail,
            });
        }
        serde_json::from_str(&text).map_err(|e| ClientError::Transport {
            method,
            path: path.to_string(),
            error: format!("the answer is not the JSON expected: {e}"),
        })
    }

    /// A JSON body.
    fn send_json<T: DeserializeOwned>(
        &self,
        method: &'static str,
        path: &str,
        json: &[u8],
    ) -> Result<T, ClientError> {
        let mut reader = json;
        self.call(
            method,
            path,
            Some(("application/json", &mut reader, json.len() as u64)),
        )
    }

    /// `GET .../export`: the index's live passages as NDJSON, read as it arrives.
    pub fn export(&self, index: &str) -> Result<Box<dyn std::io::BufRead>, ClientError> {
        let path = Self::path(index, &["export"]);
        let transport = |e: ureq::Error| ClientError::Transport {
            method: "GET",
            path: path.clone(),
            error: e.to_string(),
        };
        let response = self
            .agent
            .get(&format!("{}{path}", self.base))
            .header("authorization", &format!("Bearer {}", self.key))
            .call()
            .map_err(transport)?;
        let status = response.status().as_u16();
        if status >= 300 {
            let text = response.into_body().read_to_string().unwrap_or_default();
            let detail = serde_json::from_str::<Value>(&text)
                .ok()
                .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_string))
                .unwrap_or(text);
            return Err(ClientError::Refused {
                method: "GET",
                path,
                status,
                detail,
            });
        }
        Ok(Box::new(std::io::BufReader::new(
            response.into_body().into_reader(),
        )))
    }

    fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
        serde_json::to_vec(value).unwrap_or_default()
    }

    pub fn stage(&self, manifest_json: &[u8], m: &Manifest) -> Result<VersionStatus, ClientError> {
        let path = Self::path(&m.name, &["versions", &m.version, "manifest"]);
        self.send_json("PUT", &path, manifest_json)
    }

    pub fn status(&self, index: &str, version: &str) -> Result<VersionStatus, ClientError> {
        self.call("GET", &Self::path(index, &["versions", version]), None)
    }

    /// Streams `file` (of `bytes` bytes) as the body, `progress` counting what was read.
    pub fn upload(
        &self,
        m: &Manifest,
        file: &Path,
        name: &str,
        bytes: u64,
        progress: &indicatif::ProgressBar,
    ) -> Result<Value, ClientError> {
        let opened =
            File::open(file).map_err(|e| ClientError::Local(format!("{}: {e}", file.display())))?;
        let mut reader = progress.wrap_read(opened);
        let path = Self::path(&m.name, &["versions", &m.version, "blobs", name]);
        self.call(
            "PUT",
            &path,
            Some(("application/octet-stream", &mut reader, bytes)),
        )
    }

    /// Makes `version` live; `compacted_seq`: the version holds every write up to that seq (a
    /// compaction's), which the index's write log may then drop.
    pub fn set_current(
        &self,
        index: &str,
        version: &str,
        compacted_seq: Option<u64>,
    ) -> Result<Value, ClientError> {
        let body = Self::to_json(&SetCurrent {
            compacted_seq,
            version: version.to_string(),
        });
        self.send_json("PUT", &Self::path(index, &["current"]), &body)
    }

    pub fn versions(&self, index: &str) -> Result<Value, ClientError> {
        self.call("GET", &Self::path(index, &["versions"]), None)
    }

    pub fn delete_version(&self, index: &str, version: &str) -> Result<Value, ClientError> {
        self.call("DELETE", &Self::path(index, &["versions", version]), None)
    }

    pub fn delete_index(&self, index: &str) -> Result<Value, ClientError> {
        self.call("DELETE", &Self::path(index, &[]), None)
    }

    pub fn gc(&self, index: &str, keep: usize) -> Result<Value, ClientError> {
        let body = Self::to_json(&super::Gc { keep });
        self.send_json("POST", &Self::path(index, &["gc"]), &body)
    }
}

/// What a publish run did.
#[derive(Debug, serde::Serialize)]
pub struct Published {
    pub index: String,
    pub version: String,
    pub placement: String,
    /// Blobs sent in this run.
    pub uploaded: Vec<String>,
    /// Blobs the worker already held verified everywhere they are placed (an earlier run's).
    pub skipped: Vec<String>,
    /// The version `current` named before, if any.
    pub previous: Option<String>,
}

/// Publishes the index directory `dir`: stages its manifest (the worker refuses a region it has
/// no bucket for, or a blob over its upload limit, before anything is uploaded), uploads every
/// blob not yet verified everywhere its placement names, then flips `current`. Any failure leaves
/// `current` where it was and names what is missing; running again resumes.
pub fn publish(
    client: &AdminClient,
    dir: &Path,
    progress: bool,
    compacted_seq: Option<u64>,
) -> Result<Published, ClientError> {
    let manifest_path = dir.join(MANIFEST_FILE);
    let json = std::fs::read(&manifest_path)
        .map_err(|e| ClientError::Local(format!("{}: {e}", manifest_path.display())))?;
    let manifest = Manifest::from_json(&json)
        .map_err(|e| ClientError::Local(format!("{}: {e}", manifest_path.display())))?;
    let files: Vec<PathBuf> = manifest.shards.iter().map(|s| dir.join(&s.file)).collect();
    for (entry, path) in manifest.shards.iter().zip(&files) {
        let size = std::fs::metadata(path)
            .map_err(|e| ClientError::Local(format!("{}: {e}", path.display())))?
            .len();
        if size != entry.bytes {
            return Err(ClientError::Local(format!(
                "{}: {size} bytes, the manifest says {}; rebuild the index",
                path.display(),
                entry.bytes
            )));
        }
    }
    let status = client.stage(&json, &manifest)?;
    let todo: Vec<usize> = status
        .blobs
        .iter()
        .enumerate()
        .filter(|(_, b)| b.verified.len() < b.regions.len())
        .map(|(i, _)| i)
        .collect();
    let skipped = status
        .blobs
        .iter()
        .enumerate()
        .filter(|(i, _)| !todo.contains(i))
        .map(|(_, b)| b.file.clone())
        .collect();
    let bars = indicatif::MultiProgress::with_draw_target(if progress {
        indicatif::ProgressDrawTarget::stderr()
    } else {
        indicatif::ProgressDrawTarget::hidden()
    });
    let total_bytes: u64 = todo.iter().map(|&i| status.blobs[i].bytes).sum();
    let total = bars.add(bar(total_bytes, "total"));
    let mut uploaded = Vec::new();
    let mut failed = Vec::new();
    for &i in &todo {
        let blob = &status.blobs[i];
        let Some((entry, path)) = manifest
            .shards
            .iter()
            .zip(&files)
            .find(|(s, _)| s.file == blob.file)
        else {
            failed.push(format!("{}: not in the local manifest", blob.file));
            continue;
        };
        let one = bars.insert_before(&total, bar(entry.bytes, &entry.name));
        let result = client.upload(&manifest, path, &entry.file, entry.bytes, &one);
        one.finish_and_clear();
        bars.remove(&one);
        total.inc(entry.bytes);
        match result {
            Ok(_) => {
                let line = format!(
                    "[publish] {} verified in {}",
                    entry.file,
                    blob.regions.join(", ")
                );
                if progress {
                    let _ = bars.println(line);
                } else {
                    eprintln!("{line}");
                }
                uploaded.push(entry.file.clone());
            }
            Err(e) => failed.push(e.to_string()),
        }
    }
    total.finish_and_clear();
    if !failed.is_empty() {
        let after = client
            .status(&manifest.name, &manifest.version)
            .ok()
            .and_then(|s| s.incomplete_reason());
        return Err(ClientError::Incomplete(format!(
            "{}@{} was not published (`current` unchanged): {}{}",
            manifest.name,
            manifest.version,
            failed.join("; "),
            after
                .map(|a| format!("; the worker says: {a}"))
                .unwrap_or_default()
        )));
    }
    let flipped = client.set_current(&manifest.name, &manifest.version, compacted_seq)?;
    Ok(Published {
        index: manifest.name.clone(),
        version: manifest.version.clone(),
        placement: status.placement,
        uploaded,
        skipped,
        previous: flipped
            .get("previous")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

fn bar(len: u64, name: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style);
    }
    bar.set_message(name.to_string());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(
            AdminClient::path("my docs/x", &["versions", "v1"]),
            "/v1/admin/indexes/my%20docs%2Fx/versions/v1"
        );
        assert_eq!(
            crate::api::admin::percent_decode(&percent_encode("é?#%")).as_deref(),
            Some("é?#%")
        );
    }
}
