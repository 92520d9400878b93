//! Balanced k-means: splits the corpus into shards of (almost) equal size whose members are close
//! to the shard's centroid, so a router can send a query to the few nearest shards.

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

fn assign_with_capacity(corpus: &Corpus, centroids: &[Vec<f32>], metric: Metric) -> Vec<usize> {
    let (rows, shards) = (corpus.len(), centroids.len());
    let mut capacity: Vec<usize> = (0..shards)
        .map(|s| rows / shards + usize::from(s < rows % shards))
        .collect();
    let mut pairs: Vec<(f32, usize, usize)> = Vec::with_capacity(rows * shards);
    for row in 0..rows {
        for (shard, centroid) in centroids.iter().enumerate() {
            pairs.push((
                metric.distance_f32(corpus.vector(row), centroid),
                row,
                shard,
            ));
        }
    }
    pairs.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut assignment = vec![usize::MAX; rows];
    for (_, row, shard) in pairs {
        if assignment[row] == usize::MAX && capacity[shard] > 0 {
            assignment[row] = shard;
            capacity[shard] -= 1;
        }
    }
    assignment
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
}
