//! Reranking a search's candidates by a cross-encoder origin: the request's `rerank` option,
//! the wire shapes of the reranker pool (TEI's `/rerank` and the Cohere/Jina-style
//! `/v1/rerank`), and the reordering of the matches by the reranker's scores (pure; the call
//! itself goes through the balancer like chat and embeddings).
//!
//! One request body serves both shapes: TEI reads `query` and `texts`, Cohere and Jina read
//! `model`, `query`, `documents` and `top_n`, and each ignores the other's members. An origin's
//! `url` names the API root the path is appended to: `http://tei:8080` for TEI,
//! `https://api.jina.ai/v1` for Jina.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::retrieve::{Match, StageRank, Stages};

/// The path appended to a reranker origin's `url`.
pub const RERANK_PATH: &str = "/rerank";

/// A search's `rerank` option: which reranker model reorders the candidates, and how many of
/// the reordered to keep (default: all the search's `k`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RerankOption {
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_n: Option<usize>,
}

impl RerankOption {
    /// Checks the option against the search's `k`: a model named, `top_n` in 1..=k.
    pub fn check(&self, k: usize) -> Result<(), String> {
        if self.model.trim().is_empty() {
            return Err("`rerank.model` is empty".into());
        }
        match self.top_n {
            Some(n) if n == 0 || n > k => Err(format!(
                "`rerank.top_n` must be in 1..={k} (the search's `k`), got {n}"
            )),
            _ => Ok(()),
        }
    }

    /// How many reranked matches the answer keeps out of `candidates`.
    pub fn keep(&self, candidates: usize) -> usize {
        self.top_n.unwrap_or(candidates).min(candidates)
    }
}

/// The body sent to the reranker pool (both wire shapes at once, see the module doc).
#[derive(Debug, Serialize)]
pub struct RerankRequest<'a> {
    pub model: &'a str,
    pub query: &'a str,
    pub documents: Vec<&'a str>,
    pub texts: Vec<&'a str>,
    pub top_n: usize,
    pub return_documents: bool,
}

impl<'a> RerankRequest<'a> {
    pub fn new(option: &'a RerankOption, query: &'a str, matches: &'a [Match]) -> Self {
        let documents: Vec<&str> = matches.iter().map(|m| m.text.as_str()).collect();
        RerankRequest {
            model: &option.model,
            query,
            texts: documents.clone(),
            documents,
            top_n: option.keep(matches.len()),
            return_documents: false,
        }
    }
}

/// A reranker answer the worker cannot use; the search then keeps its own order.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RerankError {
    #[error("the reranker's answer is not JSON: {0}")]
    NotJson(String),
    #[error("the reranker's answer is neither TEI's [{{index, score}}] nor {{results: [{{index, relevance_score}}]}}")]
    Shape,
    #[error("the reranker scored candidate {index}, but only {candidates} were sent")]
    IndexOutOfRange { index: usize, candidates: usize },
    #[error("the reranker scored candidate {0} twice")]
    Duplicate(usize),
    #[error("the reranker gave candidate {0} a score that is not a finite number")]
    NotFinite(usize),
}

/// The reranker's scores of the candidates, from either wire shape: `(candidate, score)`, best
/// first (ties keep the candidates' order). A reranker may score only its `top_n`.
pub fn parse_scores(body: &[u8], candidates: usize) -> Result<Vec<(usize, f32)>, RerankError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| RerankError::NotJson(e.to_string()))?;
    let (items, score_key) = match &value {
        Value::Array(items) => (items, "score"),
        Value::Object(o) => match o.get("results") {
            Some(Value::Array(items)) => (items, "relevance_score"),
            _ => return Err(RerankError::Shape),
        },
        _ => return Err(RerankError::Shape),
    };
    let mut seen = vec![false; candidates];
    let mut scores = Vec::with_capacity(items.len());
    for item in items {
        let index = item
            .get("index")
            .and_then(Value::as_u64)
            .ok_or(RerankError::Shape)? as usize;
        let score = item
            .get(score_key)
            .and_then(Value::as_f64)
            .ok_or(RerankError::Shape)?;
        let slot = seen
            .get_mut(index)
            .ok_or(RerankError::IndexOutOfRange { index, candidates })?;
        if std::mem::replace(slot, true) {
            return Err(RerankError::Duplicate(index));
        }
        let score = score as f32;
        if !score.is_finite() {
            return Err(RerankError::NotFinite(index));
        }
        scores.push((index, score));
    }
    scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Ok(scores)
}

/// The candidates reordered by the reranker's scores, the first `keep`: each match's score
/// becomes the reranker's and its stages gain `rerank` (a vector match, which had none, gets
/// its vector rank and score too). Candidates the reranker did not score are left out.
pub fn reorder(candidates: Vec<Match>, scores: &[(usize, f32)], keep: usize) -> Vec<Match> {
    let mut slots: Vec<Option<Match>> = candidates.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(keep.min(scores.len()));
    for (rank, &(index, score)) in scores.iter().take(keep).enumerate() {
        let Some(mut m) = slots.get_mut(index).and_then(Option::take) else {
            continue;
        };
        let before = StageRank {
            rank: index + 1,
            score: m.score,
        };
        let stages = m.stages.get_or_insert(Stages {
            vector: Some(before),
            ..Stages::default()
        });
        stages.rerank = Some(StageRank {
            rank: rank + 1,
            score,
        });
        m.score = score;
        out.push(m);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Map;

    fn candidates(n: usize) -> Vec<Match> {
        (0..n)
            .map(|i| Match {
                id: Value::from(i),
                score: 1.0 - i as f32 / 10.0,
                text: format!("passage {i}"),
                metadata: Map::new(),
                shard: "shard-000".into(),
                stages: None,
            })
            .collect()
    }

    #[test]
    fn both_wire_shapes_give_scores_best_first() {
        let tei = br#"[{"index":0,"score":0.1},{"index":2,"score":0.9},{"index":1,"score":0.5}]"#;
        assert_eq!(
            parse_scores(tei, 3).unwrap(),
            vec![(2, 0.9), (1, 0.5), (0, 0.1)]
        );
        let cohere = br#"{"id":"x","results":[{"index":1,"relevance_score":0.7},{"index":0,"relevance_score":0.7}],"meta":{}}"#;
        assert_eq!(parse_scores(cohere, 3).unwrap(), vec![(0, 0.7), (1, 0.7)]);
    }

    #[test]
    fn unusable_answers_are_errors_naming_why() {
        assert!(matches!(
            parse_scores(b"<html>", 2),
            Err(RerankError::NotJson(_))
        ));
        assert_eq!(parse_scores(br#"{"data":[]}"#, 2), Err(RerankError::Shape));
        assert_eq!(
            parse_scores(br#"[{"index":0}]"#, 2),
            Err(RerankError::Shape)
        );
        assert_eq!(
            parse_scores(br#"[{"index":5,"score":1}]"#, 2),
            Err(RerankError::IndexOutOfRange {
                index: 5,
                candidates: 2
            })
        );
        assert_eq!(
            parse_scores(br#"[{"index":1,"score":1},{"index":1,"score":2}]"#, 2),
            Err(RerankError::Duplicate(1))
        );
        assert_eq!(
            parse_scores(br#"[{"index":1,"score":1e300}]"#, 2),
            Err(RerankError::NotFinite(1))
        );
    }

    #[test]
    fn reorder_keeps_top_n_with_each_stage_rank() {
        let out = reorder(candidates(4), &[(2, 3.0), (0, 2.0), (3, 1.0), (1, 0.5)], 2);
        assert_eq!(
            out.iter().map(|m| m.id.clone()).collect::<Vec<_>>(),
            vec![Value::from(2), Value::from(0)]
        );
        let stages = out[0].stages.unwrap();
        assert_eq!(
            stages.rerank,
            Some(StageRank {
                rank: 1,
                score: 3.0
            })
        );
        assert_eq!(
            stages.vector,
            Some(StageRank {
                rank: 3,
                score: 0.8
            })
        );
        assert_eq!(out[0].score, 3.0);
    }

    #[test]
    fn the_option_must_fit_the_search() {
        let option = |top_n| RerankOption {
            model: "m".into(),
            top_n,
        };
        assert!(option(None).check(10).is_ok());
        assert!(option(Some(10)).check(10).is_ok());
        assert!(option(Some(0)).check(10).unwrap_err().contains("1..=10"));
        assert!(option(Some(11)).check(10).is_err());
        assert!(RerankOption {
            model: " ".into(),
            top_n: None
        }
        .check(10)
        .is_err());
        assert_eq!(option(Some(3)).keep(2), 2);
    }
}
