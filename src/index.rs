//! An index held whole in this process: its manifest and every shard open, verified against each
//! other, and searched by the one retrieval engine ([`crate::retrieve`]) over the
//! [`InMemory`] backend. `shardc`, the integration tests and the wasm search probe use it; the worker
//! runs the same engine over shards it loads through the store or asks of shard hosts.
use std::rc::Rc;

use futures::FutureExt;

use crate::manifest::{Manifest, ManifestError};
use crate::retrieve::{self, Gathered, InMemory, Match, NoDeadline, Ranking, ShardQuery, Written};
use crate::shard::{merge_top_k, SearchParams, Shard, ShardError, ShardHit};

/// Why a set of blobs does not open as the index its manifest describes.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// Wrong number of blobs, or a blob whose size or checksum is not the manifest's.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("shard {shard}: {source}")]
    Shard { shard: String, source: ShardError },
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

    /// Searches the shards [`retrieve::plan`] chooses (all, or the `probe` whose centroids are
    /// nearest to the query), each with its beam width, and merges exactly: what the worker does.
    pub fn search_shards(
        &self,
        query: &[f32],
        params: &SearchParams,
        probe: Option<usize>,
    ) -> Result<Vec<ShardHit>, ShardError> {
        let query = ShardQuery {
            vector: Some(query.to_vec()),
            lexical: None,
            k: params.k,
            filter: params.filter.clone(),
            exclude: params.exclude.clone(),
        };
        let gathered = self.gather(&query, params.ef, probe)?;
        let merged = gathered
            .merge(params.k * self.manifest.copies())
            .map_err(failed)?;
        if !merged.failed.is_empty() {
            return Err(failed(merged.failed));
        }
        self.distinct(merged.vector.into_iter().map(|(hit, ())| hit), params.k)
    }

    /// The first `k` hits of distinct passages: with boundary replicas a passage can be found in
    /// each shard that stores it, at the same distance.
    fn distinct(
        &self,
        hits: impl IntoIterator<Item = ShardHit>,
        k: usize,
    ) -> Result<Vec<ShardHit>, ShardError> {
        if self.manifest.copies() == 1 {
            return Ok(hits.into_iter().take(k).collect());
        }
        let mut seen = std::collections::HashSet::new();
        let mut distinct = Vec::with_capacity(k);
        for hit in hits {
            if distinct.len() == k {
                break;
            }
            let shard = self.shards.get(hit.shard).ok_or_else(|| {
                ShardError::Inconsistent(format!("a hit names shard {}", hit.shard))
            })?;
            if seen.insert(shard.id(hit.ord)?) {
                distinct.push(hit);
            }
        }
        Ok(distinct)
    }

    /// The worker's answer to `query` (vector, lexical or both, as `ranking.mode` says): the
    /// engine's merged rankings resolved to passages and ranked, fused for a hybrid search.
    pub fn answer(
        &self,
        query: &ShardQuery,
        ef: usize,
        probe: Option<usize>,
        ranking: Ranking,
    ) -> Result<Vec<Match>, ShardError> {
        let gathered = self.gather(query, ef, probe)?;
        let resolved = gathered
            .resolve(
                &self.in_memory(),
                &self.manifest,
                ranking.depth.max(query.k),
            )
            .map_err(|all| ShardError::Inconsistent(all.to_string()))?;
        if !resolved.failed.is_empty() {
            let reasons: Vec<String> = resolved
                .failed
                .iter()
                .map(|(shard, why)| format!("{shard}: {why}"))
                .collect();
            return Err(ShardError::Inconsistent(reasons.join("; ")));
        }
        Ok(retrieve::rank(
            resolved,
            Written::default(),
            self.manifest.metric,
            ranking,
        ))
    }

    /// Every planned visit of `query`, answered at once (held shards never make the engine wait).
    fn gather(
        &self,
        query: &ShardQuery,
        ef: usize,
        probe: Option<usize>,
    ) -> Result<Gathered<InMemory<'_>>, ShardError> {
        let vector = query.vector.as_deref().unwrap_or(&[]);
        let visits = retrieve::plan(&self.manifest, vector, probe, &query.params(ef));
        let query = Rc::new(query.clone());
        retrieve::gather(
            &self.in_memory(),
            &NoDeadline,
            visits,
            &query,
            f64::INFINITY,
        )
        .now_or_never()
        .ok_or_else(|| ShardError::Inconsistent("an in-memory search waited".into()))
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
            .map(|shard| shard.search_exact(query, params))
            .collect::<Result<Vec<_>, ShardError>>()?;
        let merged = merge_top_k(
            per_shard.iter().map(Vec::as_slice).enumerate(),
            params.k * self.manifest.copies(),
        );
        self.distinct(merged, params.k)
    }

    /// The API's matches for merged hits, in the same order: passage, public score, shard name.
    pub fn matches(&self, hits: &[ShardHit]) -> Result<Vec<Match>, ShardError> {
        let shards = self.in_memory();
        hits.iter()
            .map(|hit| {
                retrieve::Shards::resolve(&shards, &(), hit).map_err(ShardError::Inconsistent)
            })
            .collect()
    }

    fn in_memory(&self) -> InMemory<'_> {
        InMemory {
            manifest: &self.manifest,
            shards: &self.shards,
        }
    }
}

/// A shard search that failed: in memory there is no deadline or replica to excuse it.
fn failed(failures: Vec<(usize, String)>) -> ShardError {
    ShardError::Inconsistent(retrieve::failure_reasons(&failures))
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
    manifest.check_shard_meta(i, &shard.meta())?;
    Ok(shard)
}
