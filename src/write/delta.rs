//! The isolate's view of an index's writes not yet compacted into shards: the newest passage of
//! every written id (or its deletion), searched exactly with the f32 kernels, and the
//! written ids as the [`Exclusions`] every shard search leaves out. A view is immutable: applying
//! rows makes a new one (passages are shared, so that costs a map of pointers), and a request
//! keeps the view it started with.
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::{Put, Since};
use crate::shard::{canonical_json, quant, DocId, Exclusions, Filter, Metric};

/// A written passage as the view keeps it: the vector in f32 (normalised for cosine). Not in f16
/// as shards store theirs: an exact scan decodes every vector on every query, and the f32 kernel
/// is several times faster than decoding halves.
#[derive(Debug)]
struct Written {
    vector: Vec<f32>,
    text: String,
    metadata: serde_json::Map<String, serde_json::Value>,
}

/// What an entry costs beside its vector, text and metadata: the map's slot, the id, the `Arc`
/// and the `Vec` and `String` headers (an estimate on the high side).
const ENTRY_OVERHEAD_BYTES: usize = 128;

impl Written {
    fn bytes(&self) -> usize {
        ENTRY_OVERHEAD_BYTES
            + self.vector.len() * 4
            + self.text.len()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.to_string().len())
                .sum::<usize>()
    }
}

/// One hit among the written passages: the internal distance (smaller = closer) and the passage.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenHit {
    pub distance: f32,
    pub id: DocId,
    pub text: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Delta {
    index: String,
    dims: usize,
    metric: Metric,
    /// The compiled version the rows apply on top of (`None`: whichever is current).
    pub base_version: Option<String>,
    /// Every write up to this seq is in the view.
    pub seq: u64,
    entries: HashMap<DocId, Option<Arc<Written>>>,
    exclusions: Arc<Exclusions>,
    bytes: usize,
}

/// Where a row cannot be applied: it does not fit the index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("write of id {id} at seq {seq}: {why}")]
pub struct BadRow {
    pub id: DocId,
    pub seq: u64,
    pub why: String,
}

impl Delta {
    /// The view of an index with no writes.
    pub fn empty(index: &str, dims: usize, metric: Metric) -> Delta {
        Delta {
            index: index.to_string(),
            dims,
            metric,
            base_version: None,
            seq: 0,
            entries: HashMap::new(),
            exclusions: Arc::new(Exclusions::default()),
            bytes: 0,
        }
    }

    pub fn index(&self) -> &str {
        &self.index
    }

    /// Whether the view is of an index of this shape (an index deleted and made again with
    /// another is started over).
    pub fn fits(&self, dims: usize, metric: Metric) -> bool {
        self.dims == dims && self.metric == metric
    }

    /// Writes not yet compacted into shards (deletions included).
    pub fn pending_writes(&self) -> usize {
        self.entries.len()
    }

    /// Memory the view's passages take (vectors, texts, metadata).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The ids no shard search may return; `None` when nothing was written.
    pub fn exclusions(&self) -> Option<Arc<Exclusions>> {
        (!self.exclusions.is_empty()).then(|| self.exclusions.clone())
    }

    /// The view after the writer's answer `since` (which starts over when the base moved).
    pub fn apply(&self, since: &Since) -> Result<Delta, BadRow> {
        let mut next = if since.reset {
            Delta::empty(&self.index, self.dims, self.metric)
        } else {
            self.clone()
        };
        for row in &since.rows {
            let bad = |why: String| BadRow {
                id: row.change.id.clone(),
                seq: row.seq,
                why,
            };
            let written = match &row.change.put {
                Some(put) => Some(Arc::new(next.to_written(put).map_err(bad)?)),
                None => None,
            };
            let added = written.as_ref().map_or(0, |w| w.bytes());
            let old = next.entries.insert(row.change.id.clone(), written);
            let removed = old.flatten().map_or(0, |w| w.bytes());
            next.bytes = next.bytes + added - removed;
        }
        next.base_version = since.base_version.clone();
        next.seq = since.upto;
        next.exclusions = Arc::new(Exclusions::new(self.generation(&next), next.entries.keys()));
        Ok(next)
    }

    /// Names the view's content: the same index, base and seq always hold the same rows. 53 bits,
    /// so that it survives JSON readers that take every number as a double (a shard host's).
    fn generation(&self, view: &Delta) -> u64 {
        let named = format!(
            "{}\u{0}{}\u{0}{}",
            self.index,
            view.base_version.as_deref().unwrap_or(""),
            view.seq
        );
        xxhash_rust::xxh3::xxh3_64(named.as_bytes()) & ((1 << 53) - 1)
    }

    fn to_written(&self, put: &Put) -> Result<Written, String> {
        if put.vector.len() != self.dims {
            return Err(format!(
                "{} dimensions; the index has {}",
                put.vector.len(),
                self.dims
            ));
        }
        Ok(Written {
            vector: prepared(self.metric, &put.vector)?,
            text: put.text.clone(),
            metadata: put.metadata.clone(),
        })
    }

    /// Whether `id` was written (put or deleted) since the base version.
    pub fn shadows(&self, id: &DocId) -> bool {
        self.entries.contains_key(id)
    }

    /// The written passages (deletions left out) as a rebuild starts from them: id, vector
    /// (normalised, for cosine), text and metadata.
    pub fn passages(&self) -> impl Iterator<Item = (&DocId, Put)> + '_ {
        self.entries.iter().filter_map(|(id, written)| {
            let written = written.as_ref()?;
            let put = Put {
                vector: written.vector.clone(),
                text: written.text.clone(),
                metadata: written.metadata.clone(),
            };
            Some((id, put))
        })
    }

    /// The `k` written passages nearest `query` that pass `filter`, best first, by an exact scan.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<WrittenHit>, String> {
        if k == 0 || self.entries.is_empty() {
            return Ok(Vec::new());
        }
        if query.len() != self.dims {
            return Err(format!(
                "the query has {} dimensions; the index has {}",
                query.len(),
                self.dims
            ));
        }
        let query = prepared(self.metric, query)?;
        let wanted: Option<Vec<(&String, String)>> = filter.map(|f| {
            f.equals
                .iter()
                .map(|(field, value)| (field, canonical_json(value)))
                .collect()
        });
        // A max-heap of the best k so far.
        let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
        for (id, written) in &self.entries {
            let Some(written) = written else { continue };
            if let Some(wanted) = &wanted {
                let passes = wanted.iter().all(|(field, value)| {
                    written
                        .metadata
                        .get(*field)
                        .is_some_and(|v| canonical_json(v) == *value)
                });
                if !passes {
                    continue;
                }
            }
            let distance = self.metric.distance_f32(&query, &written.vector);
            if best.len() == k && best.peek().is_some_and(|worst| distance > worst.distance) {
                continue;
            }
            let ranked = Ranked {
                distance,
                id,
                written,
            };
            if best.len() < k {
                best.push(ranked);
            } else if best.peek().is_some_and(|worst| ranked < *worst) {
                best.pop();
                best.push(ranked);
            }
        }
        Ok(best
            .into_sorted_vec()
            .into_iter()
            .map(|r| WrittenHit {
                distance: r.distance,
                id: r.id.clone(),
                text: r.written.text.clone(),
                metadata: r.written.metadata.clone(),
            })
            .collect())
    }
}

/// The vector as the metric compares it: checked finite, normalised for cosine.
fn prepared(metric: Metric, vector: &[f32]) -> Result<Vec<f32>, String> {
    if vector.iter().any(|x| !x.is_finite()) {
        return Err("the vector has a value that is not finite".into());
    }
    let mut vector = vector.to_vec();
    if metric == Metric::Cosine {
        let norm = quant::dot_f32(&vector, &vector).sqrt();
        if norm == 0.0 {
            return Err("a zero vector has no direction for cosine similarity".into());
        }
        vector.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(vector)
}

struct Ranked<'a> {
    distance: f32,
    id: &'a DocId,
    written: &'a Arc<Written>,
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Ranked<'_> {}
impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
/// By distance, then (rarely needed, so only then) by the id's text: a stable order.
impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.distance
            .total_cmp(&other.distance)
            .then_with(|| super::id_key(self.id).cmp(&super::id_key(other.id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::{Change, Row};
    use serde_json::json;

    fn put(seq: u64, id: i64, vector: &[f32], text: &str) -> Row {
        Row {
            seq,
            change: Change {
                id: DocId::Int(id),
                put: Some(Put {
                    vector: vector.to_vec(),
                    text: text.into(),
                    metadata: json!({"n": id % 2}).as_object().unwrap().clone(),
                }),
            },
        }
    }

    fn delete(seq: u64, id: i64) -> Row {
        Row {
            seq,
            change: Change {
                id: DocId::Int(id),
                put: None,
            },
        }
    }

    fn since(rows: Vec<Row>, upto: u64) -> Since {
        Since {
            rows,
            upto,
            last_seq: upto,
            ..Since::default()
        }
    }

    #[test]
    fn newest_write_wins_and_deletes_leave_exclusions() {
        let empty = Delta::empty("docs", 2, Metric::Cosine);
        let v1 = empty
            .apply(&since(
                vec![put(1, 1, &[1.0, 0.0], "one"), put(1, 2, &[0.0, 1.0], "two")],
                1,
            ))
            .unwrap();
        let v2 = v1
            .apply(&since(
                vec![put(2, 1, &[0.0, 2.0], "one again"), delete(3, 2)],
                3,
            ))
            .unwrap();
        assert_eq!((v1.seq, v2.seq), (1, 3));
        let hits = v2.search(&[0.0, 1.0], 5, None).unwrap();
        assert_eq!(hits.len(), 1, "the deleted id is gone");
        assert_eq!(
            (hits[0].id.clone(), hits[0].text.as_str()),
            (DocId::Int(1), "one again")
        );
        assert!(
            hits[0].distance.abs() < 1e-3,
            "cosine on the normalised vector"
        );
        let excluded = v2.exclusions().unwrap();
        assert!(excluded.contains(&DocId::Int(1)) && excluded.contains(&DocId::Int(2)));
        assert_eq!(v2.pending_writes(), 2);
        let passages: Vec<(&DocId, Put)> = v2.passages().collect();
        assert_eq!(passages.len(), 1, "the deletion is no passage");
        assert_eq!(
            (passages[0].0, passages[0].1.text.as_str()),
            (&DocId::Int(1), "one again")
        );
        assert!(
            (passages[0].1.vector[1] - 1.0).abs() < 1e-3,
            "normalised, decoded"
        );
        assert!(v2.shadows(&DocId::Int(2)) && !v2.shadows(&DocId::Int(3)));
        assert_eq!(
            v1.search(&[0.0, 1.0], 1, None).unwrap()[0].text,
            "two",
            "v1 is unchanged"
        );
        assert_ne!(v1.exclusions().unwrap().generation, excluded.generation);
    }

    #[test]
    fn search_is_exact_filtered_and_ordered() {
        let rows: Vec<Row> = (0..50)
            .map(|i| put(1, i, &[i as f32, 1.0], &format!("p{i}")))
            .collect();
        let view = Delta::empty("d", 2, Metric::L2)
            .apply(&since(rows, 1))
            .unwrap();
        let hits = view.search(&[10.2, 1.0], 3, None).unwrap();
        let ids: Vec<DocId> = hits.iter().map(|h| h.id.clone()).collect();
        assert_eq!(ids, vec![DocId::Int(10), DocId::Int(11), DocId::Int(9)]);
        let filter = Filter {
            equals: json!({"n": 1}).as_object().unwrap().clone(),
        };
        let odd = view.search(&[10.2, 1.0], 2, Some(&filter)).unwrap();
        let ids: Vec<DocId> = odd.iter().map(|h| h.id.clone()).collect();
        assert_eq!(ids, vec![DocId::Int(11), DocId::Int(9)]);
        assert!(view.search(&[1.0], 3, None).is_err(), "wrong dims");
    }

    #[test]
    fn a_reset_starts_from_nothing_and_bytes_follow_the_passages() {
        let view = Delta::empty("d", 2, Metric::Dot)
            .apply(&since(vec![put(1, 1, &[1.0, 0.0], "aaaa")], 1))
            .unwrap();
        let bytes = view.bytes();
        assert!(bytes >= 2 * 4 + 4, "{bytes}");
        let replaced = view
            .apply(&since(vec![put(2, 1, &[1.0, 0.0], "a")], 2))
            .unwrap();
        assert_eq!(replaced.bytes(), bytes - 3);
        assert!(bytes >= ENTRY_OVERHEAD_BYTES);
        let reset = Since {
            reset: true,
            base_version: Some("v2".into()),
            ..since(vec![put(5, 7, &[0.0, 1.0], "x")], 5)
        };
        let rebased = replaced.apply(&reset).unwrap();
        assert_eq!(rebased.pending_writes(), 1);
        assert_eq!(rebased.base_version.as_deref(), Some("v2"));
        let bad = view.apply(&since(vec![put(3, 9, &[1.0], "short")], 3));
        assert_eq!(bad.unwrap_err().seq, 3);
    }
}
