//! The engine's last step: each ranking's exact top-k over the compiled shards' merged answer
//! and the live-written passages, then the answer: the vector or the lexical ranking, or both
//! fused by reciprocal rank ([`crate::lexical::fuse`]).

use serde::{Deserialize, Serialize};

use super::{Match, Resolved, WRITES_SHARD};
use crate::lexical::fuse;
use crate::shard::{Metric, Passage};
use crate::write::delta::WrittenHit;

/// Which rankings answer a search.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SearchMode {
    /// Nearest vectors (the query's own, or its text's embedding).
    Vector,
    /// BM25 over the passages' words; needs no embedding.
    Lexical,
    /// Both, fused by reciprocal rank.
    Hybrid,
}

impl SearchMode {
    pub fn uses_vector(self) -> bool {
        self != SearchMode::Lexical
    }

    pub fn uses_lexical(self) -> bool {
        self != SearchMode::Vector
    }
}

/// How deep each ranking of a hybrid search goes before fusion, at least: a passage ranked
/// 12th by vector and 3rd by words should still be fused (measured in README, "Hybrid search").
pub const FUSION_DEPTH: usize = 20;

/// How the answer is ranked: which rankings, `k`, the fusion constant, and how many of each
/// ranking's best are asked of the shards and fused (`depth` ≥ `k`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranking {
    pub mode: SearchMode,
    pub k: usize,
    pub rrf_k: u32,
    pub depth: usize,
}

impl Ranking {
    /// `k` from each ranking, or for a hybrid search [`FUSION_DEPTH`] (or `k` if deeper).
    pub fn new(mode: SearchMode, k: usize, rrf_k: u32) -> Ranking {
        let depth = match mode {
            SearchMode::Hybrid => k.max(FUSION_DEPTH),
            SearchMode::Vector | SearchMode::Lexical => k,
        };
        Ranking {
            mode,
            k,
            rrf_k,
            depth,
        }
    }
}

/// The written passages' hits of each ranking, best first (as `Delta::search` and
/// `Delta::search_lexical` give them).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub vector: Vec<WrittenHit>,
    pub lexical: Vec<WrittenHit>,
}

/// A passage's place in one ranking: its 1-based rank there and that ranking's score
/// (similarity for vector, BM25 for lexical).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StageRank {
    pub rank: usize,
    pub score: f32,
}

/// A lexical, hybrid or reranked match's place in each ranking (absent: not among that
/// ranking's top k); `rerank` is set by [`crate::rerank`], after the engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Stages {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<StageRank>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lexical: Option<StageRank>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rerank: Option<StageRank>,
}

/// The answer's matches, best first: a vector search scores by the metric's similarity, a
/// lexical one by BM25, a hybrid one by fused reciprocal rank (each match then shows its
/// rank and score in both rankings). A written passage ranks exactly where it scores.
pub fn rank(found: Resolved, written: Written, metric: Metric, ranking: Ranking) -> Vec<Match> {
    let (k, depth) = (ranking.k, ranking.depth.max(ranking.k));
    let vector = ranked(found.vector, written.vector, depth, |d| metric.score(d));
    let lexical = ranked(found.lexical, written.lexical, depth, |d| -d);
    match ranking.mode {
        SearchMode::Vector => vector.into_iter().take(k).map(|(_, m)| m).collect(),
        SearchMode::Lexical => lexical
            .into_iter()
            .take(k)
            .enumerate()
            .map(|(at, (score, mut m))| {
                m.stages = Some(Stages {
                    lexical: Some(StageRank {
                        rank: at + 1,
                        score,
                    }),
                    ..Stages::default()
                });
                m
            })
            .collect(),
        SearchMode::Hybrid => {
            let ids = |list: &[(f32, Match)]| list.iter().map(|(_, m)| m.id.clone()).collect();
            let fused = fuse(&[ids(&vector), ids(&lexical)], ranking.rrf_k);
            let stage = |list: &[(f32, Match)], rank: Option<usize>| {
                rank.map(|rank| StageRank {
                    rank,
                    score: list[rank - 1].0,
                })
            };
            fused
                .into_iter()
                .take(k)
                .filter_map(|f| {
                    let (in_vector, in_lexical) = (f.ranks[0], f.ranks[1]);
                    let (_, from) = match in_vector {
                        Some(rank) => &vector[rank - 1],
                        None => &lexical[in_lexical? - 1],
                    };
                    let mut m = from.clone();
                    m.score = f.score;
                    m.stages = Some(Stages {
                        vector: stage(&vector, in_vector),
                        lexical: stage(&lexical, in_lexical),
                        rerank: None,
                    });
                    Some(m)
                })
                .collect()
        }
    }
}

/// One ranking's top k over the compiled hits and the written ones, by distance (stable: equal
/// distances keep the shards' order, then the writes'), each with its public score.
fn ranked(
    compiled: Vec<(crate::shard::ShardHit, Match)>,
    written: Vec<WrittenHit>,
    k: usize,
    score: impl Fn(f32) -> f32,
) -> Vec<(f32, Match)> {
    let compiled = compiled.into_iter().map(|(hit, m)| (hit.distance, m));
    let written = written.into_iter().map(|hit| {
        let passage = Passage {
            id: hit.id,
            text: hit.text,
            metadata: hit.metadata,
        };
        (hit.distance, Match::new(passage, 0.0, WRITES_SHARD))
    });
    let mut all: Vec<(f32, Match)> = compiled.chain(written).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    all.truncate(k);
    all.into_iter()
        .map(|(distance, mut m)| {
            m.score = score(distance);
            (m.score, m)
        })
        .collect()
}
