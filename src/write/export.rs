//! What a compaction starts from: every live passage of an index (its base version's, less
//! those written over since, plus the written ones) as NDJSON, a header line first. Each passage
//! line is a [`Change`] that puts the passage, so `shardc compact` reads them with the same
//! types the writer keeps.
use serde::{Deserialize, Serialize};

use super::{Change, Delta, Put};
use crate::manifest::{Manifest, Placement, Routing};
use crate::shard::{Metric, Quant, Shard, ShardError};

/// Passages per chunk of the export's body.
pub const EXPORT_CHUNK: usize = 256;

/// The export's first line: the view it is of, and the shape a rebuild must keep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportHeader {
    pub index: String,
    /// The base version the passages were read from.
    pub version: String,
    /// Every write up to this seq is in the export (the compaction's `compacted_seq`).
    pub seq: u64,
    pub dims: usize,
    pub metric: Metric,
    pub quant: Quant,
    pub regions: Vec<String>,
    pub placement: Placement,
    /// Shards of the base version.
    pub shards: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// The base version's filterable fields (absent when its manifest has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter_fields: Option<Vec<String>>,
    /// The base version's boundary replication and probing, which a rebuild keeps; its
    /// replicated passages appear once per shard that stores them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<Routing>,
}

impl ExportHeader {
    pub fn new(manifest: &Manifest, seq: u64) -> ExportHeader {
        ExportHeader {
            index: manifest.name.clone(),
            version: manifest.version.clone(),
            seq,
            dims: manifest.dims,
            metric: manifest.metric,
            quant: manifest.quant,
            regions: manifest.regions.clone(),
            placement: manifest.placement(),
            shards: manifest.shards.len(),
            embedding_model: manifest.embedding_model.clone(),
            filter_fields: manifest.filter_fields.clone(),
            routing: manifest.routing,
        }
    }

    pub fn line(&self) -> String {
        let mut line = serde_json::to_string(self).unwrap_or_default();
        line.push('\n');
        line
    }
}

fn put_line(out: &mut String, change: &Change) {
    if let Ok(json) = serde_json::to_string(change) {
        out.push_str(&json);
        out.push('\n');
    }
}

/// The lines of `shard`'s ordinals `ords` that no write has replaced or deleted.
pub fn shard_lines(
    shard: &Shard,
    ords: std::ops::Range<u32>,
    writes: &Delta,
) -> Result<String, ShardError> {
    let mut out = String::new();
    for ord in ords {
        let passage = shard.passage(ord)?;
        if writes.shadows(&passage.id) {
            continue;
        }
        let change = Change {
            id: passage.id,
            put: Some(Put {
                vector: shard.vector(ord)?,
                text: passage.text,
                metadata: passage.metadata,
            }),
        };
        put_line(&mut out, &change);
    }
    Ok(out)
}

/// The written passages' lines, [`EXPORT_CHUNK`] to a string.
pub fn written_chunks(writes: &Delta) -> Vec<String> {
    let mut chunks = Vec::new();
    let mut out = String::new();
    for (n, (id, put)) in writes.passages().enumerate() {
        put_line(
            &mut out,
            &Change {
                id: id.clone(),
                put: Some(put),
            },
        );
        if (n + 1) % EXPORT_CHUNK == 0 {
            chunks.push(std::mem::take(&mut out));
        }
    }
    if !out.is_empty() {
        chunks.push(out);
    }
    chunks
}
