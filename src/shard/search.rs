//! HNSW search over the archived graph, in place: greedy descent (ef = 1) through the upper layers
//! from entry point 0, then a beam search with width ef on layer 0; optionally restricted by a
//! filter pass mask; the exact scan that replaces it when few documents pass. Neighbour ordinals are
//! checked as they are read (one compare per link, never mispredicted on a sound shard), so that
//! opening a shard need not scan every link.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rkyv::rend::u32_le;
use rkyv::vec::ArchivedVec;

use super::error::ShardError;
use super::filter::PassMask;
use super::format::{inconsistent, native_u32, NO_NEIGHBOUR, UPPER_STRIDE};
use super::metric::Metric;
use super::quant;

/// One search result within a shard: the document ordinal and its internal distance (smaller = closer).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    pub ord: u32,
    pub distance: f32,
}

impl Eq for Hit {}
impl Ord for Hit {
    fn cmp(&self, other: &Self) -> Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.ord.cmp(&other.ord))
    }
}
impl PartialOrd for Hit {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Stored vectors as native slices.
pub(crate) enum VectorView<'a> {
    F16 { bits: &'a [u16] },
    I8 { codes: &'a [i8], scales: &'a [f32] },
}

/// What a search reads: graph layers and vectors of one shard.
pub(crate) struct SearchIndex<'a> {
    /// `count × degree` ordinals.
    pub(crate) layer0: &'a [u32],
    pub(crate) degree: usize,
    pub(crate) upper_layers: &'a [ArchivedVec<u32_le>],
    pub(crate) vectors: VectorView<'a>,
    pub(crate) dims: usize,
    pub(crate) metric: Metric,
    pub(crate) count: usize,
}

impl SearchIndex<'_> {
    /// Internal distance from the (prepared) query to document `ord`.
    fn distance(&self, query: &[f32], ord: u32) -> f32 {
        let start = ord as usize * self.dims;
        let end = start + self.dims;
        match self.vectors {
            VectorView::F16 { bits } => {
                let vector = &bits[start..end];
                match self.metric {
                    Metric::Cosine => 1.0 - quant::dot_f16(query, vector),
                    Metric::Dot => -quant::dot_f16(query, vector),
                    Metric::L2 => quant::l2sq_f16(query, vector),
                }
            }
            VectorView::I8 { codes, scales } => {
                let (vector, scale) = (&codes[start..end], scales[ord as usize]);
                match self.metric {
                    Metric::Cosine => 1.0 - scale * quant::dot_i8(query, vector),
                    Metric::Dot => -scale * quant::dot_i8(query, vector),
                    Metric::L2 => quant::l2sq_i8(query, vector, scale),
                }
            }
        }
    }

    /// Starts loading the links of node `ord` (below `count`).
    #[inline(always)]
    fn prefetch_links(&self, ord: u32) {
        let row = self.layer0[ord as usize * self.degree..].as_ptr();
        prefetch(row.cast(), self.degree * size_of::<u32>());
    }

    /// Starts loading the vector of document `ord` (below `count`).
    #[inline(always)]
    fn prefetch_vector(&self, ord: u32) {
        let start = ord as usize * self.dims;
        let (vector, bytes) = match self.vectors {
            VectorView::F16 { bits } => (bits[start..].as_ptr().cast(), self.dims * 2),
            VectorView::I8 { codes, .. } => (codes[start..].as_ptr().cast(), self.dims),
        };
        prefetch(vector, bytes);
    }

    /// The `k` closest documents (that pass `mask`), best first, by the graph (whatever the
    /// mask passes: [`exact_scan_is_cheaper`] is the caller's decision).
    pub(crate) fn search(
        &self,
        query: &[f32],
        k: usize,
        ef: usize,
        mask: Option<&PassMask>,
        scratch: &mut Scratch,
    ) -> Result<Vec<Hit>, ShardError> {
        if k == 0 || self.count == 0 || mask.is_some_and(|m| m.passing == 0) {
            return Ok(Vec::new());
        }
        let ef = ef.max(k);
        let entry = self.descend(query)?;
        self.beam_layer0(query, entry, ef, mask, scratch)?;
        let mut hits: Vec<Hit> = scratch.results.drain().collect();
        hits.sort_unstable();
        hits.truncate(k);
        Ok(hits)
    }

    /// Brute force over all (passing) documents: the reference the graph search is measured against.
    pub(crate) fn exact(&self, query: &[f32], k: usize, mask: Option<&PassMask>) -> Vec<Hit> {
        if k == 0 {
            return Vec::new();
        }
        let mut best: BinaryHeap<Hit> = BinaryHeap::with_capacity(k + 1);
        for ord in 0..self.count as u32 {
            if mask.is_some_and(|m| !m.allows(ord)) {
                continue;
            }
            let hit = Hit {
                ord,
                distance: self.distance(query, ord),
            };
            if best.len() < k {
                best.push(hit);
            } else if best.peek().is_some_and(|worst| hit < *worst) {
                best.pop();
                best.push(hit);
            }
        }
        best.into_sorted_vec()
    }

    /// Greedy walk (ef = 1) from entry point 0 down to layer 1; returns the layer-0 entry.
    /// Every node of a layer is a node of the layers below (the open checks the layer sizes).
    fn descend(&self, query: &[f32]) -> Result<Hit, ShardError> {
        let mut current = Hit {
            ord: 0,
            distance: self.distance(query, 0),
        };
        for (index, layer) in self.upper_layers.iter().enumerate().rev() {
            let layer = native_u32(layer);
            let nodes = layer.len() / UPPER_STRIDE;
            loop {
                let start = current.ord as usize * UPPER_STRIDE;
                let mut moved = false;
                let links = &layer[start..start + UPPER_STRIDE];
                if PREFETCH {
                    for &neighbour in links.iter().take_while(|&&n| n != NO_NEIGHBOUR) {
                        if (neighbour as usize) < nodes {
                            self.prefetch_vector(neighbour);
                        }
                    }
                }
                for &neighbour in links.iter().take_while(|&&n| n != NO_NEIGHBOUR) {
                    check_link(index + 1, current.ord, neighbour, nodes)?;
                    let candidate = Hit {
                        ord: neighbour,
                        distance: self.distance(query, neighbour),
                    };
                    if candidate < current {
                        current = candidate;
                        moved = true;
                    }
                }
                if !moved {
                    break;
                }
            }
        }
        Ok(current)
    }

    /// Beam search on layer 0; leaves up to `ef` passing results in `scratch.results`.
    /// Non-passing nodes are still expanded so the beam can cross them to reach passing ones.
    fn beam_layer0(
        &self,
        query: &[f32],
        entry: Hit,
        ef: usize,
        mask: Option<&PassMask>,
        scratch: &mut Scratch,
    ) -> Result<(), ShardError> {
        scratch.begin(self.count);
        // Sized once, so a shard's first search does not grow the heaps step by step.
        scratch.results.reserve(ef + 1);
        scratch.candidates.reserve(ef * 8);
        let allows = |ord: u32| mask.is_none_or(|m| m.allows(ord));
        scratch.first_visit(entry.ord);
        scratch.candidates.push(Reverse(entry));
        if allows(entry.ord) {
            scratch.results.push(entry);
        }
        while let Some(Reverse(closest)) = scratch.candidates.pop() {
            let full = scratch.results.len() >= ef;
            if full && scratch.results.peek().is_some_and(|worst| closest > *worst) {
                break;
            }
            let start = closest.ord as usize * self.degree;
            let links = &self.layer0[start..start + self.degree];
            if PREFETCH {
                for &neighbour in links.iter().take_while(|&&n| n != NO_NEIGHBOUR) {
                    if (neighbour as usize) < self.count && !scratch.visited(neighbour) {
                        self.prefetch_vector(neighbour);
                    }
                }
            }
            for &neighbour in links.iter().take_while(|&&n| n != NO_NEIGHBOUR) {
                check_link(0, closest.ord, neighbour, self.count)?;
                if !scratch.first_visit(neighbour) {
                    continue;
                }
                let hit = Hit {
                    ord: neighbour,
                    distance: self.distance(query, neighbour),
                };
                let full = scratch.results.len() >= ef;
                if full && scratch.results.peek().is_some_and(|worst| hit > *worst) {
                    continue;
                }
                if PREFETCH {
                    // Read when it is expanded, if it is.
                    self.prefetch_links(neighbour);
                }
                scratch.candidates.push(Reverse(hit));
                if allows(neighbour) {
                    scratch.results.push(hit);
                    if scratch.results.len() > ef {
                        scratch.results.pop();
                    }
                }
            }
        }
        Ok(())
    }
}

/// Whether the search prefetches: before computing the distances of a node's neighbours it asks
/// for all of their vectors (and for a queued candidate's links), so the memory reads overlap
/// instead of stalling one by one. On a shard whose bytes just arrived (cold caches) this nearly
/// halves the first query, and warm queries gain about a fifth. wasm has no prefetch
/// instruction: there these passes are compiled out.
const PREFETCH: bool = cfg!(target_arch = "x86_64");

/// A hint to load `bytes` bytes from `start` into cache; nothing without [`PREFETCH`].
#[inline(always)]
fn prefetch(start: *const i8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..bytes).step_by(64) {
        // SAFETY: a prefetch is a hint that never faults, whatever the address.
        unsafe {
            std::arch::x86_64::_mm_prefetch(
                start.wrapping_add(offset),
                std::arch::x86_64::_MM_HINT_T0,
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (start, bytes);
}

/// A link is an ordinal of a node of its layer (NO_NEIGHBOUR ends a list before this is asked).
#[inline(always)]
fn check_link(layer: usize, from: u32, to: u32, nodes: usize) -> Result<(), ShardError> {
    if (to as usize) < nodes {
        Ok(())
    } else {
        Err(bad_link(layer, from, to, nodes))
    }
}

#[cold]
fn bad_link(layer: usize, from: u32, to: u32, nodes: usize) -> ShardError {
    inconsistent(format!(
        "layer {layer}: node {from} links to node {to}, the layer has {nodes}"
    ))
}

/// A filtered beam search visits roughly ef / selectivity nodes; scanning the passing documents
/// costs `passing`. Scan when at most 1 in 6 pass (measured on pydocs, README "Filtered search":
/// the scan is faster from 12.5% passing down, the graph from 25% up), or a handful of beams'
/// worth.
pub(crate) fn exact_scan_is_cheaper(passing: usize, count: usize, ef: usize) -> bool {
    passing * 6 <= count || passing <= ef * 4
}

/// Reusable per-search memory: a generation-stamped visited set (one byte per document, so it
/// stays in L1/L2 cache: cleared once every 255 searches) and the two heaps.
#[derive(Default)]
pub(crate) struct Scratch {
    stamps: Vec<u8>,
    generation: u8,
    candidates: BinaryHeap<Reverse<Hit>>,
    results: BinaryHeap<Hit>,
}

impl Scratch {
    /// Starts a new search: bumping the generation clears the visited set without touching it.
    fn begin(&mut self, count: usize) {
        if self.stamps.len() != count {
            self.stamps = vec![0; count];
            self.generation = 0;
        }
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.stamps.fill(0);
            self.generation = 1;
        }
        self.candidates.clear();
        self.results.clear();
    }

    fn visited(&self, ord: u32) -> bool {
        self.stamps[ord as usize] == self.generation
    }

    /// Marks `ord` visited; false if it already was in this search.
    fn first_visit(&mut self, ord: u32) -> bool {
        let stamp = &mut self.stamps[ord as usize];
        let first = *stamp != self.generation;
        *stamp = self.generation;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::Scratch;

    #[test]
    fn visited_set_is_empty_at_every_search_across_generation_wraps() {
        let mut scratch = Scratch::default();
        for search in 0..1000u32 {
            scratch.begin(8);
            let ord = search % 8;
            assert!(!scratch.visited(ord), "search {search}");
            assert!(scratch.first_visit(ord));
            assert!(!scratch.first_visit(ord));
            assert!(scratch.visited(ord));
        }
    }
}
