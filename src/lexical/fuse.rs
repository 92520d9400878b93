//! Reciprocal rank fusion (Cormack et al., 2009): a passage scores Σ 1 / (k + rank) over the
//! rankings that list it (ranks from 1). Only ranks count, so BM25 scores and cosine
//! similarities need no common scale, and a passage both rankings agree on wins.

/// The constant of the original paper, also Qdrant's, Elasticsearch's and turbopuffer's default.
pub const RRF_K_DEFAULT: u32 = 60;

/// One fused entry: which item, its fused score, and its 1-based rank in each input (if listed).
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<K> {
    pub key: K,
    pub score: f32,
    pub ranks: Vec<Option<usize>>,
}

/// The union of `rankings` (each best first, keys unique within it) ordered by fused score,
/// best first; equal scores keep the order of the best rank in the earliest ranking.
pub fn fuse<K: PartialEq + Clone>(rankings: &[Vec<K>], k: u32) -> Vec<Fused<K>> {
    let mut fused: Vec<Fused<K>> = Vec::new();
    for (which, ranking) in rankings.iter().enumerate() {
        for (position, key) in ranking.iter().enumerate() {
            let rank = position + 1;
            let entry = match fused.iter().position(|f| &f.key == key) {
                Some(at) => &mut fused[at],
                None => {
                    fused.push(Fused {
                        key: key.clone(),
                        score: 0.0,
                        ranks: vec![None; rankings.len()],
                    });
                    let last = fused.len() - 1;
                    &mut fused[last]
                }
            };
            entry.score += 1.0 / (k as f32 + rank as f32);
            entry.ranks[which] = Some(rank);
        }
    }
    let best_rank = |f: &Fused<K>| {
        f.ranks
            .iter()
            .enumerate()
            .filter_map(|(which, rank)| rank.map(|r| (r, which)))
            .min()
            .unwrap_or((usize::MAX, usize::MAX))
    };
    fused.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| best_rank(a).cmp(&best_rank(b)))
    });
    fused
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passage_both_rankings_list_beats_one_listed_once_higher() {
        let vector = vec!["a", "b", "c"];
        let lexical = vec!["d", "c", "a"];
        let fused = fuse(&[vector, lexical], 60);
        let keys: Vec<&str> = fused.iter().map(|f| f.key).collect();
        // a: 1/61 + 1/63, c: 1/63 + 1/62, then d (1/61) before b (1/62).
        assert_eq!(keys, ["a", "c", "d", "b"]);
        assert_eq!(fused[0].ranks, [Some(1), Some(3)]);
        assert_eq!(fused[2].ranks, [None, Some(1)]);
        assert!((fused[0].score - (1.0 / 61.0 + 1.0 / 63.0)).abs() < 1e-7);
    }

    #[test]
    fn equal_scores_keep_the_earlier_rankings_order() {
        let fused = fuse(&[vec![1, 2], vec![3, 4]], 60);
        let keys: Vec<i32> = fused.iter().map(|f| f.key).collect();
        assert_eq!(keys, [1, 3, 2, 4]);
    }

    #[test]
    fn one_ranking_fuses_to_itself() {
        let fused = fuse(&[vec!['x', 'y', 'z']], 1);
        assert_eq!(
            fused.iter().map(|f| f.key).collect::<String>(),
            "xyz".to_string()
        );
    }
}
