//! Shard sizing from a byte budget: an upper estimate of a shard blob's bytes from the rows it
//! holds, so that `shardc build` can pick the shard count that keeps every shard within
//! `--max-shard-bytes` before building any graph.

use super::corpus::Corpus;
use super::postings::CorpusTerms;
use crate::shard::format::UPPER_STRIDE;
use crate::shard::{canonical_json, DocId, Quant};

/// Default `--max-shard-bytes`: half a shard host's default shard budget (`CACHE_BYTES`,
/// 72 MiB, inside the 128 MB isolate), so that a host holds the shard it serves and can load
/// the next version's beside it.
pub const DEFAULT_MAX_SHARD_BYTES: u64 = 36 << 20;

/// Fixed bytes per blob beyond its rows: header, archive framing, names, lexical counts.
const BLOB_OVERHEAD: u64 = 4096;

/// Each row's estimated share of a blob and what a shard's term dictionary may cost.
pub struct RowSizes<'a> {
    rows: Vec<u64>,
    /// Per distinct term a row has: the dictionary entry it may add (mean term length plus the
    /// offset, document frequency and postings start), if no other row of its shard has it.
    term_entry: f64,
    /// Terms in the whole corpus: no shard's dictionary holds more.
    corpus_terms: u64,
    /// Each row's distinct terms, as the corpus' term counts hold them.
    distinct: &'a [u32],
}

impl<'a> RowSizes<'a> {
    /// Every term of a row costs a posting (ordinal u32, count u8); a row also stores its
    /// vector, its layer-0 links, its share of the upper layers (about one node in 16 has a
    /// row of [`UPPER_STRIDE`] links, summed over layers), its text and id with their offsets,
    /// and a value slot per metadata field of the corpus plus its value's bytes.
    pub fn measure(
        corpus: &Corpus,
        quant: Quant,
        degree: usize,
        terms: &'a CorpusTerms,
    ) -> RowSizes<'a> {
        let dims = corpus.dims as u64;
        let vector = match quant {
            Quant::F16 => 2 * dims,
            Quant::I8 => dims + 4,
        };
        let links = 4 * degree as u64 + (4 * UPPER_STRIDE as u64).div_ceil(16);
        let fields: std::collections::BTreeSet<&String> =
            corpus.metadata.iter().flat_map(|m| m.keys()).collect();
        let slots = 4 * fields.len() as u64;
        let rows = (0..corpus.len())
            .map(|row| {
                let id = match &corpus.ids[row] {
                    DocId::Int(_) => 8,
                    DocId::Str(id) => id.len() as u64 + 4,
                };
                let values: u64 = corpus.metadata[row]
                    .values()
                    .map(|v| canonical_json(v).len() as u64 + 4)
                    .sum();
                let postings = 5 * u64::from(terms.distinct[row]) + 4;
                vector + links + corpus.texts[row].len() as u64 + 4 + id + slots + values + postings
            })
            .collect();
        let (corpus_terms, mean_term) = terms.dictionary();
        RowSizes {
            rows,
            term_entry: mean_term + 12.0,
            corpus_terms: corpus_terms as u64,
            distinct: &terms.distinct,
        }
    }

    /// Upper estimate of the blob of a shard holding `rows`.
    pub fn shard_bytes(&self, rows: &[usize]) -> u64 {
        let own: u64 = rows.iter().map(|&row| self.rows[row]).sum();
        let terms: u64 = rows.iter().map(|&row| u64::from(self.distinct[row])).sum();
        let dictionary = (terms.min(self.corpus_terms) as f64 * self.term_entry) as u64;
        own + dictionary + BLOB_OVERHEAD
    }

    /// The fewest shards whose even split of the corpus is estimated to fit `max_bytes` each.
    pub fn shards_for(&self, max_bytes: u64) -> usize {
        let all: Vec<usize> = (0..self.rows.len()).collect();
        let total = self.shard_bytes(&all);
        (total.div_ceil(max_bytes.max(1)) as usize).clamp(1, self.rows.len().max(1))
    }
}
