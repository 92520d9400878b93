//! Lexical retrieval shared by every caller: the tokenizer ([`tokenize`]), BM25 scoring, and
//! reciprocal rank fusion of a vector ranking with a lexical one ([`fuse`]).
//!
//! The postings themselves live in the shard blob (`shard::lexical` searches them in place);
//! live-written passages are scored by the same formula (`write::delta`). Document frequencies
//! are index-wide (counted by `shardc` over the whole corpus and stored with every shard's
//! dictionary), so scores of different shards compare, and a passage scores the same whichever
//! shard holds it.

mod fuse;
mod tokenize;

use serde::{Deserialize, Serialize};

pub use fuse::{fuse, Fused, RRF_K_DEFAULT};
pub use tokenize::{each_term, tokenize, TERM_BYTES_MAX};

/// BM25's term-frequency saturation (Lucene's and tantivy's default).
pub const K1: f32 = 1.2;
/// BM25's document-length normalisation (Lucene's and tantivy's default).
pub const B: f32 = 0.75;
/// Distinct terms a lexical query may have: a query is a question, not a document.
pub const QUERY_TERMS_MAX: usize = 64;

/// The index-wide counts BM25 needs: passages, and tokens over all of them (for the mean length).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct CorpusStats {
    pub docs: u64,
    pub tokens: u64,
}

impl CorpusStats {
    /// Mean passage length in tokens (1 for an empty corpus, so a length ratio stays finite).
    pub fn mean_length(&self) -> f32 {
        if self.docs == 0 || self.tokens == 0 {
            1.0
        } else {
            self.tokens as f32 / self.docs as f32
        }
    }
}

/// Lucene's BM25 inverse document frequency: never negative, however common the term.
/// Computed in f64 so that the two targets' libm logarithms, which may differ in the last bit,
/// almost never differ once rounded to f32.
pub fn idf(docs: u64, doc_freq: u64) -> f32 {
    let (n, df) = (docs as f64, doc_freq.min(docs) as f64);
    (1.0 + (n - df + 0.5) / (df + 0.5)).ln() as f32
}

/// One term's BM25 contribution to a passage of `length` tokens in which it occurs `tf` times.
pub fn term_score(idf: f32, tf: u32, length: u32, mean_length: f32) -> f32 {
    let tf = tf as f32;
    let norm = K1 * (1.0 - B + B * length as f32 / mean_length);
    idf * tf * (K1 + 1.0) / (tf + norm)
}

/// A query's distinct terms in order of first appearance, each with how often it appears
/// (its weight), at most [`QUERY_TERMS_MAX`] of them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryTerms {
    pub terms: Vec<(String, u32)>,
}

impl QueryTerms {
    pub fn parse(text: &str) -> QueryTerms {
        let mut terms: Vec<(String, u32)> = Vec::new();
        each_term(text, |term| {
            if let Some(seen) = terms.iter_mut().find(|(t, _)| t == term) {
                seen.1 += 1;
            } else if terms.len() < QUERY_TERMS_MAX {
                terms.push((term.to_owned(), 1));
            }
        });
        QueryTerms { terms }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }
}

/// Metadata fields whose (string) value is indexed with a passage's text: a section's heading
/// names what the passage is about in the words a question uses, often words its body never
/// repeats (pydocs: section hit@5 of lexical search 37.6% on the text alone).
pub const INDEXED_FIELDS: &[&str] = &["title"];

/// What lexical search indexes of a passage: its text, then each [`INDEXED_FIELDS`] value.
pub fn indexed_text<'a>(
    text: &'a str,
    metadata: &serde_json::Map<String, serde_json::Value>,
) -> std::borrow::Cow<'a, str> {
    let mut fields = INDEXED_FIELDS
        .iter()
        .filter_map(|field| metadata.get(*field).and_then(|v| v.as_str()))
        .peekable();
    if fields.peek().is_none() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut all = text.to_owned();
    for value in fields {
        all.push('\n');
        all.push_str(value);
    }
    std::borrow::Cow::Owned(all)
}

/// Term frequencies of one passage: distinct terms (sorted) with their counts, and its length.
pub fn term_counts(text: &str) -> (Vec<(String, u32)>, u32) {
    let mut all = tokenize(text);
    let length = all.len() as u32;
    all.sort_unstable();
    let mut counts: Vec<(String, u32)> = Vec::new();
    for term in all {
        match counts.last_mut() {
            Some((last, n)) if *last == term => *n += 1,
            _ => counts.push((term, 1)),
        }
    }
    (counts, length)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idf_falls_with_document_frequency_and_stays_positive() {
        assert!(idf(1000, 1) > idf(1000, 10));
        assert!(idf(1000, 10) > idf(1000, 999));
        assert!(idf(1000, 1000) > 0.0);
        assert!(idf(10, 50) > 0.0, "a df above the count is clamped");
    }

    #[test]
    fn term_score_saturates_and_favours_short_passages() {
        let idf = 2.0;
        let once = term_score(idf, 1, 10, 10.0);
        let twice = term_score(idf, 2, 10, 10.0);
        let many = term_score(idf, 100, 10, 10.0);
        assert!(twice > once && many > twice);
        assert!(many < idf * (K1 + 1.0), "bounded by idf·(k1+1)");
        assert!(term_score(idf, 1, 5, 10.0) > term_score(idf, 1, 20, 10.0));
    }

    #[test]
    fn query_terms_are_distinct_with_their_counts() {
        let query = QueryTerms::parse("the os.path and the path");
        assert_eq!(
            query.terms,
            [
                ("the", 2),
                ("os", 1),
                ("path", 2),
                ("os.path", 1),
                ("and", 1)
            ]
            .map(|(t, n)| (t.to_string(), n))
        );
        assert!(QueryTerms::parse(" ,. ").is_empty());
    }

    #[test]
    fn term_counts_are_sorted_and_count_every_token() {
        let (counts, length) = term_counts("b a b a.b");
        assert_eq!(length, 6, "b a b a b a.b");
        assert_eq!(
            counts,
            [("a", 2), ("a.b", 1), ("b", 3)].map(|(t, n)| (t.to_string(), n))
        );
    }
}
