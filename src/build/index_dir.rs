//! Opens a built index directory: reads the manifest, verifies each shard file against it, opens
//! the shards, and searches them all with an exact merge (what `shardc` and the tests use).

use std::path::{Path, PathBuf};

use super::error::BuildError;
use crate::manifest::{Manifest, MANIFEST_FILE};
use crate::shard::{merge_top_k, Hit, SearchParams, Shard, ShardError, ShardHit};

pub struct IndexDir {
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub shards: Vec<Shard>,
}

impl IndexDir {
    pub fn open(dir: &Path) -> Result<IndexDir, BuildError> {
        let manifest_path = dir.join(MANIFEST_FILE);
        let json = std::fs::read(&manifest_path).map_err(BuildError::io(&manifest_path))?;
        let manifest = Manifest::from_json(&json).map_err(|source| BuildError::Manifest {
            path: manifest_path.clone(),
            source,
        })?;
        let mut shards = Vec::with_capacity(manifest.shards.len());
        for (index, entry) in manifest.shards.iter().enumerate() {
            let path = dir.join(&entry.file);
            let bytes = std::fs::read(&path).map_err(BuildError::io(&path))?;
            manifest
                .verify_shard(index, &bytes)
                .map_err(|source| BuildError::Manifest {
                    path: path.clone(),
                    source,
                })?;
            let shard = Shard::from_bytes(&bytes).map_err(|source| BuildError::Shard {
                shard: entry.name.clone(),
                source,
            })?;
            let meta = shard.meta();
            if meta.dims != manifest.dims
                || meta.metric != manifest.metric
                || meta.quant != manifest.quant
                || meta.count != entry.count
            {
                return Err(BuildError::Invalid(format!(
                    "shard {} does not match the manifest ({meta:?})",
                    entry.name
                )));
            }
            shards.push(shard);
        }
        Ok(IndexDir {
            dir: dir.to_path_buf(),
            manifest,
            shards,
        })
    }

    /// Searches every shard and merges exactly.
    pub fn search(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<ShardHit>, ShardError> {
        self.search_shards(query, params, self.shards.len())
    }

    /// Searches the `probe` shards whose centroids are nearest to the query and merges exactly.
    pub fn search_shards(
        &self,
        query: &[f32],
        params: &SearchParams,
        probe: usize,
    ) -> Result<Vec<ShardHit>, ShardError> {
        let chosen = self.manifest.nearest_shards(query, probe);
        self.merge(&chosen, params.k, |shard| shard.search(query, params))
    }

    /// Brute force over every shard's stored vectors.
    pub fn search_exact(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<ShardHit>, ShardError> {
        let all: Vec<usize> = (0..self.shards.len()).collect();
        self.merge(&all, params.k, |shard| {
            shard.search_exact(query, params.k, params.filter.as_ref())
        })
    }

    fn merge(
        &self,
        chosen: &[usize],
        k: usize,
        search: impl Fn(&Shard) -> Result<Vec<Hit>, ShardError>,
    ) -> Result<Vec<ShardHit>, ShardError> {
        let per_shard = chosen
            .iter()
            .map(|&i| Ok((i, search(&self.shards[i])?)))
            .collect::<Result<Vec<_>, ShardError>>()?;
        Ok(merge_top_k(
            per_shard.iter().map(|(i, hits)| (*i, hits.as_slice())),
            k,
        ))
    }
}
