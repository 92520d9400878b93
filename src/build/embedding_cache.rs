//! The embedding cache kept beside an ingested index (`DIR/.embed-cache`): vectors keyed by
//! the model's name and a hash of the chunk's text (xxh3-128 of `model \0 text`), so a rebuild
//! embeds only the chunks whose text (or model) changed. Written atomically (temp + rename);
//! a missing, truncated or foreign file reads as an empty cache.
//!
//! Format: the magic `EDGERAG-EMBED-CACHE-1\n`, then entries of a 16-byte little-endian key,
//! a u32 dimension count and that many little-endian f32 values.

use std::collections::HashMap;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::output::write_atomic;
use super::BuildError;

pub const CACHE_FILE: &str = ".embed-cache";
const MAGIC: &[u8] = b"EDGERAG-EMBED-CACHE-1\n";

/// The key of `text` embedded by `model`.
pub fn cache_key(model: &str, text: &str) -> u128 {
    let mut bytes = Vec::with_capacity(model.len() + 1 + text.len());
    bytes.extend_from_slice(model.as_bytes());
    bytes.push(0);
    bytes.extend_from_slice(text.as_bytes());
    xxhash_rust::xxh3::xxh3_128(&bytes)
}

#[derive(Debug, Default)]
pub struct EmbeddingCache {
    entries: HashMap<u128, Vec<f32>>,
}

impl EmbeddingCache {
    /// The cache in `dir`, empty if there is none or it cannot be read.
    pub fn load(dir: &Path) -> EmbeddingCache {
        let Ok(bytes) = std::fs::read(dir.join(CACHE_FILE)) else {
            return EmbeddingCache::default();
        };
        EmbeddingCache::decode(&bytes).unwrap_or_default()
    }

    fn decode(bytes: &[u8]) -> Option<EmbeddingCache> {
        let mut rest = bytes.strip_prefix(MAGIC)?;
        let mut entries = HashMap::new();
        while !rest.is_empty() {
            let key = u128::from_le_bytes(rest.get(..16)?.try_into().ok()?);
            let dims = u32::from_le_bytes(rest.get(16..20)?.try_into().ok()?) as usize;
            let values = rest.get(20..20 + dims * 4)?;
            let vector = values
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            entries.insert(key, vector);
            rest = &rest[20 + dims * 4..];
        }
        Some(EmbeddingCache { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, key: u128) -> Option<&Vec<f32>> {
        self.entries.get(&key)
    }

    pub fn insert(&mut self, key: u128, vector: Vec<f32>) {
        self.entries.insert(key, vector);
    }

    /// Keeps only the entries whose keys are in `keep` (the chunks of the latest run).
    pub fn retain(&mut self, keep: &std::collections::HashSet<u128>) {
        self.entries.retain(|key, _| keep.contains(key));
    }

    /// Replaces `dir/.embed-cache` with this cache.
    pub fn save(&self, dir: &Path) -> Result<(), BuildError> {
        std::fs::create_dir_all(dir).map_err(BuildError::io(dir))?;
        // Sorted, so the same cache gives the same bytes.
        let mut keys: Vec<&u128> = self.entries.keys().collect();
        keys.sort();
        write_atomic(dir, CACHE_FILE, |file| {
            let mut out = BufWriter::new(file);
            out.write_all(MAGIC)?;
            for key in keys {
                let vector = &self.entries[key];
                out.write_all(&key.to_le_bytes())?;
                out.write_all(&(vector.len() as u32).to_le_bytes())?;
                for x in vector {
                    out.write_all(&x.to_le_bytes())?;
                }
            }
            out.flush()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_round_trips_and_keys_depend_on_model_and_text() {
        let dir = tempfile::tempdir().unwrap();
        assert!(EmbeddingCache::load(dir.path()).is_empty());
        let mut cache = EmbeddingCache::default();
        let (a, b) = (cache_key("m", "text"), cache_key("m2", "text"));
        assert_ne!(a, b);
        assert_ne!(a, cache_key("m", "text2"));
        assert_eq!(a, cache_key("m", "text"));
        cache.insert(a, vec![1.0, -2.5]);
        cache.insert(b, vec![0.5; 3]);
        cache.save(dir.path()).unwrap();
        let loaded = EmbeddingCache::load(dir.path());
        assert_eq!(loaded.len(), 2);
        assert_eq!(loaded.get(a), Some(&vec![1.0, -2.5]));
        assert_eq!(loaded.get(b), Some(&vec![0.5; 3]));
        // Only the cache file is left, no temp file.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_truncated_or_foreign_cache_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = EmbeddingCache::default();
        cache.insert(1, vec![1.0; 8]);
        cache.save(dir.path()).unwrap();
        let path = dir.path().join(CACHE_FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        assert!(EmbeddingCache::load(dir.path()).is_empty());
        std::fs::write(&path, b"something else").unwrap();
        assert!(EmbeddingCache::load(dir.path()).is_empty());
    }
}
