//! The index manifest: which shards make up one immutable index version, where they live, how to
//! check them (size, checksum) and how to route a query to them (centroids, regions).

use serde::{Deserialize, Serialize};

use crate::shard::format::Header;
use crate::shard::{Metric, Quant, ShardMeta};

/// Manifest layout version; bump when fields change meaning (2: a shard's `checksum` is its
/// payload checksum, the one its header records, no longer a hash of the whole file; 3: the
/// manifest records its `placement`, which older readers would leave out of the content hash;
/// 4: it lists its `filter_fields`, likewise; 5: `routing`, whose boundary replicas make the shard
/// counts add up to more than `count`, which older readers would refuse anyway).
pub const MANIFEST_FORMAT_VERSION: u32 = 5;
/// The oldest manifest layout still read, so that indexes published before an upgrade keep
/// serving: version 1's `checksum` is the hash of the whole shard file.
const OLDEST_READABLE_FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside an index directory (or under an index prefix in R2).
pub const MANIFEST_FILE: &str = "manifest.json";

/// The one checksum function: xxh3-64 of `bytes` as 16 lowercase hex digits.
pub fn checksum_hex(bytes: &[u8]) -> String {
    hex(xxhash_rust::xxh3::xxh3_64(bytes))
}

fn hex(checksum: u64) -> String {
    format!("{checksum:016x}")
}

#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ManifestError {
    #[error("manifest is not valid JSON for this format: {0}")]
    Json(String),
    #[error(
        "unsupported manifest format version {found} (this build reads versions 1 to {supported})"
    )]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error("invalid manifest: {0}")]
    Invalid(String),
    #[error("manifest version {declared} does not match its content (hashes to {actual})")]
    VersionMismatch { declared: String, actual: String },
    #[error("shard {shard}: expected {expected_bytes} bytes with payload checksum {expected}, got {actual_bytes} bytes whose header records checksum {actual}")]
    ShardMismatch {
        shard: String,
        expected_bytes: u64,
        expected: String,
        actual_bytes: u64,
        actual: String,
    },
    #[error("shard {shard} does not match the manifest: its {field} is {found}, the manifest says {expected}")]
    ShardDiffers {
        shard: String,
        field: &'static str,
        expected: String,
        found: String,
    },
    #[error("the manifest at {index}/{version} names {field} {found:?}: it is not the version its pointer named")]
    NotThePointed {
        index: String,
        version: String,
        field: &'static str,
        found: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub name: String,
    /// Content hash of everything else in the manifest (see [`Manifest::content_version`]).
    pub version: String,
    pub dims: usize,
    pub metric: Metric,
    pub quant: Quant,
    pub count: u64,
    pub shards: Vec<ShardEntry>,
    /// Every region that hosts some shard.
    pub regions: Vec<String>,
    /// How shards were placed into `regions`. Absent in manifests older than format 3 (and left
    /// out of their JSON, so their content hash is unchanged): [`Manifest::placement`] then tells
    /// it from the shards' region lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,
    /// The model that embedded the passages, which text queries and text upserts must be
    /// embedded with too. Absent (and left out of the JSON, so older manifests keep their content
    /// hash) when the build was not told: then the worker's `EMBEDDING_MODEL` is assumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// The metadata fields a search filter may name, sorted: those the build kept as shard
    /// columns (`shardc build --filter-fields`). Absent (and left out of the JSON, so older
    /// manifests keep their content hash) for indexes built before it was recorded and for
    /// indexes created empty through the API: then a filter may name any field, and one that
    /// no shard has a column for matches as missing on every passage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_fields: Option<Vec<String>>,
    /// The corpus counts of the lexical postings' BM25 (passages, tokens), as every shard
    /// records them too. Absent (and left out of the JSON) in manifests of indexes without
    /// postings: an index created empty, or built before shard format 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<crate::lexical::CorpusStats>,
    /// Boundary replication and adaptive probing (`shardc build --replicate-margin`). Absent
    /// (and left out of the JSON) when every passage is in exactly one shard and a plan visits
    /// `probe` shards or all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
}

/// How a build spread passages over more than one shard, and how far a plan looks for them.
/// Distances are the metric's internal ones (cosine: 1 − similarity) from a vector or query to
/// a shard's centroid.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Routing {
    /// A passage is also stored in the nearest other shard whose centroid is at most this much
    /// farther from it than its own shard's (SPANN-style boundary replication, at most
    /// [`MAX_COPIES`] copies).
    pub replicate_margin: f32,
    /// Copies stored besides the first: the shard counts add up to `count + replicas`.
    pub replicas: u64,
    /// A plan visits, nearest first, the shards whose centroid is at most this much farther from
    /// the query than the nearest one's (and at most `probe`, when a request caps it).
    pub probe_margin: f32,
}

/// Most shards one passage is stored in.
pub const MAX_COPIES: usize = 2;

/// Where a build puts each shard's replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Placement {
    /// Every shard in every region: each region serves every query from its own bucket.
    Replicate,
    /// One region per shard, round-robin: one copy of the data, for indexes too large to copy
    /// everywhere; a query reads the shards of other regions across the network.
    Spread,
}

impl Placement {
    pub fn as_str(self) -> &'static str {
        match self {
            Placement::Replicate => "replicate",
            Placement::Spread => "spread",
        }
    }
}

impl std::str::FromStr for Placement {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "replicate" => Ok(Placement::Replicate),
            "spread" => Ok(Placement::Spread),
            other => Err(format!(
                "unknown placement {other:?} (expected replicate or spread)"
            )),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub name: String,
    /// File name relative to the manifest's directory (or R2 prefix).
    pub file: String,
    pub bytes: u64,
    pub count: u32,
    /// Mean of the shard's vectors (normalised for cosine): where to route queries.
    pub centroid: Vec<f32>,
    /// [`checksum_hex`] of the shard's payload (everything after its 32-byte header): the value
    /// the shard's header records, so checking a blob against its entry costs no hashing and the
    /// payload is hashed once, when it arrives (`shard::format::verify_payload`).
    pub checksum: String,
    /// Regions whose buckets hold a replica of this shard (empty in some old manifests: every
    /// region of the manifest; see [`Manifest::shard_regions`]).
    pub regions: Vec<String>,
}

impl Manifest {
    /// Parses and validates.
    pub fn from_json(bytes: &[u8]) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Json(e.to_string()))?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// The recorded placement, else the one the shards' region lists show: every shard in
    /// every region is `replicate`, anything else `spread`.
    pub fn placement(&self) -> Placement {
        self.placement.unwrap_or_else(|| {
            let everywhere = self.shards.iter().all(|s| {
                s.regions.is_empty() || self.regions.iter().all(|r| s.regions.contains(r))
            });
            if everywhere {
                Placement::Replicate
            } else {
                Placement::Spread
            }
        })
    }

    /// The regions whose buckets must hold shard `entry`: its own list, or every region of the
    /// manifest when the list is empty (as some old manifests have it).
    pub fn shard_regions<'a>(&'a self, entry: &'a ShardEntry) -> &'a [String] {
        if entry.regions.is_empty() {
            &self.regions
        } else {
            &entry.regions
        }
    }

    pub fn to_json_pretty(&self) -> String {
        // A struct of strings, numbers and vectors of them always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// The content hash a manifest's `version` must equal: the checksum of its JSON with `version` empty.
    /// The manifest of an index with no shards yet (created through the API, filled by writes),
    /// held in `regions`.
    pub fn empty(
        name: &str,
        dims: usize,
        metric: Metric,
        quant: Quant,
        regions: Vec<String>,
        embedding_model: Option<String>,
    ) -> Result<Manifest, ManifestError> {
        let mut manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: name.to_string(),
            version: String::new(),
            dims,
            metric,
            quant,
            count: 0,
            shards: Vec::new(),
            regions,
            placement: Some(Placement::Replicate),
            embedding_model,
            filter_fields: None,
            lexical: None,
            routing: None,
        };
        manifest.version = manifest.content_version();
        manifest.validate()?;
        Ok(manifest)
    }

    pub fn content_version(&self) -> String {
        let unversioned = Manifest {
            version: String::new(),
            ..self.clone()
        };
        checksum_hex(unversioned.to_json_pretty().as_bytes())
    }

    pub fn validate(&self) -> Result<(), ManifestError> {
        let invalid = |message: String| Err(ManifestError::Invalid(message));
        if !(OLDEST_READABLE_FORMAT_VERSION..=MANIFEST_FORMAT_VERSION)
            .contains(&self.format_version)
        {
            return Err(ManifestError::UnsupportedVersion {
                found: self.format_version,
                supported: MANIFEST_FORMAT_VERSION,
            });
        }
        if !is_index_name(&self.name) {
            return invalid(format!("name {:?} is not an index name (1 to {INDEX_NAME_MAX} bytes, no `/` or control characters, no leading `.`)", self.name));
        }
        if self.dims == 0 {
            return invalid("dims is 0".into());
        }
        // An index created through the API starts with no shards; its writes serve it.
        if self.shards.is_empty() && self.regions.is_empty() {
            return invalid("no shards and no regions".into());
        }
        let mut names = std::collections::HashSet::new();
        for shard in &self.shards {
            if !names.insert(shard.name.as_str()) {
                return invalid(format!("shard name {:?} appears twice", shard.name));
            }
            if !is_plain_file_name(&shard.file) {
                return invalid(format!(
                    "shard {:?}: file {:?} must be a plain file name",
                    shard.name, shard.file
                ));
            }
            if shard.centroid.len() != self.dims || shard.centroid.iter().any(|x| !x.is_finite()) {
                return invalid(format!(
                    "shard {:?}: centroid must be {} finite numbers",
                    shard.name, self.dims
                ));
            }
            if shard.checksum.len() != 16
                || !shard
                    .checksum
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            {
                return invalid(format!(
                    "shard {:?}: checksum {:?} is not 16 lowercase hex digits",
                    shard.name, shard.checksum
                ));
            }
            if let Some(region) = shard.regions.iter().find(|r| !self.regions.contains(r)) {
                return invalid(format!(
                    "shard {:?}: region {region:?} is not in the manifest's regions",
                    shard.name
                ));
            }
            if self.placement == Some(Placement::Replicate)
                && self.shard_regions(shard).len() != self.regions.len()
            {
                return invalid(format!(
                    "shard {:?}: placement replicate needs it in every region, it names {:?}",
                    shard.name, shard.regions
                ));
            }
        }
        if let Some(region) = self
            .regions
            .iter()
            .enumerate()
            .find(|(i, r)| r.is_empty() || self.regions[..*i].contains(r))
            .map(|(_, r)| r)
        {
            return invalid(format!(
                "region {region:?} is empty or appears twice in the manifest's regions"
            ));
        }
        if let Some(fields) = &self.filter_fields {
            if let Some(field) = fields.windows(2).find(|w| w[0] >= w[1]) {
                return invalid(format!(
                    "filter_fields must be sorted and distinct: {:?} comes before {:?}",
                    field[0], field[1]
                ));
            }
            if let Some(field) = fields.iter().find(|f| f.is_empty() || f.starts_with('$')) {
                return invalid(format!(
                    "filter field {field:?} is empty or starts with `$` (the filter language's operators)"
                ));
            }
        }
        if let Some(routing) = &self.routing {
            let margins = [routing.replicate_margin, routing.probe_margin];
            if margins.iter().any(|m| !m.is_finite() || *m < 0.0) {
                return invalid(format!(
                    "routing margins must be finite and not negative, not {margins:?}"
                ));
            }
            if routing.replicas > self.count * (MAX_COPIES as u64 - 1) {
                return invalid(format!(
                    "{} replicas of {} passages: at most {MAX_COPIES} copies of each",
                    routing.replicas, self.count
                ));
            }
        }
        let stored = self.count + self.routing.map_or(0, |r| r.replicas);
        let total: u64 = self.shards.iter().map(|s| u64::from(s.count)).sum();
        if total != stored {
            return invalid(format!(
                "shard counts add up to {total}, manifest says {stored} (count plus replicas)"
            ));
        }
        let actual = self.content_version();
        if self.version != actual {
            return Err(ManifestError::VersionMismatch {
                declared: self.version.clone(),
                actual,
            });
        }
        Ok(())
    }

    /// Checks that a fetched shard file is the one entry `shard` names: its size, and the payload
    /// checksum its header records (O(1): the payload itself is verified against that header
    /// field by `shard::format::verify_payload`, which [`crate::shard::Shard::from_bytes`] runs).
    /// A version 1 manifest names the hash of the whole file, which is computed here instead.
    pub fn verify_shard(&self, shard: usize, bytes: &[u8]) -> Result<(), ManifestError> {
        let entry = self
            .shards
            .get(shard)
            .ok_or_else(|| ManifestError::Invalid(format!("no shard number {shard}")))?;
        let declared = if self.format_version == 1 {
            Some(checksum_hex(bytes))
        } else {
            Header::declared_checksum(bytes).map(hex)
        };
        if entry.bytes != bytes.len() as u64 || declared.as_ref() != Some(&entry.checksum) {
            return Err(ManifestError::ShardMismatch {
                shard: entry.name.clone(),
                expected_bytes: entry.bytes,
                expected: entry.checksum.clone(),
                actual_bytes: bytes.len() as u64,
                actual: declared.unwrap_or_else(|| "none (no header)".into()),
            });
        }
        Ok(())
    }

    /// Checks that an opened shard describes itself as entry `shard` does (dims, metric,
    /// quantisation, vector count): a blob that verifies but belongs to another build is refused
    /// before it answers a query with wrong vectors or passages.
    pub fn check_shard_meta(&self, shard: usize, meta: &ShardMeta) -> Result<(), ManifestError> {
        let entry = self
            .shards
            .get(shard)
            .ok_or_else(|| ManifestError::Invalid(format!("no shard number {shard}")))?;
        let differs = |field, expected: String, found: String| {
            Err(ManifestError::ShardDiffers {
                shard: entry.name.clone(),
                field,
                expected,
                found,
            })
        };
        if meta.dims != self.dims {
            return differs("dims", self.dims.to_string(), meta.dims.to_string());
        }
        if meta.metric != self.metric {
            return differs(
                "metric",
                self.metric.as_str().into(),
                meta.metric.as_str().into(),
            );
        }
        if meta.quant != self.quant {
            return differs(
                "quant",
                self.quant.as_str().into(),
                meta.quant.as_str().into(),
            );
        }
        if meta.count != entry.count {
            return differs("count", entry.count.to_string(), meta.count.to_string());
        }
        Ok(())
    }

    /// Checks that this manifest is the one `<index>/current` pointed to: a manifest copied
    /// under another index or version would otherwise serve as that version.
    pub fn check_pointed(&self, index: &str, version: &str) -> Result<(), ManifestError> {
        let not = |field, found: &str| {
            Err(ManifestError::NotThePointed {
                index: index.to_string(),
                version: version.to_string(),
                field,
                found: found.to_string(),
            })
        };
        if self.name != index {
            return not("name", &self.name);
        }
        if self.version != version {
            return not("version", &self.version);
        }
        Ok(())
    }

    /// Indices of the `n` shards whose centroids are closest to `query`, closest first.
    /// A query of the wrong dimension gets the first `n` shards; the shard search then rejects it.
    pub fn nearest_shards(&self, query: &[f32], n: usize) -> Vec<usize> {
        self.shards_by_distance(query)
            .into_iter()
            .take(n)
            .map(|(_, i)| i)
            .collect()
    }

    /// Every shard with its centroid's distance from `query`, nearest first (ties by position;
    /// a query of the wrong length is at distance 0 from all). A cosine query is normalised
    /// first, as the shards normalise it, so that distances (and the routing margins) mean
    /// the same whatever its length.
    pub fn shards_by_distance(&self, query: &[f32]) -> Vec<(f32, usize)> {
        let norm = query.iter().map(|x| x * x).sum::<f32>().sqrt();
        let unit: Vec<f32>;
        let query = if self.metric == Metric::Cosine && norm > 0.0 {
            unit = query.iter().map(|x| x / norm).collect();
            &unit
        } else {
            query
        };
        let mut order: Vec<(f32, usize)> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, shard)| {
                let distance = if query.len() == self.dims {
                    self.metric.distance_f32(query, &shard.centroid)
                } else {
                    0.0
                };
                (distance, i)
            })
            .collect();
        order.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        order
    }

    /// How many copies of one passage a merge may see: the hits it must take to be left with
    /// `k` distinct passages.
    pub fn copies(&self) -> usize {
        match self.routing {
            Some(routing) if routing.replicas > 0 => MAX_COPIES,
            _ => 1,
        }
    }
}

/// Index names are the first part of R2 keys (`<index>/<version>/<file>`), which are at most
/// 1024 bytes, and are typed into requests: keep them short.
pub const INDEX_NAME_MAX: usize = 128;

/// A name an index may have: a plain file name of at most [`INDEX_NAME_MAX`] bytes without
/// control characters. The builder refuses other names and the worker does not look them up.
pub fn is_index_name(name: &str) -> bool {
    name.len() <= INDEX_NAME_MAX && is_plain_file_name(name) && !name.chars().any(char::is_control)
}

fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.starts_with('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let entry = |name: &str, centroid: Vec<f32>, regions: &[&str]| ShardEntry {
            name: name.into(),
            file: format!("{name}.shard"),
            bytes: 10,
            count: 5,
            centroid,
            checksum: checksum_hex(name.as_bytes()),
            regions: regions.iter().map(|r| r.to_string()).collect(),
        };
        let mut manifest = Manifest {
            format_version: MANIFEST_FORMAT_VERSION,
            name: "demo".into(),
            version: String::new(),
            dims: 2,
            metric: Metric::Cosine,
            quant: Quant::F16,
            count: 10,
            shards: vec![
                entry("s0", vec![1.0, 0.0], &["weur"]),
                entry("s1", vec![0.0, 1.0], &["enam"]),
            ],
            regions: vec!["weur".into(), "enam".into()],
            placement: Some(Placement::Spread),
            embedding_model: None,
            filter_fields: None,
            lexical: None,
            routing: None,
        };
        manifest.version = manifest.content_version();
        manifest
    }

    #[test]
    fn placement_is_recorded_or_read_from_the_shard_regions() {
        let mut manifest = sample();
        assert_eq!(manifest.placement(), Placement::Spread);
        assert!(manifest
            .to_json_pretty()
            .contains("\"placement\": \"spread\""));
        // An older manifest: no field, and its content hash is what it was.
        manifest.placement = None;
        let json = manifest.to_json_pretty();
        assert!(!json.contains("placement"));
        manifest.version = manifest.content_version();
        let old = Manifest::from_json(manifest.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(old.placement(), Placement::Spread);
        let mut everywhere = old.clone();
        for shard in &mut everywhere.shards {
            shard.regions = everywhere.regions.clone();
        }
        assert_eq!(everywhere.placement(), Placement::Replicate);
        everywhere.shards[1].regions.clear();
        assert_eq!(
            everywhere.placement(),
            Placement::Replicate,
            "empty: every region"
        );
        assert_eq!(
            everywhere.shard_regions(&everywhere.shards[1]),
            ["weur", "enam"]
        );
        // A replicate manifest whose shard misses a region is refused.
        let mut wrong = sample();
        wrong.placement = Some(Placement::Replicate);
        wrong.version = wrong.content_version();
        assert!(
            matches!(wrong.validate(), Err(ManifestError::Invalid(m)) if m.contains("replicate"))
        );
        let mut twice = sample();
        twice.regions.push("weur".into());
        twice.version = twice.content_version();
        assert!(matches!(twice.validate(), Err(ManifestError::Invalid(m)) if m.contains("twice")));
    }

    #[test]
    fn round_trips_through_json_and_routes_by_centroid() {
        let manifest = sample();
        let parsed = Manifest::from_json(manifest.to_json_pretty().as_bytes()).unwrap();
        assert_eq!(parsed, manifest);
        assert_eq!(parsed.nearest_shards(&[0.1, 0.9], 1), vec![1]);
        assert_eq!(parsed.nearest_shards(&[0.9, 0.1], 5), vec![0, 1]);
        assert!(manifest.to_json_pretty().contains("\"metric\": \"cosine\""));
    }

    #[test]
    fn rejects_inconsistent_manifests_with_clear_errors() {
        let mut wrong_count = sample();
        wrong_count.count = 11;
        wrong_count.version = wrong_count.content_version();
        assert!(
            matches!(wrong_count.validate(), Err(ManifestError::Invalid(m)) if m.contains("add up"))
        );

        let mut tampered = sample();
        tampered.shards[0].bytes = 11;
        assert!(matches!(
            tampered.validate(),
            Err(ManifestError::VersionMismatch { .. })
        ));

        let mut escaping = sample();
        escaping.shards[0].file = "../etc/passwd".into();
        escaping.version = escaping.content_version();
        assert!(
            matches!(escaping.validate(), Err(ManifestError::Invalid(m)) if m.contains("plain file name"))
        );

        assert!(matches!(
            Manifest::from_json(b"{"),
            Err(ManifestError::Json(_))
        ));
        let mut future = sample();
        future.format_version = 99;
        assert!(matches!(
            future.validate(),
            Err(ManifestError::UnsupportedVersion { found: 99, .. })
        ));
    }

    #[test]
    fn verify_shard_checks_size_and_the_header_checksum() {
        let payload = b"payload";
        let blob = [&Header::for_payload(payload).encode()[..], payload].concat();
        let mut manifest = sample();
        manifest.shards[0].bytes = blob.len() as u64;
        manifest.shards[0].checksum = checksum_hex(payload);
        assert!(manifest.verify_shard(0, &blob).is_ok());

        let other = [&Header::for_payload(b"PAYLOAD").encode()[..], b"PAYLOAD"].concat();
        let mismatch = |bytes: &[u8]| {
            matches!(
                manifest.verify_shard(0, bytes),
                Err(ManifestError::ShardMismatch { .. })
            )
        };
        assert!(mismatch(&other), "another shard's header checksum");
        assert!(mismatch(&blob[..blob.len() - 1]), "wrong size");
        assert!(mismatch(&blob[..20]), "no header");
        assert!(manifest.verify_shard(7, &blob).is_err());
    }

    #[test]
    fn a_version_1_manifest_still_verifies_by_the_whole_file_hash() {
        let payload = b"payload";
        let blob = [&Header::for_payload(payload).encode()[..], payload].concat();
        let mut manifest = sample();
        manifest.format_version = 1;
        manifest.shards[0].bytes = blob.len() as u64;
        manifest.shards[0].checksum = checksum_hex(&blob);
        assert!(!matches!(
            manifest.validate(),
            Err(ManifestError::UnsupportedVersion { .. })
        ));
        assert!(manifest.verify_shard(0, &blob).is_ok());
        manifest.shards[0].checksum = checksum_hex(payload);
        assert!(matches!(
            manifest.verify_shard(0, &blob),
            Err(ManifestError::ShardMismatch { .. })
        ));
        manifest.format_version = 0;
        assert!(matches!(
            manifest.validate(),
            Err(ManifestError::UnsupportedVersion { found: 0, .. })
        ));
    }
}
