//! Exact top-k merge of per-shard hit lists.

use super::search::Hit;

/// A hit tagged with the position of the shard it came from (the caller's shard numbering).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShardHit {
    pub shard: usize,
    pub ord: u32,
    pub distance: f32,
}

/// The `k` closest hits over all shards, ordered by (distance, shard, ord) so equal distances
/// always come out in the same order whatever order the shards answered in.
pub fn merge_top_k<'a>(
    per_shard: impl IntoIterator<Item = (usize, &'a [Hit])>,
    k: usize,
) -> Vec<ShardHit> {
    let mut all: Vec<ShardHit> = per_shard
        .into_iter()
        .flat_map(|(shard, hits)| {
            hits.iter().map(move |hit| ShardHit {
                shard,
                ord: hit.ord,
                distance: hit.distance,
            })
        })
        .collect();
    all.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then(a.shard.cmp(&b.shard))
            .then(a.ord.cmp(&b.ord))
    });
    all.truncate(k);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_exactly_and_breaks_ties_by_shard_then_ord() {
        let a = [
            Hit {
                ord: 5,
                distance: 0.1,
            },
            Hit {
                ord: 1,
                distance: 0.5,
            },
        ];
        let b = [
            Hit {
                ord: 2,
                distance: 0.1,
            },
            Hit {
                ord: 9,
                distance: 0.3,
            },
        ];
        let forward = merge_top_k([(0, &a[..]), (1, &b[..])], 3);
        let backward = merge_top_k([(1, &b[..]), (0, &a[..])], 3);
        assert_eq!(forward, backward);
        let got: Vec<(usize, u32)> = forward.iter().map(|h| (h.shard, h.ord)).collect();
        assert_eq!(got, vec![(0, 5), (1, 2), (1, 9)]);
        assert!(merge_top_k([(0, &a[..])], 0).is_empty());
    }
}
