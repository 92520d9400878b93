//! Lays one shard's documents out in graph order, quantises their vectors and indexes their
//! texts' terms into a [`ShardData`].

use std::collections::BTreeSet;

use super::corpus::Corpus;
use super::error::BuildError;
use super::graph::ExportedGraph;
use super::postings::{shard_postings, CorpusTerms};
use crate::shard::format::{
    MetadataColumn, ShardData, StoredIds, StoredVectors, StringColumn, NO_VALUE,
};
use crate::shard::{canonical_json, quant, DocId, Metric, Quant};

/// Largest finite half-precision value.
const F16_MAX: f32 = 65504.0;

pub struct ShardNames<'a> {
    pub index: &'a str,
    pub shard: &'a str,
}

/// `rows[graph.order[j]]` is the corpus row of node j.
pub fn assemble_shard(
    corpus: &Corpus,
    rows: &[usize],
    graph: &ExportedGraph,
    names: ShardNames<'_>,
    metric: Metric,
    quant: Quant,
    terms: &CorpusTerms,
) -> Result<ShardData, BuildError> {
    let ordered: Vec<usize> = graph.order.iter().map(|&position| rows[position]).collect();
    Ok(ShardData {
        index_name: names.index.to_owned(),
        shard_name: names.shard.to_owned(),
        dims: corpus.dims as u32,
        metric: metric.code(),
        count: ordered.len() as u32,
        degree: graph.degree as u32,
        layer0: graph.layer0.clone(),
        upper_layers: graph.upper_layers.clone(),
        vectors: quantise(corpus, &ordered, quant)?,
        texts: string_column(ordered.iter().map(|&row| corpus.texts[row].as_str())),
        ids: stored_ids(corpus, &ordered),
        metadata: metadata_columns(corpus, &ordered),
        lexical: shard_postings(corpus, &ordered, terms),
    })
}

fn quantise(corpus: &Corpus, ordered: &[usize], quant: Quant) -> Result<StoredVectors, BuildError> {
    match quant {
        Quant::F16 => {
            let mut bits = Vec::with_capacity(ordered.len() * corpus.dims);
            for &row in ordered {
                let vector = corpus.vector(row);
                if vector.iter().any(|x| x.abs() > F16_MAX) {
                    return Err(BuildError::Invalid(format!(
                        "vector of passage {} exceeds the f16 range; use --quant i8",
                        corpus.ids[row]
                    )));
                }
                quant::encode_f16(vector, &mut bits);
            }
            Ok(StoredVectors::F16 { bits })
        }
        Quant::I8 => {
            let mut codes = Vec::with_capacity(ordered.len() * corpus.dims);
            let scales = ordered
                .iter()
                .map(|&row| quant::encode_i8(corpus.vector(row), &mut codes))
                .collect();
            Ok(StoredVectors::I8 { codes, scales })
        }
    }
}

fn string_column<'a>(strings: impl Iterator<Item = &'a str>) -> StringColumn {
    let mut column = StringColumn::new();
    strings.for_each(|s| column.push(s));
    column
}

fn stored_ids(corpus: &Corpus, ordered: &[usize]) -> StoredIds {
    // The corpus reader guarantees ids are all integers or all strings.
    let ints: Option<Vec<i64>> = ordered
        .iter()
        .map(|&row| match &corpus.ids[row] {
            DocId::Int(id) => Some(*id),
            DocId::Str(_) => None,
        })
        .collect();
    match ints {
        Some(ints) => StoredIds::Int(ints),
        None => StoredIds::Str(string_column(ordered.iter().map(
            |&row| match &corpus.ids[row] {
                DocId::Str(id) => id.as_str(),
                DocId::Int(_) => "",
            },
        ))),
    }
}

fn metadata_columns(corpus: &Corpus, ordered: &[usize]) -> Vec<MetadataColumn> {
    let fields: BTreeSet<&String> = ordered
        .iter()
        .flat_map(|&row| corpus.metadata[row].keys())
        .collect();
    fields
        .into_iter()
        .map(|field| {
            let per_doc: Vec<Option<String>> = ordered
                .iter()
                .map(|&row| corpus.metadata[row].get(field).map(canonical_json))
                .collect();
            let distinct: Vec<&String> = per_doc
                .iter()
                .flatten()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let mut values = StringColumn::new();
            distinct.iter().for_each(|value| values.push(value));
            let doc_values = per_doc
                .iter()
                .map(|value| match value {
                    Some(value) => distinct
                        .binary_search(&value)
                        .map_or(NO_VALUE, |id| id as u32),
                    None => NO_VALUE,
                })
                .collect();
            MetadataColumn {
                field: field.clone(),
                values,
                doc_values,
            }
        })
        .collect()
}
