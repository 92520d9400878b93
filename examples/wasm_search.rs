//! wasm search probe: the library's own in-memory index search ([`LocalIndex`]), compiled to
//! wasm32 and driven from Node by `scripts/wasm-search`, so the same queries can be answered (and
//! timed) natively by `shardc` and in wasm and compared. Empty on native targets.
#![cfg(target_arch = "wasm32")]

use edgerag::index::LocalIndex;
use edgerag::lexical::{QueryTerms, RRF_K_DEFAULT};
use edgerag::manifest::Manifest;
use edgerag::retrieve::{Ranking, SearchMode, ShardQuery};
use edgerag::shard::{SearchParams, ShardHit};
use wasm_bindgen::prelude::*;

/// An index opened from bytes handed over by JS; remembers the last search's merged hits so the
/// timed call (`search`) does no passage resolution or JSON work.
#[wasm_bindgen]
pub struct Probe {
    index: LocalIndex,
    last: Vec<ShardHit>,
}

#[wasm_bindgen]
impl Probe {
    /// `blobs` is every shard file of the manifest concatenated in manifest order.
    #[wasm_bindgen(constructor)]
    pub fn new(manifest_json: &[u8], blobs: &[u8]) -> Result<Probe, JsError> {
        let manifest = Manifest::from_json(manifest_json)?;
        let mut rest = blobs;
        let mut parts = Vec::with_capacity(manifest.shards.len());
        for entry in &manifest.shards {
            let len = usize::try_from(entry.bytes)?;
            if len > rest.len() {
                return Err(JsError::new(&format!(
                    "shard {} needs {len} bytes, {} are left",
                    entry.name,
                    rest.len()
                )));
            }
            let (blob, tail) = rest.split_at(len);
            parts.push(blob);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(JsError::new(&format!(
                "{} bytes after the last shard",
                rest.len()
            )));
        }
        let index = LocalIndex::open(manifest, parts)?;
        Ok(Probe {
            index,
            last: Vec::new(),
        })
    }

    pub fn dims(&self) -> usize {
        self.index.manifest.dims
    }

    /// Searches every shard and merges exactly (as `shardc query` does); returns the hit count.
    pub fn search(&mut self, query: &[f32], k: usize, ef: usize) -> Result<usize, JsError> {
        let params = SearchParams {
            k,
            ef,
            filter: None,
            exclude: None,
        };
        self.last = self.index.search(query, &params)?;
        Ok(self.last.len())
    }

    /// A lexical search of every shard for `text`, merged and resolved, as `shardc query --text T
    /// --json` prints it: `{"matches": [...]}` (timed whole, passages and JSON included).
    pub fn lexical_json(&self, text: &str, k: usize) -> Result<String, JsError> {
        let query = ShardQuery {
            vector: None,
            lexical: Some(QueryTerms::parse(text)),
            k,
            filter: None,
            exclude: None,
        };
        let ranking = Ranking::new(SearchMode::Lexical, k, RRF_K_DEFAULT);
        let matches = self.index.answer(&query, k, None, ranking)?;
        Ok(serde_json::json!({ "matches": matches }).to_string())
    }

    /// The last search's matches as `shardc query --json` prints them: `{"matches": [...]}`.
    pub fn matches_json(&self) -> Result<String, JsError> {
        let matches = self.index.matches(&self.last)?;
        Ok(serde_json::json!({ "matches": matches }).to_string())
    }
}
