//! Shards searched by shard hosts (SERVING_MODE=durable: one `ShardHost` object per shard
//! replica): the wire types of a host's question and answer, the [`ShardHosts`] transport the
//! entry worker asks them through, the [`Remote`] backend over it, and [`HostQuery::answer`],
//! what a host does with a question (the engine again, over its own [`Loaded`] store).
use std::rc::Rc;

use futures::future::LocalBoxFuture;
use serde::{Deserialize, Serialize};

use super::{
    failure_reasons, gather, passage_of, Answered, Loaded, Match, Passages, ShardQuery, Shards,
    StageHits, Visit,
};
use crate::clock::Clock;
use crate::lexical::QueryTerms;
use crate::shard::{DocId, Exclusions, Filter, Hit, ShardHit};
use crate::store::Source;
use crate::timing::Timing;

/// What the entry worker asks a host: one shard of a version the entry worker pinned.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostQuery {
    pub index: String,
    pub version: String,
    pub shard: usize,
    /// The region whose replica the host serves (and whose bucket it reads first).
    pub region: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<Vec<f32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<QueryTerms>,
    pub k: usize,
    pub ef: usize,
    /// Serialised as its JSON object; a host parses and validates it on arrival.
    pub filter: Option<Filter>,
    /// Ids live writes replaced or deleted, and the generation naming that set.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<DocId>,
    #[serde(default)]
    pub exclude_generation: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostMatch {
    pub ord: u32,
    pub distance: f32,
    pub found: Match,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostAnswer {
    /// The vector ranking.
    pub matches: Vec<HostMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lexical: Vec<HostMatch>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub doc_freq: Vec<u32>,
    pub timing: Timing,
}

/// How the entry worker reaches shard hosts (Durable Object stubs in the worker).
#[allow(async_fn_in_trait)]
pub trait ShardHosts: Clone + 'static {
    async fn ask(&self, query: HostQuery) -> Result<HostAnswer, String>;
}

/// Shards of one pinned version, each searched by its host in `region`.
pub struct Remote<H> {
    pub hosts: H,
    pub index: String,
    pub version: String,
    pub region: String,
}

impl<H: ShardHosts> Shards for Remote<H> {
    type Held = Passages;
    type Pending = LocalBoxFuture<'static, Result<Answered<Passages>, String>>;

    fn visit(&self, visit: Visit, query: &Rc<ShardQuery>) -> Self::Pending {
        let hosts = self.hosts.clone();
        let question = HostQuery {
            index: self.index.clone(),
            version: self.version.clone(),
            shard: visit.shard,
            region: self.region.clone(),
            vector: query.vector.clone(),
            lexical: query.lexical.clone(),
            k: query.k,
            ef: visit.ef,
            filter: query.filter.clone(),
            exclude: query.exclude.as_ref().map(|e| e.ids()).unwrap_or_default(),
            exclude_generation: query.exclude.as_ref().map_or(0, |e| e.generation),
        };
        Box::pin(async move {
            let answer = hosts.ask(question).await?;
            let ranking = |matches: &[HostMatch]| {
                matches
                    .iter()
                    .map(|m| Hit {
                        ord: m.ord,
                        distance: m.distance,
                    })
                    .collect()
            };
            let hits = StageHits {
                vector: ranking(&answer.matches),
                lexical: ranking(&answer.lexical),
                doc_freq: answer.doc_freq,
            };
            let held = answer
                .matches
                .into_iter()
                .chain(answer.lexical)
                .map(|m| (m.ord, m.found))
                .collect();
            Ok(Answered {
                hits,
                held,
                timing: answer.timing,
            })
        })
    }

    fn resolve(&self, held: &Passages, hit: &ShardHit) -> Result<Match, String> {
        passage_of(held, hit.ord)
    }
}

impl HostQuery {
    /// A host's answer: the engine over the host's own store, planned as the entry worker said
    /// (this one shard, this beam), with no deadline of its own (the entry worker has one).
    pub async fn answer<S: Source, C: Clock>(
        self,
        shards: &Loaded<S, C>,
    ) -> Result<HostAnswer, String> {
        let query = Rc::new(ShardQuery {
            vector: self.vector,
            lexical: self.lexical,
            k: self.k,
            filter: self.filter,
            exclude: (!self.exclude.is_empty()).then(|| {
                std::sync::Arc::new(Exclusions::new(self.exclude_generation, &self.exclude))
            }),
        });
        let visit = Visit {
            shard: self.shard,
            ef: self.ef,
        };
        let gathered = gather(shards, &shards.clock, vec![visit], &query, f64::INFINITY).await;
        let timing = gathered.timing;
        let merged = gathered
            .merge(self.k)
            .map_err(|failed| failure_reasons(&failed))?;
        let ranking = |top: Vec<(ShardHit, &Passages)>| {
            top.into_iter()
                .map(|(hit, held)| {
                    Ok(HostMatch {
                        ord: hit.ord,
                        distance: hit.distance,
                        found: passage_of(held, hit.ord)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()
        };
        let matches = ranking(merged.vector)?;
        let lexical = ranking(merged.lexical)?;
        Ok(HostAnswer {
            matches,
            lexical,
            doc_freq: merged.doc_freq,
            timing,
        })
    }
}
