//! The one retrieval engine. Every caller — [`LocalIndex`](crate::index::LocalIndex) (`shardc`,
//! the tests, the wasm probe), the worker in both serving modes and the `ShardHost` object —
//! runs the same steps: [`plan`] which shards a query visits, [`gather`] their answers with at
//! most [`MAX_IN_FLIGHT`] visits at once within a deadline, merge the exact top-k of each ranking
//! (vector, lexical) over the shards that answered ([`Gathered::merge`]), resolve the winners to
//! passages ([`Gathered::resolve`]), and [`rank`] them with the live-written passages, fusing the
//! two rankings of a hybrid search.
//!
//! Where a shard's answer comes from is a [`Shards`] backend: shards already open in this
//! process ([`InMemory`]), shards loaded through the isolate's byte-bounded
//! [`Store`](crate::store::Store) ([`Loaded`]), or shard hosts asked over a transport
//! ([`Remote`], over [`ShardHosts`]). Time is a [`Clock`](crate::clock::Clock), so deadlines, slow
//! shards and partial answers are tested natively with virtual time.

mod gather;
mod in_memory;
mod loaded;
mod plan;
mod rank;
mod remote;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::lexical::QueryTerms;
use crate::shard::{
    DocId, Exclusions, Filter, Hit, LexicalHits, Passage, SearchParams, Shard, ShardError,
};
use crate::timing::Timing;

pub use gather::{failure_reasons, gather, AllFailed, Gathered, Merged, Resolved, Unfinished};
pub use in_memory::{InMemory, NoDeadline};
pub use loaded::Loaded;
pub use plan::{plan, Visit, MAX_IN_FLIGHT};
pub use rank::{rank, Ranking, SearchMode, StageRank, Stages, Written, FUSION_DEPTH};
pub use remote::{HostAnswer, HostMatch, HostQuery, Remote, ShardHosts};

/// What every visited shard is asked: the query vector and/or the query's terms (a hybrid
/// search has both, and each shard answers both rankings in one visit), `k`, the filter and the
/// ids live writes replaced or deleted (never returned from a shard). The beam width is the
/// visit's ([`Visit::ef`]).
#[derive(Debug, Clone)]
pub struct ShardQuery {
    /// `None` for a lexical search.
    pub vector: Option<Vec<f32>>,
    /// `None` for a vector search.
    pub lexical: Option<QueryTerms>,
    pub k: usize,
    pub filter: Option<Filter>,
    pub exclude: Option<Arc<Exclusions>>,
}

impl ShardQuery {
    pub fn params(&self, ef: usize) -> SearchParams {
        SearchParams {
            k: self.k,
            ef,
            filter: self.filter.clone(),
            exclude: self.exclude.clone(),
        }
    }

    /// Both rankings of one shard: what every backend's visit runs once it holds the shard.
    pub fn search(&self, shard: &Shard, ef: usize) -> Result<StageHits, ShardError> {
        let params = self.params(ef);
        let vector = match &self.vector {
            Some(vector) => shard.search(vector, &params)?,
            None => Vec::new(),
        };
        let lexical = match &self.lexical {
            Some(terms) => shard.search_lexical(terms, &params)?,
            None => LexicalHits::default(),
        };
        Ok(StageHits {
            vector,
            lexical: lexical.hits,
            doc_freq: lexical.doc_freq,
        })
    }
}

/// One shard's rankings, each best first (a lexical hit's distance is its negated BM25 score),
/// and the index-wide document frequency of each query term.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StageHits {
    pub vector: Vec<Hit>,
    pub lexical: Vec<Hit>,
    pub doc_freq: Vec<u32>,
}

impl StageHits {
    /// Every ordinal either ranking lists, once.
    pub fn ords(&self) -> Vec<u32> {
        let mut ords: Vec<u32> = self
            .vector
            .iter()
            .chain(&self.lexical)
            .map(|h| h.ord)
            .collect();
        ords.sort_unstable();
        ords.dedup();
        ords
    }
}

/// One shard's answer: its rankings, what resolves their hits to passages once the merge has
/// chosen the winners, and what getting it cost.
pub struct Answered<H> {
    pub hits: StageHits,
    pub held: H,
    pub timing: Timing,
}

/// Where the answers of planned visits come from.
pub trait Shards {
    /// What a shard's answer keeps for resolving its hits after the merge.
    type Held;
    /// A visit in progress. `Unpin` so the engine can keep visits in a set without boxing them
    /// again; a backend whose visits do I/O boxes them (and makes them `'static`, so that a load
    /// still running at the deadline can finish in the background).
    type Pending: Future<Output = Result<Answered<Self::Held>, String>> + Unpin;
    fn visit(&self, visit: Visit, query: &std::rc::Rc<ShardQuery>) -> Self::Pending;
    /// The passage of a merged hit of shard `hit.shard`, from what its answer kept.
    fn resolve(&self, held: &Self::Held, hit: &crate::shard::ShardHit) -> Result<Match, String>;
}

/// A found passage as the API shows it.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Match {
    pub id: Value,
    pub score: f32,
    pub text: String,
    pub metadata: Map<String, Value>,
    pub shard: String,
    /// Where the passage ranked in each ranking a lexical or hybrid search fused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stages: Option<Stages>,
}

impl Match {
    /// A found passage: the id as the corpus gave it, the metric's public score.
    pub fn new(passage: Passage, score: f32, shard: &str) -> Match {
        let id = match passage.id {
            DocId::Int(id) => Value::from(id),
            DocId::Str(id) => Value::String(id),
        };
        Match {
            id,
            score,
            text: passage.text,
            metadata: passage.metadata,
            shard: shard.to_string(),
            stages: None,
        }
    }
}

/// The shard this API names for a passage found among the live writes.
pub const WRITES_SHARD: &str = "writes";

/// A shard's hits with their passages read at once, so that the shard itself can be released
/// right after its search (what [`Loaded`] and [`Remote`] keep).
pub type Passages = Vec<(u32, Match)>;

fn passage_of(passages: &Passages, ord: u32) -> Result<Match, String> {
    passages
        .iter()
        .find(|(o, _)| *o == ord)
        .map(|(_, m)| m.clone())
        .ok_or_else(|| format!("the shard's answer has no passage {ord}"))
}
