//! BM25 over the shard's postings, in place: term-at-a-time accumulation into one score per
//! document, then the top k of the documents the pass mask allows. A hit's distance is the
//! negated score, so lexical hits merge across shards exactly like vector hits.

use std::collections::BinaryHeap;

use super::error::ShardError;
use super::filter::PassMask;
use super::format::{inconsistent, native_u32, ArchivedLexicalData};
use super::search::Hit;
use crate::lexical::{idf, term_score, CorpusStats, QueryTerms};

/// A lexical search's hits (best first) and each query term's index-wide document frequency
/// (0 for a term the index lacks), which scores live-written passages on the same scale.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LexicalHits {
    pub hits: Vec<Hit>,
    pub doc_freq: Vec<u32>,
}

pub(crate) fn search(
    lexical: &ArchivedLexicalData,
    query: &QueryTerms,
    k: usize,
    mask: Option<&PassMask>,
) -> Result<LexicalHits, ShardError> {
    let stats = CorpusStats {
        docs: lexical.index_docs.to_native(),
        tokens: lexical.index_tokens.to_native(),
    };
    let mean_length = stats.mean_length();
    let doc_tokens = native_u32(&lexical.doc_tokens);
    let (starts, docs, doc_freqs) = (
        native_u32(&lexical.starts),
        native_u32(&lexical.docs),
        native_u32(&lexical.doc_freq),
    );
    let mut scores = vec![0f32; doc_tokens.len()];
    let mut touched: Vec<u32> = Vec::new();
    let mut doc_freq = Vec::with_capacity(query.terms.len());
    for (term, weight) in &query.terms {
        let Some(t) = lexical.terms.binary_search(term)? else {
            doc_freq.push(0);
            continue;
        };
        let df = doc_freqs[t];
        doc_freq.push(df);
        let (Some(&start), Some(&end)) = (starts.get(t), starts.get(t + 1)) else {
            return Err(inconsistent(format!("term {t} has no postings range")));
        };
        let range = start as usize..end as usize;
        let (Some(ords), Some(counts)) = (docs.get(range.clone()), lexical.counts.get(range))
        else {
            return Err(inconsistent(format!(
                "term {t}'s postings are out of range"
            )));
        };
        let weight = idf(stats.docs, u64::from(df)) * *weight as f32;
        for (&ord, &count) in ords.iter().zip(counts) {
            let Some(score) = scores.get_mut(ord as usize) else {
                return Err(inconsistent(format!("posting of document {ord}")));
            };
            if *score == 0.0 {
                touched.push(ord);
            }
            *score += term_score(
                weight,
                u32::from(count),
                doc_tokens[ord as usize],
                mean_length,
            );
        }
    }
    // The k best of the touched documents the mask allows: a max-heap of the worst kept.
    let mut best: BinaryHeap<Hit> = BinaryHeap::with_capacity(k + 1);
    for ord in touched {
        if mask.is_some_and(|m| !m.allows(ord)) {
            continue;
        }
        let hit = Hit {
            ord,
            distance: -scores[ord as usize],
        };
        if best.len() < k {
            best.push(hit);
        } else if best.peek().is_some_and(|worst| hit < *worst) {
            best.pop();
            best.push(hit);
        }
    }
    Ok(LexicalHits {
        hits: best.into_sorted_vec(),
        doc_freq,
    })
}
