//! An index held whole in this process: its manifest and every shard open, verified against each
//! other, searched shard after shard and merged exactly, hits resolved to API matches.
//! `shardc`, the integration tests and the wasm search probe use it (so native and wasm32 run the
//! same code path); the worker instead loads shards lazily through the store and fans out.

use crate::api::Match;
use crate::fanout;
use crate::manifest::{Manifest, ManifestError};
use crate::shard::{merge_top_k, SearchParams, Shard, ShardError, ShardHit, ShardMeta};

/// Why a set of blobs does not open as the index its manifest describes.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Wrong number of blobs, or a blob whose size or checksum is not the manifest's.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("shard {shard}: {source}")]
    Shard { shard: String, source: ShardError },
    #[error("shard {shard} does not match the manifest ({meta:?})")]
    Mismatch { shard: String, meta: ShardMeta },
}

pub struct LocalIndex {
    pub manifest: Manifest,
    /// In manifest order: `shards[i]` is `manifest.shards[i]`.
    pub shards: Vec<Shard>,
}

impl LocalIndex {
    /// Opens `blobs` (in manifest order), checking each against its entry before trusting it.
    pub fn open<B: AsRef<[u8]>>(
        manifest: Manifest,
        blobs: impl IntoIterator<Item = B>,
    ) -> Result<LocalIndex, OpenError> {
        let shards = blobs
            .into_iter()
            .enumerate()
            .map(|(i, bytes)| open_shard(&manifest, i, bytes.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        if shards.len() != manifest.shards.len() {
            return Err(ManifestError::Invalid(format!(
                "the manifest names {} shards, {} blobs were given",
                manifest.shards.len(),
                shards.len()
            ))
            .into());
        }
        Ok(LocalIndex { manifest, shards })
    }

    /// Searches every shard (as [`fanout::plan`] says) and merges exactly.
    pub fn search(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<ShardHit>, ShardError> {
        self.search_shards(query, params, None)
    }

    /// Searches the shards [`fanout::plan`] chooses (all, or the `probe` whose centroids are
    /// nearest to the query), each with its beam width, and merges exactly: what the worker does.
    pub fn search_shards(
        &self,
        query: &[f32],
        params: &SearchParams,
        probe: Option<usize>,
    ) -> Result<Vec<ShardHit>, ShardError> {
        let visits = fanout::plan(&self.manifest, query, probe, params);
        let per_shard = visits
            .iter()
            .map(|visit| {
                let params = SearchParams {
                    ef: visit.ef,
                    ..params.clone()
                };
                Ok((
                    visit.shard,
                    self.shards[visit.shard].search(query, &params)?,
                ))
            })
            .collect::<Result<Vec<_>, ShardError>>()?;
        Ok(merge_top_k(
            per_shard.iter().map(|(i, hits)| (*i, hits.as_slice())),
            params.k,
        ))
    }

    /// Brute force over every shard's stored vectors.
    pub fn search_exact(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<ShardHit>, ShardError> {
        let per_shard = self
            .shards
            .iter()
            .map(|shard| shard.search_exact(query, params.k, params.filter.as_ref()))
            .collect::<Result<Vec<_>, ShardError>>()?;
        Ok(merge_top_k(
            per_shard.iter().map(Vec::as_slice).enumerate(),
            params.k,
        ))
    }

    /// The API's matches for merged hits, in the same order: passage, public score, shard name.
    pub fn matches(&self, hits: &[ShardHit]) -> Result<Vec<Match>, ShardError> {
        hits.iter()
            .map(|hit| {
                let shard = self.shards.get(hit.shard).ok_or_else(|| {
                    ShardError::Inconsistent(format!("no shard number {}", hit.shard))
                })?;
                Ok(Match::new(
                    shard.passage(hit.ord)?,
                    self.manifest.metric.score(hit.distance),
                    &self.manifest.shards[hit.shard].name,
                ))
            })
            .collect()
    }
}

/// Blob `i` checked against manifest entry `i` (size, and the payload checksum its header
/// records), then verified (the one hash of its payload) and opened, then its description
/// compared with the manifest's.
fn open_shard(manifest: &Manifest, i: usize, bytes: &[u8]) -> Result<Shard, OpenError> {
    manifest.verify_shard(i, bytes)?;
    let entry = &manifest.shards[i];
    let shard = Shard::from_bytes(bytes).map_err(|source| OpenError::Shard {
        shard: entry.name.clone(),
        source,
    })?;
    let meta = shard.meta();
    if meta.dims != manifest.dims
        || meta.metric != manifest.metric
        || meta.quant != manifest.quant
        || meta.count != entry.count
    {
        return Err(OpenError::Mismatch {
            shard: entry.name.clone(),
            meta,
        });
    }
    Ok(shard)
}
