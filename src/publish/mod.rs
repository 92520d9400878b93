//! Publishing and retiring index versions, without I/O: the R2 keys a version occupies, what a
//! version still lacks in which region (so that `current` flips only onto a complete version and
//! a re-run resumes), the check of a blob as it streams in, and the lifecycle decisions (what may
//! be deleted, what garbage collection removes). `edge::publish` does the bucket calls;
//! `client` (native) is the `shardc` side.
//!
//! Layout of one region's bucket, beside the readers' keys (`store::blob_key`, `current_key`):
//! `<index>/<version>/.verified/<file>` marks a blob whose length and payload checksum were
//! checked as it arrived in that bucket, and `<index>/<version>/.published` records when the
//! version first went live. Shard files never start with `.`, so markers cannot shadow a blob.
#[cfg(not(target_arch = "wasm32"))]
pub mod client;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::api::ApiError;
use crate::manifest::{Manifest, ShardEntry, MANIFEST_FILE};
use crate::shard::format::{Header, HEADER_LEN};
use crate::store::blob_key;

/// The largest request body the Workers platform accepts on the smallest plans (100 MB); a
/// deployment on a larger plan raises `UPLOAD_LIMIT_BYTES`.
pub const UPLOAD_LIMIT_DEFAULT: u64 = 100_000_000;
/// A manifest carries one centroid per shard: generous for thousands of shards.
pub const MANIFEST_BODY_LIMIT: usize = 16 << 20;
/// How many missing items a 409 names before it says "and N more".
const MISSING_SHOWN: usize = 10;

pub fn index_prefix(index: &str) -> String {
    format!("{index}/")
}

pub fn version_prefix(index: &str, version: &str) -> String {
    format!("{index}/{version}/")
}

const VERIFIED_DIR: &str = ".verified/";
const PUBLISHED_FILE: &str = ".published";

pub fn verified_key(index: &str, version: &str, file: &str) -> String {
    blob_key(index, version, &format!("{VERIFIED_DIR}{file}"))
}

pub fn published_key(index: &str, version: &str) -> String {
    blob_key(index, version, PUBLISHED_FILE)
}

/// The publishing layer's one error type; each becomes a problem document.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PublishError {
    /// The request or the uploaded bytes break a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// The version or index is not in a state that allows the action (409).
    #[error("{0}")]
    Conflict(String),
    /// No such version, blob or index (404).
    #[error("{0}")]
    NotFound(String),
    /// A body over the upload limit (413).
    #[error("{what} has {size} bytes; this worker accepts uploads of at most {limit} bytes (UPLOAD_LIMIT_BYTES)")]
    TooLarge { what: String, size: u64, limit: u64 },
    /// A bucket did not answer (503).
    #[error("{0}")]
    Storage(String),
}

impl From<PublishError> for ApiError {
    fn from(e: PublishError) -> ApiError {
        match e {
            PublishError::Invalid(m) => ApiError::Invalid(m),
            PublishError::Conflict(m) => ApiError::Conflict(m),
            PublishError::NotFound(m) => ApiError::NotFound(m),
            too_large @ PublishError::TooLarge { .. } => {
                ApiError::UploadTooLarge(too_large.to_string())
            }
            PublishError::Storage(m) => ApiError::Unavailable(m),
        }
    }
}

/// Checks a manifest offered for staging under `index`/`version` against the path, the regions
/// this worker has buckets for and the upload limit: nothing is written unless every blob can be.
pub fn check_stage(
    manifest: &Manifest,
    index: &str,
    version: &str,
    bound: &dyn Fn(&str) -> bool,
    limit: u64,
) -> Result<(), PublishError> {
    if manifest.name != index || manifest.version != version {
        return Err(PublishError::Invalid(format!(
            "the manifest is {}@{}, but the path names {index}@{version}",
            manifest.name, manifest.version
        )));
    }
    let unbound: Vec<&String> = manifest.regions.iter().filter(|r| !bound(r)).collect();
    if !unbound.is_empty() {
        return Err(PublishError::Conflict(unbound_message(&unbound)));
    }
    if let Some(entry) = manifest.shards.iter().find(|s| s.bytes > limit) {
        return Err(PublishError::TooLarge {
            what: format!("shard {} ({})", entry.name, entry.file),
            size: entry.bytes,
            limit,
        });
    }
    Ok(())
}

fn unbound_message(regions: &[&String]) -> String {
    let named: Vec<String> = regions
        .iter()
        .map(|r| format!("{r} (binding {})", bucket_binding(r)))
        .collect();
    format!(
        "no bucket binding on this worker for region {}: nothing was published there, and `current` was not changed",
        named.join(", ")
    )
}

/// The bucket binding a region's shards live in.
pub fn bucket_binding(region: &str) -> String {
    format!("SHARDS_{}", region.to_ascii_uppercase())
}

/// What one region's bucket holds under a version's prefix: key → size. `None`: no bucket.
pub type Listing = Option<HashMap<String, u64>>;

/// One blob of a version and where it is verified.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlobStatus {
    pub file: String,
    pub bytes: u64,
    /// The regions its placement names.
    pub regions: Vec<String>,
    /// Those whose bucket holds it with the right length and a verification marker.
    pub verified: Vec<String>,
}

/// Where a version stands: the answer of the status route, and what a flip checks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionStatus {
    pub index: String,
    pub version: String,
    pub placement: String,
    /// Every blob and the manifest verified in every region they name.
    pub complete: bool,
    /// Regions the manifest names that this worker has no bucket for.
    pub unbound_regions: Vec<String>,
    /// Regions whose bucket lacks the manifest.
    pub manifest_missing: Vec<String>,
    pub blobs: Vec<BlobStatus>,
    pub upload_limit_bytes: u64,
}

impl VersionStatus {
    /// `(file, region)` of every blob still to be verified, region by region.
    pub fn missing(&self) -> Vec<(String, String)> {
        self.blobs
            .iter()
            .flat_map(|b| {
                b.regions
                    .iter()
                    .filter(|r| !b.verified.contains(r))
                    .map(|r| (b.file.clone(), r.clone()))
            })
            .collect()
    }

    /// Why `current` may not move onto this version (`None`: it may).
    pub fn incomplete_reason(&self) -> Option<String> {
        if self.complete {
            return None;
        }
        let mut parts = Vec::new();
        if !self.unbound_regions.is_empty() {
            let unbound: Vec<&String> = self.unbound_regions.iter().collect();
            parts.push(unbound_message(&unbound));
        }
        if !self.manifest_missing.is_empty() {
            parts.push(format!(
                "{MANIFEST_FILE} is missing in {}",
                self.manifest_missing.join(", ")
            ));
        }
        let missing = self.missing();
        if !missing.is_empty() {
            let shown: Vec<String> = missing
                .iter()
                .take(MISSING_SHOWN)
                .map(|(file, region)| format!("{file} in {region}"))
                .collect();
            let more = missing.len().saturating_sub(MISSING_SHOWN);
            let tail = if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            };
            parts.push(format!(
                "{} of {} blob copies are not uploaded and verified: {}{tail}",
                missing.len(),
                self.blobs.iter().map(|b| b.regions.len()).sum::<usize>(),
                shown.join(", ")
            ));
        }
        Some(format!(
            "{}@{} is not complete, so `current` was not changed: {}",
            self.index,
            self.version,
            parts.join("; ")
        ))
    }
}

/// A version's status from its manifest and each named region's listing of the version prefix.
pub fn version_status(
    manifest: &Manifest,
    listings: &BTreeMap<String, Listing>,
    upload_limit_bytes: u64,
) -> VersionStatus {
    let (index, version) = (manifest.name.as_str(), manifest.version.as_str());
    let listing = |region: &str| listings.get(region).and_then(Option::as_ref);
    let unbound_regions: Vec<String> = manifest
        .regions
        .iter()
        .filter(|r| listing(r).is_none())
        .cloned()
        .collect();
    let manifest_key = blob_key(index, version, MANIFEST_FILE);
    let manifest_missing: Vec<String> = manifest
        .regions
        .iter()
        .filter(|r| listing(r).is_some_and(|l| !l.contains_key(&manifest_key)))
        .cloned()
        .collect();
    let blobs: Vec<BlobStatus> = manifest
        .shards
        .iter()
        .map(|entry| {
            let regions = manifest.shard_regions(entry).to_vec();
            let verified = regions
                .iter()
                .filter(|r| {
                    listing(r).is_some_and(|l| {
                        l.get(&blob_key(index, version, &entry.file)) == Some(&entry.bytes)
                            && l.contains_key(&verified_key(index, version, &entry.file))
                    })
                })
                .cloned()
                .collect();
            BlobStatus {
                file: entry.file.clone(),
                bytes: entry.bytes,
                regions,
                verified,
            }
        })
        .collect();
    let complete = unbound_regions.is_empty()
        && manifest_missing.is_empty()
        && blobs.iter().all(|b| b.verified.len() == b.regions.len());
    VersionStatus {
        index: index.to_string(),
        version: version.to_string(),
        placement: manifest.placement().as_str().to_string(),
        complete,
        unbound_regions,
        manifest_missing,
        blobs,
        upload_limit_bytes,
    }
}

/// What [`BlobCheck::feed`] says about the bytes so far.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fed {
    /// Good so far; more bytes are due.
    More,
    /// That chunk was the last, and the whole blob is the one the manifest names.
    Complete,
}

/// Checks a shard blob chunk by chunk as it streams in, holding only its header: the length the
/// manifest names, a header that records the manifest's checksum, and a payload that hashes to it
/// (for a format-1 manifest, the whole file's hash). The caller hands each chunk to `feed` before
/// passing it on, so the last chunk is withheld from storage unless the blob is intact.
pub struct BlobCheck {
    file: String,
    expected_bytes: u64,
    expected: u64,
    whole_file: bool,
    seen: u64,
    header: Vec<u8>,
    hasher: Xxh3,
}

impl BlobCheck {
    pub fn new(manifest: &Manifest, entry: &ShardEntry) -> Result<BlobCheck, PublishError> {
        let expected = u64::from_str_radix(&entry.checksum, 16).map_err(|_| {
            PublishError::Invalid(format!(
                "shard {}: checksum {:?} is not hex",
                entry.name, entry.checksum
            ))
        })?;
        Ok(BlobCheck {
            file: entry.file.clone(),
            expected_bytes: entry.bytes,
            expected,
            whole_file: manifest.format_version == 1,
            seen: 0,
            header: Vec::with_capacity(HEADER_LEN),
            hasher: Xxh3::new(),
        })
    }

    fn invalid(&self, why: String) -> PublishError {
        PublishError::Invalid(format!("{}: {why}; nothing was stored", self.file))
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<Fed, PublishError> {
        let end = self.seen + chunk.len() as u64;
        if end > self.expected_bytes {
            return Err(self.invalid(format!(
                "the body has more than the manifest's {} bytes",
                self.expected_bytes
            )));
        }
        let header_part = HEADER_LEN
            .saturating_sub(self.header.len())
            .min(chunk.len());
        if header_part > 0 {
            self.header.extend_from_slice(&chunk[..header_part]);
            if self.header.len() == HEADER_LEN {
                self.check_header()?;
            }
        }
        if self.whole_file {
            self.hasher.update(chunk);
        } else {
            self.hasher.update(&chunk[header_part..]);
        }
        self.seen = end;
        if self.seen < self.expected_bytes {
            return Ok(Fed::More);
        }
        if self.header.len() < HEADER_LEN {
            return Err(self.invalid(format!("{} bytes cannot hold a shard header", self.seen)));
        }
        let actual = self.hasher.digest();
        if actual != self.expected {
            return Err(self.invalid(format!(
                "the content hashes to {actual:016x}, the manifest says {:016x}",
                self.expected
            )));
        }
        Ok(Fed::Complete)
    }

    fn check_header(&self) -> Result<(), PublishError> {
        let header =
            Header::parse(&self.header).map_err(|e| self.invalid(format!("header: {e}")))?;
        if header.payload_len + HEADER_LEN as u64 != self.expected_bytes {
            return Err(self.invalid(format!(
                "the header records a {}-byte payload, the manifest a {}-byte file",
                header.payload_len, self.expected_bytes
            )));
        }
        if !self.whole_file && header.checksum != self.expected {
            return Err(self.invalid(format!(
                "the header records checksum {:016x}, the manifest {:016x}",
                header.checksum, self.expected
            )));
        }
        Ok(())
    }

    /// The body ended: an error unless [`Fed::Complete`] was reached.
    pub fn end(&self) -> Result<(), PublishError> {
        if self.seen < self.expected_bytes {
            return Err(self.invalid(format!(
                "the body ended after {} of {} bytes",
                self.seen, self.expected_bytes
            )));
        }
        Ok(())
    }
}

/// One version of an index as the versions route lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    /// `current` names it in every region that has a `current`.
    pub live: bool,
    /// When it first went live (ms since the epoch), if it ever did.
    pub published_at_ms: Option<f64>,
    /// When its manifest was staged (ms since the epoch).
    pub staged_at_ms: Option<f64>,
    /// Distinct blob bytes, manifest included, summed over the files (not over replicas).
    pub bytes: u64,
    /// Regions whose bucket holds something of it.
    pub regions: Vec<String>,
}

/// One object of a listing under `<index>/`.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub region: String,
    pub key: String,
    pub size: u64,
    pub uploaded_ms: f64,
}

/// The versions under `<index>/` in every region's listing, newest first (by publish time, then
/// staging time), and the live flag from `current` as each region has it. Marker objects count
/// for times, not bytes.
pub fn versions(index: &str, objects: &[Listed], current: &[String]) -> Vec<VersionInfo> {
    let prefix = index_prefix(index);
    let mut by_version: BTreeMap<String, VersionInfo> = BTreeMap::new();
    let mut seen_files: BTreeSet<(String, String)> = BTreeSet::new();
    for object in objects {
        let Some((version, file)) = object
            .key
            .strip_prefix(&prefix)
            .and_then(|rest| rest.split_once('/'))
        else {
            continue;
        };
        let info = by_version
            .entry(version.to_string())
            .or_insert_with(|| VersionInfo {
                version: version.to_string(),
                live: false,
                published_at_ms: None,
                staged_at_ms: None,
                bytes: 0,
                regions: Vec::new(),
            });
        if !info.regions.contains(&object.region) {
            info.regions.push(object.region.clone());
        }
        let earliest =
            |t: Option<f64>| Some(t.map_or(object.uploaded_ms, |t| t.min(object.uploaded_ms)));
        if file == PUBLISHED_FILE {
            info.published_at_ms = earliest(info.published_at_ms);
        } else if !file.starts_with('.') {
            if file == MANIFEST_FILE {
                info.staged_at_ms = earliest(info.staged_at_ms);
            }
            if seen_files.insert((version.to_string(), file.to_string())) {
                info.bytes += object.size;
            }
        }
    }
    let mut list: Vec<VersionInfo> = by_version
        .into_values()
        .map(|mut info| {
            info.live = !current.is_empty() && current.iter().all(|c| *c == info.version);
            info.regions.sort();
            info
        })
        .collect();
    let time = |v: &VersionInfo| {
        (
            v.published_at_ms.unwrap_or(f64::MIN),
            v.staged_at_ms.unwrap_or(f64::MIN),
        )
    };
    list.sort_by(|a, b| {
        let (ta, tb) = (time(a), time(b));
        tb.0.total_cmp(&ta.0).then(tb.1.total_cmp(&ta.1))
    });
    list
}

/// A version may be deleted unless some region's `current` names it.
pub fn check_deletable(index: &str, version: &str, current: &[String]) -> Result<(), PublishError> {
    if current.iter().any(|c| c == version) {
        return Err(PublishError::Conflict(format!(
            "{index}@{version} is live; roll `current` to another version before deleting it"
        )));
    }
    Ok(())
}

/// Garbage collection keeps the `keep` newest versions (`versions` as [`versions`] orders them)
/// and whatever is live; it returns the others, oldest last.
pub fn gc_victims(versions: &[VersionInfo], current: &[String], keep: usize) -> Vec<String> {
    versions
        .iter()
        .skip(keep)
        .filter(|v| !current.contains(&v.version))
        .map(|v| v.version.clone())
        .collect()
}

/// The body of `PUT /v1/admin/indexes/{index}/current`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SetCurrent {
    pub version: String,
    /// Set by a compaction: the version holds every write up to this seq, so the index's write
    /// log may drop them.
    #[serde(default)]
    pub compacted_seq: Option<u64>,
}

/// The body of `POST /v1/admin/indexes/{index}/gc`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gc {
    /// Versions to keep, newest first (at least 1).
    pub keep: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::{checksum_hex, Placement, MANIFEST_FORMAT_VERSION};
    use crate::shard::{Metric, Quant};

    fn blob(payload: &[u8]) -> Vec<u8> {
        [&Header::for_payload(payload).encode()[..], payload].concat()
    }

    fn manifest(placement: Placement) -> (Manifest, Vec<Vec<u8>>) {
        let blobs = vec![blob(b"first payload"), blob(b"second payload, longer")];
        let regions: Vec<String> = vec!["weur".into(), "enam".into()];
        let shards = blobs
            .iter()
            .enumerate()
            .map(|(i, b)| ShardEntry {
                name: format!("shard-{i:03}"),
                file: format!("shard-{i:03}.shard"),
                bytes: b.len() as u64,
                count: 1,
                centroid: vec![1.0, 0.0],
                checksum: checksum_hex(&b[HEADER_LEN..]),
                regions: match placement {
                    Placement::Replicate => regions.clone(),
                    Placement::Spread => vec![regions[i % 2].clone()],
                },
            })
            .collect();
        let mut m = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "docs".into(),
            version: String::new(),
            dims: 2,
            metric: Metric::Cosine,
            quant: Quant::F16,
            count: 2,
            shards,
            regions,
            placement: Some(placement),
            embedding_model: None,
            filter_fields: None,
            lexical: None,
            routing: None,
        };
        m.version = m.content_version();
        (m, blobs)
    }

    fn full_listing(m: &Manifest, region: &str) -> HashMap<String, u64> {
        let mut l = HashMap::new();
        l.insert(blob_key(&m.name, &m.version, MANIFEST_FILE), 100);
        for s in m
            .shards
            .iter()
            .filter(|s| s.regions.iter().any(|r| r == region))
        {
            l.insert(blob_key(&m.name, &m.version, &s.file), s.bytes);
            l.insert(verified_key(&m.name, &m.version, &s.file), 2);
        }
        l
    }

    fn feed_all(check: &mut BlobCheck, bytes: &[u8], chunk: usize) -> Result<Fed, PublishError> {
        let mut last = Fed::More;
        for part in bytes.chunks(chunk) {
            last = check.feed(part)?;
        }
        check.end()?;
        Ok(last)
    }

    #[test]
    fn an_intact_blob_completes_in_any_chunking_and_a_changed_one_never_does() {
        let (m, blobs) = manifest(Placement::Replicate);
        for chunk in [1, 7, 31, 32, 33, 1000] {
            let mut check = BlobCheck::new(&m, &m.shards[1]).unwrap();
            assert_eq!(
                feed_all(&mut check, &blobs[1], chunk),
                Ok(Fed::Complete),
                "{chunk}"
            );
        }
        // The last byte of the payload flipped: refused at the last chunk, before it is passed on.
        let mut flipped = blobs[1].clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut check = BlobCheck::new(&m, &m.shards[1]).unwrap();
        let err = feed_all(&mut check, &flipped, 8).unwrap_err();
        assert!(err.to_string().contains("hashes to"), "{err}");
        // Another shard's bytes: its header names another checksum (and another length).
        let mut check = BlobCheck::new(&m, &m.shards[1]).unwrap();
        let mut other = blobs[0].clone();
        other.resize(blobs[1].len(), 0);
        assert!(feed_all(&mut check, &other, 64)
            .unwrap_err()
            .to_string()
            .contains("header"));
        // Too long and too short.
        let mut check = BlobCheck::new(&m, &m.shards[0]).unwrap();
        let long = [&blobs[0][..], b"x"].concat();
        assert!(feed_all(&mut check, &long, 1000)
            .unwrap_err()
            .to_string()
            .contains("more than"));
        let mut check = BlobCheck::new(&m, &m.shards[0]).unwrap();
        assert_eq!(check.feed(&blobs[0][..10]), Ok(Fed::More));
        assert!(check
            .end()
            .unwrap_err()
            .to_string()
            .contains("ended after 10"));
        // Not a shard at all.
        let mut check = BlobCheck::new(&m, &m.shards[0]).unwrap();
        let junk = vec![7u8; blobs[0].len()];
        assert!(feed_all(&mut check, &junk, 5)
            .unwrap_err()
            .to_string()
            .contains("header"));
    }

    #[test]
    fn a_format_1_manifest_checks_the_whole_file_hash() {
        let (mut m, blobs) = manifest(Placement::Replicate);
        m.format_version = 1;
        m.shards[0].checksum = checksum_hex(&blobs[0]);
        let mut check = BlobCheck::new(&m, &m.shards[0]).unwrap();
        assert_eq!(feed_all(&mut check, &blobs[0], 9), Ok(Fed::Complete));
    }

    #[test]
    fn status_names_what_is_missing_where_and_completes_only_when_nothing_is() {
        let (m, _) = manifest(Placement::Replicate);
        let mut listings: BTreeMap<String, Listing> = BTreeMap::new();
        listings.insert("weur".into(), Some(full_listing(&m, "weur")));
        listings.insert("enam".into(), Some(full_listing(&m, "enam")));
        let status = version_status(&m, &listings, 50);
        assert!(status.complete && status.incomplete_reason().is_none());
        assert_eq!(status.placement, "replicate");
        assert_eq!(status.upload_limit_bytes, 50);

        // A blob of the wrong size, and one without its marker (an upload cut off), in enam.
        let enam = listings.get_mut("enam").unwrap().as_mut().unwrap();
        enam.insert(blob_key(&m.name, &m.version, &m.shards[0].file), 3);
        enam.remove(&verified_key(&m.name, &m.version, &m.shards[1].file));
        let status = version_status(&m, &listings, 50);
        assert!(!status.complete);
        assert_eq!(
            status.missing(),
            vec![
                (m.shards[0].file.clone(), "enam".to_string()),
                (m.shards[1].file.clone(), "enam".to_string())
            ]
        );
        let reason = status.incomplete_reason().unwrap();
        assert!(
            reason.contains("2 of 4 blob copies") && reason.contains("in enam"),
            "{reason}"
        );

        // A region without a bucket is named as such.
        listings.insert("enam".into(), None);
        let status = version_status(&m, &listings, 50);
        assert_eq!(status.unbound_regions, ["enam"]);
        assert!(status.incomplete_reason().unwrap().contains("SHARDS_ENAM"));
        listings.remove("enam");
        assert_eq!(version_status(&m, &listings, 50).unbound_regions, ["enam"]);
    }

    #[test]
    fn spread_needs_each_blob_only_where_it_is_placed() {
        let (m, _) = manifest(Placement::Spread);
        let mut listings: BTreeMap<String, Listing> = BTreeMap::new();
        listings.insert("weur".into(), Some(full_listing(&m, "weur")));
        let status = version_status(&m, &listings, 50);
        assert_eq!(status.unbound_regions, ["enam"]);
        listings.insert("enam".into(), Some(full_listing(&m, "enam")));
        let status = version_status(&m, &listings, 50);
        assert!(status.complete);
        assert_eq!(status.blobs[0].regions, ["weur"]);
        assert_eq!(status.blobs[1].regions, ["enam"]);
        // The manifest itself must be in every region.
        listings
            .get_mut("enam")
            .unwrap()
            .as_mut()
            .unwrap()
            .remove(&blob_key(&m.name, &m.version, MANIFEST_FILE));
        let status = version_status(&m, &listings, 50);
        assert_eq!(status.manifest_missing, ["enam"]);
        assert!(!status.complete);
    }

    #[test]
    fn staging_checks_the_path_the_buckets_and_the_limit_before_writing() {
        let (m, _) = manifest(Placement::Replicate);
        let all = |_: &str| true;
        assert_eq!(check_stage(&m, "docs", &m.version, &all, 1000), Ok(()));
        assert!(matches!(
            check_stage(&m, "other", &m.version, &all, 1000),
            Err(PublishError::Invalid(_))
        ));
        let no_enam = |r: &str| r != "enam";
        let err = check_stage(&m, "docs", &m.version, &no_enam, 1000).unwrap_err();
        assert!(
            matches!(&err, PublishError::Conflict(m) if m.contains("enam (binding SHARDS_ENAM)")),
            "{err}"
        );
        let err = check_stage(&m, "docs", &m.version, &all, 10).unwrap_err();
        assert!(err.to_string().contains("at most 10 bytes"), "{err}");
        assert_eq!(ApiError::from(err).status(), 413);
    }

    #[test]
    fn versions_are_listed_newest_first_with_live_flags_and_distinct_bytes() {
        let at = |region: &str, key: &str, size: u64, uploaded_ms: f64| Listed {
            region: region.into(),
            key: key.into(),
            size,
            uploaded_ms,
        };
        let objects = vec![
            at("weur", "docs/current", 16, 5.0),
            at("weur", "docs/v1/manifest.json", 10, 1.0),
            at("weur", "docs/v1/a.shard", 100, 1.0),
            at("weur", "docs/v1/.verified/a.shard", 2, 1.0),
            at("weur", "docs/v1/.published", 2, 2.0),
            at("enam", "docs/v1/a.shard", 100, 1.5),
            at("weur", "docs/v2/manifest.json", 10, 3.0),
            at("weur", "docs/v2/.published", 2, 4.0),
            at("weur", "docs/v3/manifest.json", 10, 6.0),
            at("weur", "docsx/v9/manifest.json", 10, 6.0),
        ];
        let listed = versions("docs", &objects, &["v2".to_string(), "v2".to_string()]);
        let names: Vec<&str> = listed.iter().map(|v| v.version.as_str()).collect();
        assert_eq!(
            names,
            ["v2", "v1", "v3"],
            "published newest first, never-published last"
        );
        assert!(listed[0].live && !listed[1].live);
        assert_eq!(
            listed[1].bytes, 110,
            "a.shard counted once, markers not at all"
        );
        assert_eq!(listed[1].regions, ["enam", "weur"]);
        assert_eq!(listed[1].published_at_ms, Some(2.0));
        assert_eq!(listed[2].published_at_ms, None);
        // Regions disagreeing (mid-flip): nothing is reported live.
        let mixed = versions("docs", &objects, &["v2".to_string(), "v1".to_string()]);
        assert!(mixed.iter().all(|v| !v.live));

        assert_eq!(gc_victims(&listed, &["v2".into()], 1), ["v1", "v3"]);
        assert_eq!(
            gc_victims(&listed, &["v1".into()], 1),
            ["v3"],
            "the live one stays"
        );
        assert!(gc_victims(&listed, &[], 3).is_empty());
        assert!(check_deletable("docs", "v1", &["v2".into()]).is_ok());
        let live = check_deletable("docs", "v2", &["v2".into()]).unwrap_err();
        assert_eq!(ApiError::from(live).status(), 409);
    }
}
