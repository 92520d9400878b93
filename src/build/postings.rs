//! The lexical side of a build: index-wide document frequencies over the whole corpus, then each
//! shard's term dictionary and postings in its graph order (see [`crate::shard::format::LexicalData`]).

use std::collections::{BTreeMap, HashMap};

use super::corpus::Corpus;
use crate::lexical::{indexed_text, term_counts, CorpusStats};
use crate::shard::format::{LexicalData, StringColumn};

/// What every shard's postings share: how many passages of the whole corpus hold each term.
pub struct CorpusTerms {
    doc_freq: HashMap<String, u32>,
    pub stats: CorpusStats,
    /// Each row's distinct terms (its postings).
    pub distinct: Vec<u32>,
}

impl CorpusTerms {
    /// Terms in the whole corpus and their mean length in bytes.
    pub fn dictionary(&self) -> (usize, f64) {
        let bytes: usize = self.doc_freq.keys().map(String::len).sum();
        let terms = self.doc_freq.len();
        (terms, bytes as f64 / terms.max(1) as f64)
    }
}

/// Counts every passage's distinct terms once.
pub fn corpus_terms(corpus: &Corpus) -> CorpusTerms {
    let mut doc_freq: HashMap<String, u32> = HashMap::new();
    let mut stats = CorpusStats::default();
    let mut distinct = Vec::with_capacity(corpus.len());
    for (text, metadata) in corpus.texts.iter().zip(&corpus.metadata) {
        let (counts, length) = term_counts(&indexed_text(text, metadata));
        stats.docs += 1;
        stats.tokens += u64::from(length);
        distinct.push(counts.len() as u32);
        for (term, _) in counts {
            *doc_freq.entry(term).or_insert(0) += 1;
        }
    }
    CorpusTerms {
        doc_freq,
        stats,
        distinct,
    }
}

/// The postings of the passages `ordered` (corpus rows, in the shard's ordinal order).
pub fn shard_postings(corpus: &Corpus, ordered: &[usize], terms: &CorpusTerms) -> LexicalData {
    let mut by_term: BTreeMap<String, Vec<(u32, u8)>> = BTreeMap::new();
    let mut doc_tokens = Vec::with_capacity(ordered.len());
    for (ord, &row) in ordered.iter().enumerate() {
        let (counts, length) =
            term_counts(&indexed_text(&corpus.texts[row], &corpus.metadata[row]));
        doc_tokens.push(length);
        for (term, count) in counts {
            let count = u8::try_from(count).unwrap_or(u8::MAX);
            by_term.entry(term).or_default().push((ord as u32, count));
        }
    }
    let mut data = LexicalData {
        index_docs: terms.stats.docs,
        index_tokens: terms.stats.tokens,
        terms: StringColumn::new(),
        doc_freq: Vec::with_capacity(by_term.len()),
        starts: Vec::with_capacity(by_term.len() + 1),
        docs: Vec::new(),
        counts: Vec::new(),
        doc_tokens,
    };
    data.starts.push(0);
    // BTreeMap's order is `str` order, which is byte order: the dictionary is binary-searchable.
    for (term, postings) in by_term {
        data.terms.push(&term);
        data.doc_freq.push(
            terms
                .doc_freq
                .get(&term)
                .copied()
                .unwrap_or(postings.len() as u32),
        );
        for (ord, count) in postings {
            data.docs.push(ord);
            data.counts.push(count);
        }
        data.starts.push(data.docs.len() as u32);
    }
    data
}
