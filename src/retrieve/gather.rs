//! The engine's middle: run the planned visits with bounded concurrency until all have answered
//! or the deadline passes, then merge each ranking exactly over the shards that answered and
//! resolve.
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use futures::future::{select, Either};
use futures::stream::{FuturesUnordered, StreamExt};

use super::{Answered, Match, ShardQuery, Shards, Visit, MAX_IN_FLIGHT};
use crate::clock::Clock;
use crate::manifest::Manifest;
use crate::shard::{merge_top_k, ShardHit};
use crate::timing::Timing;

/// A visit tagged with its shard, so the engine knows whose answer arrived.
pub struct Tagged<F> {
    shard: usize,
    pending: F,
}

impl<F: Future + Unpin> Future for Tagged<F> {
    type Output = (usize, F::Output);
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let shard = self.shard;
        Pin::new(&mut self.pending).poll(cx).map(|out| (shard, out))
    }
}

/// Visits still running when the deadline passed. Driving them to the end (the worker hands them
/// to `waitUntil`) lets a slow shard load land in the store for the next request instead of
/// starting over.
pub type Unfinished<F> = FuturesUnordered<Tagged<F>>;

/// Per-shard outcomes of one query; shards that never reported count as timed out.
pub struct Gathered<S: Shards> {
    planned: Vec<usize>,
    answers: BTreeMap<usize, Answered<S::Held>>,
    failures: BTreeMap<usize, String>,
    /// The slowest load and the summed validation and search of the shards that answered.
    pub timing: Timing,
    pub unfinished: Unfinished<S::Pending>,
}

/// The exact top-k of each ranking over the shards that answered, best first, and the
/// query terms' document frequencies (the same in every shard).
pub struct Merged<'a, H> {
    pub vector: Vec<(ShardHit, &'a H)>,
    pub lexical: Vec<(ShardHit, &'a H)>,
    pub doc_freq: Vec<u32>,
    /// Manifest positions of shards that failed or missed the deadline, with the reason.
    pub failed: Vec<(usize, String)>,
}

/// The merged top-k of each ranking resolved to passages, the query terms' document
/// frequencies, and the shards that did not answer.
#[derive(Default)]
pub struct Resolved {
    pub vector: Vec<(ShardHit, Match)>,
    pub lexical: Vec<(ShardHit, Match)>,
    pub doc_freq: Vec<u32>,
    /// Names of the shards that failed or missed the deadline, with the reason.
    pub failed: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("no shard answered: {}", describe(.0))]
pub struct AllFailed(pub Vec<(String, String)>);

fn describe(failed: &[(String, String)]) -> String {
    failed
        .iter()
        .map(|(shard, why)| format!("{shard}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Runs `visits` through `shards`, at most [`MAX_IN_FLIGHT`] at a time (Workers allow six
/// simultaneous connections per request), until all have answered or `deadline_ms` passes.
pub async fn gather<S: Shards, C: Clock>(
    shards: &S,
    clock: &C,
    visits: Vec<Visit>,
    query: &Rc<ShardQuery>,
    deadline_ms: f64,
) -> Gathered<S> {
    let mut gathered = Gathered {
        planned: visits.iter().map(|visit| visit.shard).collect(),
        answers: BTreeMap::new(),
        failures: BTreeMap::new(),
        timing: Timing::default(),
        unfinished: FuturesUnordered::new(),
    };
    let mut queue = visits.into_iter();
    let mut in_flight = FuturesUnordered::new();
    let mut start_next = |in_flight: &mut Unfinished<S::Pending>| {
        while in_flight.len() < MAX_IN_FLIGHT {
            let Some(visit) = queue.next() else { break };
            in_flight.push(Tagged {
                shard: visit.shard,
                pending: shards.visit(visit, query),
            });
        }
    };
    start_next(&mut in_flight);
    let deadline = async {
        if deadline_ms.is_finite() {
            clock.sleep_ms(deadline_ms).await
        } else {
            futures::future::pending().await
        }
    };
    let mut deadline = std::pin::pin!(deadline);
    while !in_flight.is_empty() {
        match select(in_flight.next(), deadline.as_mut()).await {
            Either::Left((Some((shard, outcome)), _)) => {
                gathered.record(shard, outcome);
                start_next(&mut in_flight);
            }
            Either::Left((None, _)) | Either::Right(_) => break,
        }
    }
    gathered.unfinished = in_flight;
    gathered
}

impl<S: Shards> Gathered<S> {
    fn record(&mut self, shard: usize, outcome: Result<Answered<S::Held>, String>) {
        match outcome {
            Ok(answer) => {
                self.timing.absorb(&answer.timing);
                self.answers.insert(shard, answer);
            }
            Err(why) => {
                self.failures.insert(shard, why);
            }
        }
    }

    /// The exact top-k over the shards that answered; an error only when none did (the shards
    /// and why, as [`failure_reasons`] words them).
    pub fn merge(&self, k: usize) -> Result<Merged<'_, S::Held>, Vec<(usize, String)>> {
        self.merge_without(k, &BTreeMap::new())
    }

    /// [`Gathered::merge`] as if the shards in `dropped` had failed, for the reasons given.
    fn merge_without(
        &self,
        k: usize,
        dropped: &BTreeMap<usize, String>,
    ) -> Result<Merged<'_, S::Held>, Vec<(usize, String)>> {
        let answered = |i: &usize| self.answers.contains_key(i) && !dropped.contains_key(i);
        let failed: Vec<(usize, String)> = self
            .planned
            .iter()
            .filter(|i| !answered(i))
            .map(|&i| {
                let why = dropped.get(&i).or_else(|| self.failures.get(&i)).cloned();
                (i, why.unwrap_or_else(|| "deadline exceeded".into()))
            })
            .collect();
        if !self.planned.iter().any(answered) && !failed.is_empty() {
            return Err(failed);
        }
        let usable: Vec<(usize, &Answered<S::Held>)> = self
            .answers
            .iter()
            .filter(|(i, _)| !dropped.contains_key(i))
            .map(|(&i, a)| (i, a))
            .collect();
        let top = |ranking: fn(&Answered<S::Held>) -> &[crate::shard::Hit]| {
            merge_top_k(usable.iter().map(|&(i, a)| (i, ranking(a))), k)
                .into_iter()
                .filter_map(|hit| self.answers.get(&hit.shard).map(|a| (hit, &a.held)))
                .collect()
        };
        let doc_freq = usable
            .iter()
            .map(|(_, a)| &a.hits.doc_freq)
            .find(|df| !df.is_empty())
            .cloned()
            .unwrap_or_default();
        Ok(Merged {
            vector: top(|a| &a.hits.vector),
            lexical: top(|a| &a.hits.lexical),
            doc_freq,
            failed,
        })
    }

    /// Merges and resolves the winners to passages; shards are named as `manifest` names them.
    /// A shard one of whose winners cannot be read counts as failed, and the merge is made again
    /// without it, so the answer stays the exact top-k of the shards that are reported as answering.
    pub fn resolve(
        &self,
        shards: &S,
        manifest: &Manifest,
        k: usize,
    ) -> Result<Resolved, AllFailed> {
        let name = |i: usize| {
            manifest
                .shards
                .get(i)
                .map_or_else(|| format!("#{i}"), |s| s.name.clone())
        };
        let named = |failed: Vec<(usize, String)>| -> Vec<(String, String)> {
            failed.into_iter().map(|(i, why)| (name(i), why)).collect()
        };
        let mut dropped = BTreeMap::new();
        'merge: loop {
            // With boundary replicas a passage can win in each shard that stores it.
            let copies = manifest.copies();
            let merged = self
                .merge_without(k * copies, &dropped)
                .map_err(|failed| AllFailed(named(failed)))?;
            let mut lists = [Vec::new(), Vec::new()];
            // Each ranking's public score: the metric's similarity, or the BM25 score.
            let scores: [&dyn Fn(f32) -> f32; 2] = [&|d| manifest.metric.score(d), &|d| -d];
            for ((list, top), score) in lists
                .iter_mut()
                .zip([merged.vector, merged.lexical])
                .zip(scores)
            {
                let mut seen = std::collections::HashSet::new();
                for (hit, held) in top {
                    if list.len() == k {
                        break;
                    }
                    match shards.resolve(held, &hit) {
                        Ok(mut m) => {
                            if copies == 1 || seen.insert(m.id.to_string()) {
                                m.score = score(hit.distance);
                                list.push((hit, m))
                            }
                        }
                        Err(why) => {
                            dropped.insert(hit.shard, why);
                            continue 'merge;
                        }
                    }
                }
            }
            let [vector, lexical] = lists;
            return Ok(Resolved {
                vector,
                lexical,
                doc_freq: merged.doc_freq,
                failed: named(merged.failed),
            });
        }
    }
}

/// Failed shards and why, as one line: `shard 2: …; shard 5: …`.
pub fn failure_reasons(failed: &[(usize, String)]) -> String {
    let reasons: Vec<String> = failed
        .iter()
        .map(|(i, why)| format!("shard {i}: {why}"))
        .collect();
    reasons.join("; ")
}
