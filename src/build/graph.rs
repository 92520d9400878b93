//! Builds one shard's HNSW graph with instant-distance and exports its layers as flat arrays.
//!
//! instant-distance keeps its layers private, so the graph is serialised with bincode and read
//! back into [`HnswMirror`], a struct with the same field order and types (instant-distance 0.6).

use serde::{Deserialize, Serialize};
use serde_big_array::BigArray;

use super::error::BuildError;
use crate::shard::format::{LAYER0_STRIDE, UPPER_STRIDE};
use crate::shard::Metric;

/// A graph point: one f32 vector (normalised already for cosine) and the metric to compare by.
#[derive(Clone, Serialize, Deserialize)]
struct GraphPoint {
    values: Vec<f32>,
    metric: Metric,
}

impl instant_distance::Point for GraphPoint {
    fn distance(&self, other: &Self) -> f32 {
        self.metric.distance_f32(&self.values, &other.values)
    }
}

/// Same shape as `instant_distance::Hnsw<GraphPoint>` for bincode (which encodes by position).
#[derive(Deserialize)]
struct HnswMirror {
    _ef_search: usize,
    _points: Vec<GraphPoint>,
    zero: Vec<ZeroNodeMirror>,
    layers: Vec<Vec<[u32; UPPER_STRIDE]>>,
}

#[derive(Deserialize)]
struct ZeroNodeMirror(#[serde(with = "BigArray")] [u32; LAYER0_STRIDE]);

/// A graph in shard layout: node j = the j-th entry of `order`.
pub struct ExportedGraph {
    /// `order[j]` = position (in the input) of the point that is node j.
    pub order: Vec<usize>,
    pub layer0: Vec<u32>,
    pub upper_layers: Vec<Vec<u32>>,
}

pub struct GraphParams {
    pub ef_construction: usize,
    pub seed: u64,
}

/// Builds the graph over `vectors` (`rows × dims`).
pub fn build_graph(
    vectors: &[f32],
    dims: usize,
    metric: Metric,
    params: &GraphParams,
    progress: indicatif::ProgressBar,
) -> Result<ExportedGraph, BuildError> {
    let points: Vec<GraphPoint> = vectors
        .chunks_exact(dims)
        .map(|v| GraphPoint {
            values: v.to_vec(),
            metric,
        })
        .collect();
    let rows = points.len();
    let (hnsw, internal_ids) = instant_distance::Builder::default()
        .ef_construction(params.ef_construction)
        .seed(params.seed)
        .progress(progress)
        .build_hnsw(points);
    let encoded = bincode::serialize(&hnsw).map_err(|e| BuildError::GraphExport(e.to_string()))?;
    drop(hnsw);
    let mirror: HnswMirror =
        bincode::deserialize(&encoded).map_err(|e| BuildError::GraphExport(e.to_string()))?;
    if mirror.zero.len() != rows || internal_ids.len() != rows {
        return Err(BuildError::GraphExport(format!(
            "graph has {} nodes for {rows} points",
            mirror.zero.len()
        )));
    }
    let mut order = vec![usize::MAX; rows];
    for (input, internal) in internal_ids.iter().enumerate() {
        order[internal.into_inner() as usize] = input;
    }
    if order.contains(&usize::MAX) {
        return Err(BuildError::GraphExport(
            "point id mapping is not a permutation".into(),
        ));
    }
    Ok(ExportedGraph {
        order,
        layer0: mirror.zero.iter().flat_map(|node| node.0).collect(),
        upper_layers: mirror
            .layers
            .iter()
            .map(|layer| layer.iter().flatten().copied().collect())
            .collect(),
    })
}
