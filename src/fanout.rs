//! Fan-out without I/O: which shards a query visits, and the exact merge of the answers that
//! arrived before the deadline into one result that names every shard that did not answer.
use std::collections::BTreeMap;

use crate::manifest::Manifest;
use crate::shard::{merge_top_k, Hit, ShardHit};

/// Workers allow six simultaneous open connections per request; more subrequests would queue
/// anyway, so the fan-out keeps at most this many in flight.
pub const MAX_IN_FLIGHT: usize = 6;

/// Shards to visit, as manifest positions: all of them, or the `probe` with the nearest
/// centroids (a probe beyond the shard count means all).
pub fn plan(manifest: &Manifest, query: &[f32], probe: Option<usize>) -> Vec<usize> {
    match probe {
        Some(n) if n < manifest.shards.len() => manifest.nearest_shards(query, n),
        _ => (0..manifest.shards.len()).collect(),
    }
}

/// One shard's answer: its hits (best first) and whatever resolves a hit to a passage
/// (the shard itself when searched locally, the passages a shard host sent back otherwise).
pub struct Answer<P> {
    pub hits: Vec<Hit>,
    pub passages: P,
}

/// Collects per-shard outcomes as they arrive; shards never reported count as timed out.
pub struct Gather<P> {
    planned: Vec<usize>,
    answers: BTreeMap<usize, Answer<P>>,
    failures: BTreeMap<usize, String>,
}

/// The merged result: the exact top-k over the shards that answered.
pub struct Merged<'a, P> {
    pub top: Vec<(ShardHit, &'a P)>,
    /// Manifest positions of shards that failed or missed the deadline, with the reason.
    pub failed: Vec<(usize, String)>,
}

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("no shard answered: {}", describe(.0))]
pub struct AllFailed(pub Vec<(usize, String)>);

fn describe(failed: &[(usize, String)]) -> String {
    failed
        .iter()
        .map(|(i, why)| format!("shard {i}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl<P> Gather<P> {
    pub fn new(planned: Vec<usize>) -> Self {
        Gather {
            planned,
            answers: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }

    pub fn record(&mut self, shard: usize, outcome: Result<Answer<P>, String>) {
        match outcome {
            Ok(answer) => self.answers.insert(shard, answer).map(|_| ()),
            Err(why) => self.failures.insert(shard, why).map(|_| ()),
        };
    }

    pub fn merge(&self, k: usize) -> Result<Merged<'_, P>, AllFailed> {
        let failed: Vec<(usize, String)> = self
            .planned
            .iter()
            .filter(|i| !self.answers.contains_key(i))
            .map(|&i| {
                (
                    i,
                    self.failures
                        .get(&i)
                        .cloned()
                        .unwrap_or_else(|| "deadline exceeded".into()),
                )
            })
            .collect();
        if self.answers.is_empty() && !failed.is_empty() {
            return Err(AllFailed(failed));
        }
        let top = merge_top_k(self.answers.iter().map(|(&i, a)| (i, a.hits.as_slice())), k)
            .into_iter()
            .filter_map(|hit| self.answers.get(&hit.shard).map(|a| (hit, &a.passages)))
            .collect();
        Ok(Merged { top, failed })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(list: &[(u32, f32)]) -> Vec<Hit> {
        list.iter()
            .map(|&(ord, distance)| Hit { ord, distance })
            .collect()
    }

    #[test]
    fn merges_answers_exactly_and_names_missing_shards() {
        let mut g = Gather::new(vec![0, 1, 2, 3]);
        g.record(
            2,
            Ok(Answer {
                hits: hits(&[(7, 0.2), (8, 0.9)]),
                passages: "c",
            }),
        );
        g.record(
            0,
            Ok(Answer {
                hits: hits(&[(1, 0.1), (2, 0.5)]),
                passages: "a",
            }),
        );
        g.record(1, Err("checksum mismatch".into()));
        let merged = g.merge(3).unwrap();
        let got: Vec<(usize, u32, &str)> = merged
            .top
            .iter()
            .map(|(h, p)| (h.shard, h.ord, **p))
            .collect();
        assert_eq!(got, vec![(0, 1, "a"), (2, 7, "c"), (0, 2, "a")]);
        assert_eq!(
            merged.failed,
            vec![
                (1, "checksum mismatch".into()),
                (3, "deadline exceeded".into())
            ]
        );
    }

    #[test]
    fn nothing_answered_is_an_error() {
        let mut g: Gather<()> = Gather::new(vec![0, 1]);
        g.record(0, Err("gone".into()));
        assert_eq!(g.merge(10).err().unwrap().0.len(), 2);
        assert!(Gather::<()>::new(vec![]).merge(10).unwrap().top.is_empty());
    }
}
