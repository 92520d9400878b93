//! Balanced k-means: splits the corpus into shards of (almost) equal size whose members are close
//! to the shard's centroid, so a router can send a query to the few nearest shards; and boundary
//! replication, which copies the rows near a border into the shard across it.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rand::seq::index::sample;
use rand::SeedableRng;

use super::corpus::Corpus;
use crate::shard::Metric;

const ITERATIONS: usize = 12;

pub struct Partition {
    /// Corpus rows of each shard, ascending.
    pub members: Vec<Vec<usize>>,
    /// Mean of each shard's vectors (normalised for cosine).
    pub centroids: Vec<Vec<f32>>,
}

/// Capacity-constrained k-means: every assignment round gives shard `s` exactly its target size
/// (n / shards, the first n % shards get one more), taking (row, shard) pairs closest first.
pub fn balanced_kmeans(corpus: &Corpus, shards: usize, metric: Metric, seed: u64) -> Partition {
    let rows = corpus.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut centroids: Vec<Vec<f32>> = sample(&mut rng, rows, shards)
        .iter()
        .map(|row| corpus.vector(row).to_vec())
        .collect();
    let mut assignment = vec![usize::MAX; rows];
    for _ in 0..ITERATIONS {
        let next = assign_with_capacity(corpus, &centroids, metric);
        let stable = next == assignment;
        assignment = next;
        centroids = (0..shards)
            .map(|s| mean_of(corpus, &assignment, s, metric))
            .collect();
        if stable || shards == 1 {
            break;
        }
    }
    let mut members = vec![Vec::new(); shards];
    for (row, &shard) in assignment.iter().enumerate() {
        members[shard].push(row);
    }
    Partition { members, centroids }
}

/// Same greedy as sorting every (distance, row, shard) pair and taking them closest first while
/// the row is unassigned and the shard has room, without materialising rows × shards pairs: each
/// unassigned row keeps only its closest pair among shards not yet full in a heap (O(rows) memory).
/// A popped pair whose shard filled up meanwhile is replaced by the row's next closest; pairs pop
/// in the same global order, so the result equals the full sort's.
fn assign_with_capacity(corpus: &Corpus, centroids: &[Vec<f32>], metric: Metric) -> Vec<usize> {
    let (rows, shards) = (corpus.len(), centroids.len());
    let mut capacity: Vec<usize> = (0..shards)
        .map(|s| rows / shards + usize::from(s < rows % shards))
        .collect();
    let closest_open = |row: usize, capacity: &[usize]| {
        centroids
            .iter()
            .enumerate()
            .filter(|(shard, _)| capacity[*shard] > 0)
            .map(|(shard, centroid)| Pair {
                distance: metric.distance_f32(corpus.vector(row), centroid),
                row,
                shard,
            })
            .min()
    };
    let mut heap: BinaryHeap<Reverse<Pair>> = (0..rows)
        .filter_map(|row| closest_open(row, &capacity).map(Reverse))
        .collect();
    let mut assignment = vec![usize::MAX; rows];
    while let Some(Reverse(pair)) = heap.pop() {
        if capacity[pair.shard] > 0 {
            assignment[pair.row] = pair.shard;
            capacity[pair.shard] -= 1;
        } else if let Some(next) = closest_open(pair.row, &capacity) {
            heap.push(Reverse(next));
        }
    }
    assignment
}

/// A candidate assignment, ordered by distance, then row, then shard (the full sort's order).
#[derive(Clone, Copy)]
struct Pair {
    distance: f32,
    row: usize,
    shard: usize,
}

impl Ord for Pair {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then(self.row.cmp(&other.row))
            .then(self.shard.cmp(&other.shard))
    }
}

impl PartialOrd for Pair {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Pair {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Pair {}

impl Partition {
    /// Boundary replication (SPANN-style): each row is also made a member of the nearest other
    /// shard whose centroid is at most `margin` farther from it than its own shard's centroid
    /// (one copy more at most, [`crate::manifest::MAX_COPIES`]); centroids stay those of the
    /// rows' own shards. Returns the copies added. A margin of 0 adds none.
    pub fn replicate_boundaries(&mut self, corpus: &Corpus, metric: Metric, margin: f32) -> u64 {
        use rayon::prelude::*;
        if margin <= 0.0 || self.centroids.len() < 2 {
            return 0;
        }
        let mut home = vec![0usize; corpus.len()];
        for (shard, rows) in self.members.iter().enumerate() {
            rows.iter().for_each(|&row| home[row] = shard);
        }
        let centroids = &self.centroids;
        let second: Vec<Option<usize>> = (0..corpus.len())
            .into_par_iter()
            .map(|row| {
                let vector = corpus.vector(row);
                let own = metric.distance_f32(vector, &centroids[home[row]]);
                (0..centroids.len())
                    .filter(|&shard| shard != home[row])
                    .map(|shard| (metric.distance_f32(vector, &centroids[shard]), shard))
                    .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
                    .filter(|&(distance, _)| distance <= own + margin)
                    .map(|(_, shard)| shard)
            })
            .collect();
        let mut added = 0;
        for (row, shard) in second.into_iter().enumerate() {
            if let Some(shard) = shard {
                self.members[shard].push(row);
                added += 1;
            }
        }
        self.members
            .iter_mut()
            .for_each(|rows| rows.sort_unstable());
        added
    }
}

fn mean_of(corpus: &Corpus, assignment: &[usize], shard: usize, metric: Metric) -> Vec<f32> {
    let mut sum = vec![0.0f64; corpus.dims];
    let mut members = 0usize;
    for (row, _) in assignment.iter().enumerate().filter(|(_, &s)| s == shard) {
        sum.iter_mut()
            .zip(corpus.vector(row))
            .for_each(|(acc, &x)| *acc += f64::from(x));
        members += 1;
    }
    let mut mean: Vec<f32> = sum
        .iter()
        .map(|&x| (x / members.max(1) as f64) as f32)
        .collect();
    if metric == Metric::Cosine {
        let norm = mean.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            mean.iter_mut().for_each(|x| *x /= norm);
        }
    }
    mean
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::DocId;

    #[test]
    fn splits_two_clusters_evenly_and_cleanly() {
        // Two well separated groups of 5 points: each shard must get one whole group.
        let mut vectors = Vec::new();
        for i in 0..10 {
            let base = if i < 5 { 0.0 } else { 10.0 };
            vectors.extend([base + i as f32 * 0.01, base]);
        }
        let corpus = Corpus {
            dims: 2,
            ids: (0..10).map(DocId::Int).collect(),
            texts: vec![String::new(); 10],
            metadata: vec![Default::default(); 10],
            vectors,
        };
        let partition = balanced_kmeans(&corpus, 2, Metric::L2, 1);
        let mut members = partition.members.clone();
        members.sort();
        assert_eq!(members, vec![vec![0, 1, 2, 3, 4], vec![5, 6, 7, 8, 9]]);
    }

    /// The full-sort greedy the heap version replaces, kept as the reference it must equal.
    fn assign_by_sorting_all_pairs(
        corpus: &Corpus,
        centroids: &[Vec<f32>],
        metric: Metric,
    ) -> Vec<usize> {
        let (rows, shards) = (corpus.len(), centroids.len());
        let mut capacity: Vec<usize> = (0..shards)
            .map(|s| rows / shards + usize::from(s < rows % shards))
            .collect();
        let mut pairs = Vec::with_capacity(rows * shards);
        for row in 0..rows {
            for (shard, centroid) in centroids.iter().enumerate() {
                let distance = metric.distance_f32(corpus.vector(row), centroid);
                pairs.push(Pair {
                    distance,
                    row,
                    shard,
                });
            }
        }
        pairs.sort_unstable();
        let mut assignment = vec![usize::MAX; rows];
        for pair in pairs {
            if assignment[pair.row] == usize::MAX && capacity[pair.shard] > 0 {
                assignment[pair.row] = pair.shard;
                capacity[pair.shard] -= 1;
            }
        }
        assignment
    }

    #[test]
    fn heap_assignment_equals_sorting_all_pairs() {
        // 203 pseudo-random 3-d points (not a multiple of the shard count) against 7 centroids
        // drawn from them, in both metrics: the bounded-memory greedy must give the same rows.
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let rows = 203;
        let vectors: Vec<f32> = (0..rows * 3)
            .map(|_| rand::Rng::gen_range(&mut rng, -1.0..1.0))
            .collect();
        let corpus = Corpus {
            dims: 3,
            ids: (0..rows as i64).map(DocId::Int).collect(),
            texts: vec![String::new(); rows],
            metadata: vec![Default::default(); rows],
            vectors,
        };
        let centroids: Vec<Vec<f32>> = (0..7).map(|row| corpus.vector(row * 29).to_vec()).collect();
        for metric in [Metric::L2, Metric::Cosine] {
            assert_eq!(
                assign_with_capacity(&corpus, &centroids, metric),
                assign_by_sorting_all_pairs(&corpus, &centroids, metric)
            );
        }
    }

    #[test]
    fn boundary_rows_are_copied_into_the_nearest_other_shard_within_the_margin() {
        // Rows on a line at x = 0, 1, 2, 8, 9, 10 (L2): two shards {0,1,2} and {8,9,10}, centroids
        // 1 and 9. Row 2 is 1 from its centroid and 49 from the other's; no margin below 48 copies it.
        let xs = [0.0f32, 1.0, 2.0, 8.0, 9.0, 10.0];
        let corpus = Corpus {
            dims: 1,
            ids: (0..6).map(DocId::Int).collect(),
            texts: vec![String::new(); 6],
            metadata: vec![Default::default(); 6],
            vectors: xs.to_vec(),
        };
        let fresh = || balanced_kmeans(&corpus, 2, Metric::L2, 1);
        let mut partition = fresh();
        let (near_zero, near_ten) = if partition.members[0].contains(&0) {
            (0, 1)
        } else {
            (1, 0)
        };
        assert_eq!(partition.replicate_boundaries(&corpus, Metric::L2, 0.0), 0);
        assert_eq!(partition.replicate_boundaries(&corpus, Metric::L2, 47.0), 0);
        assert_eq!(partition.members, fresh().members);
        // Margin 48: rows 2 and 3 (x = 2 and 8: 1 from their own centroid, 49 from the other)
        // get a copy.
        assert_eq!(partition.replicate_boundaries(&corpus, Metric::L2, 48.0), 2);
        assert_eq!(partition.members[near_zero], vec![0, 1, 2, 3]);
        assert_eq!(partition.members[near_ten], vec![2, 3, 4, 5]);
        // A wide margin copies every row once, never more.
        let mut wide = fresh();
        assert_eq!(wide.replicate_boundaries(&corpus, Metric::L2, 1000.0), 6);
        assert!(wide.members.iter().all(|rows| rows.len() == 6));
    }
}
