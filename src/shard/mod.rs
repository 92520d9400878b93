//! One shard of an index: a validated, immutable blob that is searched and read in place.
//!
//! Submodules: [`format`] (blob layout), [`quant`] (quantisation and distance kernels),
//! `search` (HNSW over the archive), `lexical` (BM25 over the postings), `filter` (the
//! metadata filter language and its evaluation), `merge` (top-k across shards),
//! `metric` (metric and quantisation names), `error` (the one error type).

mod error;
mod exclude;
mod filter;
pub mod format;
mod lexical;
mod merge;
mod metric;
pub mod quant;
mod search;

use std::sync::{Arc, Mutex};

use rkyv::util::AlignedVec;
use serde::{Deserialize, Serialize};

pub use error::ShardError;
pub use exclude::Exclusions;
pub use filter::{
    canonical_json, Filter, FilterError, FILTER_CONDITIONS_MAX, FILTER_DEPTH_MAX,
    FILTER_IN_VALUES_MAX,
};
pub use lexical::LexicalHits;
pub use merge::{merge_top_k, ShardHit};
pub use metric::{Metric, Quant};
pub use search::Hit;

use exclude::MaskCache;
use filter::PassMask;
use format::{
    native_f32, native_u16, native_u32, ArchivedShardData, ArchivedStoredIds,
    ArchivedStoredVectors, NO_VALUE,
};
use search::{Scratch, SearchIndex, VectorView};

/// What a search asks for: `k` results, beam width `ef` (raised to `k` if smaller), optional
/// filter, and ids never to return (passages live writes replaced or deleted).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchParams {
    pub k: usize,
    pub ef: usize,
    pub filter: Option<Filter>,
    pub exclude: Option<Arc<Exclusions>>,
}

/// Descriptive facts about a shard, read from its archive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardMeta {
    pub index_name: String,
    pub shard_name: String,
    pub dims: usize,
    pub metric: Metric,
    pub quant: Quant,
    pub count: u32,
    /// Layer-0 neighbours per node.
    pub degree: u32,
    pub format_version: u32,
}

/// A document id exactly as the corpus gave it: a JSON integer or a string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DocId {
    Int(i64),
    Str(String),
}

impl std::fmt::Display for DocId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DocId::Int(id) => write!(f, "{id}"),
            DocId::Str(id) => f.write_str(id),
        }
    }
}

/// One stored passage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Passage {
    pub id: DocId,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// An open shard. Owns its bytes (16-aligned); checked once when opened (see [`Shard::open`]).
pub struct Shard {
    bytes: AlignedVec<16>,
    meta: ShardMeta,
    /// Reused search memory; a search that finds it busy uses a fresh one instead of waiting.
    scratch: Mutex<Scratch>,
    /// The ordinals left by the last exclusion set searched with.
    excluded: Mutex<MaskCache>,
}

impl Shard {
    /// Copies `bytes` once into an aligned buffer, then verifies and opens it ([`Shard::from_aligned`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Shard, ShardError> {
        let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        Shard::from_aligned(aligned)
    }

    /// Verifies the payload checksum ([`format::verify_payload`]), then opens ([`Shard::open`]).
    pub fn from_aligned(bytes: AlignedVec<16>) -> Result<Shard, ShardError> {
        format::verify_payload(&bytes)?;
        Shard::open(bytes)
    }

    /// Opens bytes whose payload checksum was already verified (when they arrived), without
    /// hashing them again: checks the header and payload length, validates the archive
    /// (bytecheck) and the structure that reading in place relies on, in time independent of the
    /// shard's size ([`format::check_structure`]). Memory-safe for any bytes: corruption the
    /// checksum would have caught is still an error here or when the corrupt part is read,
    /// never a panic; only the answers of such a shard could be wrong.
    pub fn open(bytes: AlignedVec<16>) -> Result<Shard, ShardError> {
        let (header, payload) = format::payload(&bytes)?;
        let data = rkyv::access::<ArchivedShardData, rkyv::rancor::Error>(payload)
            .map_err(|e| ShardError::InvalidArchive(e.to_string()))?;
        format::check_structure(data)?;
        let meta = ShardMeta {
            index_name: data.index_name.as_str().to_owned(),
            shard_name: data.shard_name.as_str().to_owned(),
            dims: data.dims.to_native() as usize,
            metric: Metric::from_code(data.metric)?,
            quant: match data.vectors {
                ArchivedStoredVectors::F16 { .. } => Quant::F16,
                ArchivedStoredVectors::I8 { .. } => Quant::I8,
            },
            count: data.count.to_native(),
            degree: data.degree.to_native(),
            format_version: header.format_version,
        };
        Ok(Shard {
            bytes,
            meta,
            scratch: Mutex::new(Scratch::default()),
            excluded: Mutex::new(MaskCache::default()),
        })
    }

    pub fn meta(&self) -> ShardMeta {
        self.meta.clone()
    }

    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    fn data(&self) -> &ArchivedShardData {
        // SAFETY: the same bytes passed `rkyv::access` (full bytecheck validation) in `open` and
        // are never mutated afterwards.
        unsafe { rkyv::access_unchecked::<ArchivedShardData>(&self.bytes[format::HEADER_LEN..]) }
    }

    fn index(&self) -> SearchIndex<'_> {
        let data = self.data();
        SearchIndex {
            layer0: native_u32(&data.layer0),
            degree: data.degree.to_native() as usize,
            upper_layers: &data.upper_layers,
            vectors: match &data.vectors {
                ArchivedStoredVectors::F16 { bits } => VectorView::F16 {
                    bits: native_u16(bits),
                },
                ArchivedStoredVectors::I8 { codes, scales } => VectorView::I8 {
                    codes,
                    scales: native_f32(scales),
                },
            },
            dims: self.meta.dims,
            metric: self.meta.metric,
            count: self.meta.count as usize,
        }
    }

    /// Checks the query's length and values; normalises it for cosine.
    fn prepare_query(&self, query: &[f32]) -> Result<Vec<f32>, ShardError> {
        if query.len() != self.meta.dims {
            return Err(ShardError::DimensionMismatch {
                expected: self.meta.dims,
                got: query.len(),
            });
        }
        if query.iter().any(|x| !x.is_finite()) {
            return Err(ShardError::NonFiniteQuery);
        }
        let mut prepared = query.to_vec();
        if self.meta.metric == Metric::Cosine {
            let norm = quant::dot_f32(query, query).sqrt();
            if norm == 0.0 {
                return Err(ShardError::ZeroQuery);
            }
            prepared.iter_mut().for_each(|x| *x /= norm);
        }
        Ok(prepared)
    }

    /// The ordinals a search may return: those passing the filter and not excluded.
    fn pass_mask(
        &self,
        filter: Option<&Filter>,
        exclude: Option<&Exclusions>,
    ) -> Result<Option<Arc<PassMask>>, ShardError> {
        let filtered = filter
            .map(|f| PassMask::resolve(f, &self.data().metadata, self.meta.count as usize))
            .transpose()?;
        let kept = match exclude.filter(|e| !e.is_empty()) {
            Some(exclude) => Some(self.kept(exclude)?),
            None => None,
        };
        Ok(match (filtered, kept) {
            (Some(f), Some(k)) => Some(Arc::new(f.and(&k))),
            (Some(f), None) => Some(Arc::new(f)),
            (None, kept) => kept,
        })
    }

    /// The ordinals `exclude` leaves, resolved once per exclusion generation.
    fn kept(&self, exclude: &Exclusions) -> Result<Arc<PassMask>, ShardError> {
        if let Some(mask) = self
            .excluded
            .lock()
            .ok()
            .and_then(|c| c.get(exclude.generation))
        {
            return Ok(mask);
        }
        let mask = Arc::new(exclude.mask(&self.data().ids)?);
        if let Ok(mut cache) = self.excluded.lock() {
            cache.put(exclude.generation, mask.clone());
        }
        Ok(mask)
    }

    /// Approximate nearest passages by the graph, best first; when few documents pass the
    /// filter and exclusions (`search::exact_scan_is_cheaper`), an exact scan of those instead,
    /// which fills `k` where a masked graph search would not. A link to a node that does not
    /// exist (only a corrupt archive has one) is an [`ShardError::Inconsistent`] error.
    pub fn search(&self, query: &[f32], params: &SearchParams) -> Result<Vec<Hit>, ShardError> {
        self.search_with(query, params, true)
    }

    /// [`Shard::search`] by the graph whatever passes: what the switch to an exact scan is
    /// measured against (`tests/filters.rs`).
    pub fn search_graph(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Hit>, ShardError> {
        self.search_with(query, params, false)
    }

    fn search_with(
        &self,
        query: &[f32],
        params: &SearchParams,
        may_scan: bool,
    ) -> Result<Vec<Hit>, ShardError> {
        let query = self.prepare_query(query)?;
        let mask = self.pass_mask(params.filter.as_ref(), params.exclude.as_deref())?;
        let mask = mask.as_deref();
        let index = self.index();
        let ef = params.ef.max(params.k);
        if let Some(mask) =
            mask.filter(|m| may_scan && search::exact_scan_is_cheaper(m.passing, index.count, ef))
        {
            return Ok(index.exact(&query, params.k, Some(mask)));
        }
        match self.scratch.try_lock() {
            Ok(mut scratch) => index.search(&query, params.k, ef, mask, &mut scratch),
            Err(_) => index.search(&query, params.k, ef, mask, &mut Scratch::default()),
        }
    }

    /// The passages scoring best by BM25 for `query`, best first (distance = −score), with the
    /// index-wide document frequency of each query term; `k`, the filter and the excluded ids
    /// as in `params` (its beam width unused). Exact: every posting of every query term is read.
    pub fn search_lexical(
        &self,
        query: &crate::lexical::QueryTerms,
        params: &SearchParams,
    ) -> Result<LexicalHits, ShardError> {
        let mask = self.pass_mask(params.filter.as_ref(), params.exclude.as_deref())?;
        lexical::search(&self.data().lexical, query, params.k, mask.as_deref())
    }

    /// The index-wide corpus counts the shard's BM25 scores use.
    pub fn corpus_stats(&self) -> crate::lexical::CorpusStats {
        let lexical = &self.data().lexical;
        crate::lexical::CorpusStats {
            docs: lexical.index_docs.to_native(),
            tokens: lexical.index_tokens.to_native(),
        }
    }

    /// Exact nearest passages by scanning every stored (quantised) vector, best first; `k`, the
    /// filter and the excluded ids as in `params` (its beam width unused).
    pub fn search_exact(
        &self,
        query: &[f32],
        params: &SearchParams,
    ) -> Result<Vec<Hit>, ShardError> {
        let query = self.prepare_query(query)?;
        let mask = self.pass_mask(params.filter.as_ref(), params.exclude.as_deref())?;
        Ok(self.index().exact(&query, params.k, mask.as_deref()))
    }

    /// The id of the passage with ordinal `ord` (as found in a [`Hit`]).
    pub fn id(&self, ord: u32) -> Result<DocId, ShardError> {
        if ord >= self.meta.count {
            return Err(ShardError::OrdinalOutOfRange {
                ord,
                count: self.meta.count,
            });
        }
        let index = ord as usize;
        Ok(match &self.data().ids {
            ArchivedStoredIds::Int(ids) => DocId::Int(ids[index].to_native()),
            ArchivedStoredIds::Str(ids) => DocId::Str(ids.get(index)?.to_owned()),
        })
    }

    /// The stored vector of ordinal `ord`, decoded to f32 (normalised, for cosine): what a
    /// rebuild of the shard starts from.
    pub fn vector(&self, ord: u32) -> Result<Vec<f32>, ShardError> {
        if ord >= self.meta.count {
            return Err(ShardError::OrdinalOutOfRange {
                ord,
                count: self.meta.count,
            });
        }
        let dims = self.meta.dims;
        let start = ord as usize * dims;
        Ok(match self.index().vectors {
            VectorView::F16 { bits } => bits[start..start + dims]
                .iter()
                .map(|&b| quant::f16_bits_to_f32(b))
                .collect(),
            VectorView::I8 { codes, scales } => {
                let scale = scales[ord as usize];
                codes[start..start + dims]
                    .iter()
                    .map(|&c| f32::from(c) * scale)
                    .collect()
            }
        })
    }

    /// The passage with ordinal `ord`: id, text and metadata.
    pub fn passage(&self, ord: u32) -> Result<Passage, ShardError> {
        let id = self.id(ord)?;
        let data = self.data();
        let index = ord as usize;
        let mut metadata = serde_json::Map::new();
        for column in data.metadata.iter() {
            let value_id = column.doc_values[index].to_native();
            if value_id == NO_VALUE {
                continue;
            }
            let text = column.values.get(value_id as usize)?;
            let value = serde_json::from_str(text).map_err(|e| {
                ShardError::Inconsistent(format!("metadata value {text:?} is not JSON: {e}"))
            })?;
            metadata.insert(column.field.as_str().to_owned(), value);
        }
        Ok(Passage {
            id,
            text: data.texts.get(index)?.to_owned(),
            metadata,
        })
    }
}
