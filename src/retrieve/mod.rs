//! The one retrieval engine. Every caller — [`LocalIndex`](crate::index::LocalIndex) (`shardc`,
//! the tests, the wasm probe), the worker in both serving modes and the `ShardHost` object —
//! runs the same steps: [`plan`] which shards a query visits, [`gather`] their answers with at
//! most [`MAX_IN_FLIGHT`] visits at once within a deadline, merge the exact top-k over the shards
//! that answered ([`Gathered::merge`]), and resolve the winners to passages
//! ([`Gathered::resolve`]).
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
mod remote;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::shard::{DocId, Exclusions, Filter, Hit, Passage, SearchParams};
use crate::timing::Timing;

pub use gather::{failure_reasons, gather, AllFailed, Gathered, Merged, Resolved, Unfinished};
pub use in_memory::{InMemory, NoDeadline};
pub use loaded::Loaded;
pub use plan::{plan, Visit, MAX_IN_FLIGHT};
pub use remote::{HostAnswer, HostMatch, HostQuery, Remote, ShardHosts};

/// What every visited shard is asked: the query vector, `k`, the filter and the ids live writes
/// replaced or deleted (never returned from a shard). The beam width is the visit's ([`Visit::ef`]).
#[derive(Debug, Clone)]
pub struct ShardQuery {
    pub vector: Vec<f32>,
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
}

/// One shard's answer: its hits (best first), what resolves them to passages once the merge has
/// chosen the winners, and what getting it cost.
pub struct Answered<H> {
    pub hits: Vec<Hit>,
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
        }
    }
}

/// The shard this API names for a passage found among the live writes.
pub const WRITES_SHARD: &str = "writes";

/// The exact top-k over the compiled shards' merged answer (`found`, which already left out the
/// written ids) and the written passages' hits: a write is found exactly where it ranks.
pub fn with_writes(
    found: Vec<(crate::shard::ShardHit, Match)>,
    written: Vec<crate::write::delta::WrittenHit>,
    metric: crate::shard::Metric,
    k: usize,
) -> Vec<Match> {
    let compiled = found.into_iter().map(|(hit, m)| (hit.distance, m));
    let written = written.into_iter().map(|hit| {
        let passage = Passage {
            id: hit.id,
            text: hit.text,
            metadata: hit.metadata,
        };
        (
            hit.distance,
            Match::new(passage, metric.score(hit.distance), WRITES_SHARD),
        )
    });
    let mut all: Vec<(f32, Match)> = compiled.chain(written).collect();
    // Stable: equal distances keep the shards' order, then the writes'.
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.into_iter().take(k).map(|(_, m)| m).collect()
}

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
