//! The isolate's view of an index's writes not yet compacted into shards: the newest passage of
//! every written id (or its deletion), searched exactly with the f32 kernels, and the
//! written ids as the [`Exclusions`] every shard search leaves out. A view is immutable: applying
//! rows makes a new one, and a request keeps the view it started with.
//!
//! The passages live in segments, like an LSM tree's: the rows of one catch-up are one
//! segment, their vectors one after another in memory, so an exact scan reads memory in order
//! instead of chasing a pointer per passage (which made a 10,000-passage scan memory-latency
//! bound). A segment is immutable and shared between views; a view only holds, per segment, which
//! rows are still live (a replaced or deleted passage's row is dead). Small segments are merged
//! while the older of the two newest holds no more than twice the newer's live rows, so a view
//! has few segments; a segment of [`SEALED_ROWS`] or more is merged no more, only rewritten when
//! most of it is dead, so a merge copies at most a few thousand vectors while the old view may
//! still be in use.
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use super::{Put, Since};
use crate::lexical::{self, CorpusStats, QueryTerms};
use crate::shard::{quant, DocId, Exclusions, Filter, Metric};

/// Rows from which a segment is no longer merged with its neighbours.
pub const SEALED_ROWS: usize = 2048;

/// What a passage costs beside its vector, text and metadata: its map slot, the id, its row's
/// share of the segment and the `Arc` and `String` headers (an estimate on the high side).
const ENTRY_OVERHEAD_BYTES: usize = 128;

/// A written passage's text and metadata (its vector is in its segment's block), and its
/// text's terms (sorted, with counts) and length in tokens, for lexical search.
#[derive(Debug)]
struct Passage {
    text: String,
    metadata: serde_json::Map<String, serde_json::Value>,
    terms: Vec<(String, u32)>,
    tokens: u32,
}

impl Passage {
    fn new(text: String, metadata: serde_json::Map<String, serde_json::Value>) -> Passage {
        let (terms, tokens) = lexical::term_counts(&lexical::indexed_text(&text, &metadata));
        Passage {
            text,
            metadata,
            terms,
            tokens,
        }
    }

    /// Occurrences of `term` in the passage.
    fn count(&self, term: &str) -> u32 {
        self.terms
            .binary_search_by(|(t, _)| t.as_str().cmp(term))
            .map_or(0, |at| self.terms[at].1)
    }

    fn bytes(&self) -> usize {
        self.text.len()
            + self.terms.iter().map(|(t, _)| t.len() + 28).sum::<usize>()
            + self
                .metadata
                .iter()
                .map(|(k, v)| k.len() + v.to_string().len())
                .sum::<usize>()
    }
}

/// Rows stored for scanning: row `r`'s vector (in f32, normalised for cosine; not in f16 as
/// shards store theirs, as decoding halves on every scan is several times slower) is
/// `vectors[r * dims..(r + 1) * dims]`.
#[derive(Debug)]
struct Segment {
    serial: u64,
    ids: Vec<DocId>,
    vectors: Vec<f32>,
    passages: Vec<Arc<Passage>>,
    bytes: usize,
}

impl Segment {
    fn rows(&self) -> usize {
        self.ids.len()
    }
}

/// A segment as one view holds it: which of its rows are live.
#[derive(Debug, Clone)]
struct Held {
    segment: Arc<Segment>,
    live: Arc<Vec<bool>>,
    live_rows: usize,
}

/// Where an id's passage is: row `row` of the segment numbered `serial`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Location {
    serial: u64,
    row: usize,
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
    /// Every id written since the base: where its passage is, `None` once deleted.
    entries: HashMap<DocId, Option<Location>>,
    segments: Vec<Held>,
    next_serial: u64,
    exclusions: Arc<Exclusions>,
}

/// Where a row cannot be applied: it does not fit the index.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("write of id {id} at seq {seq}: {why}")]
pub struct BadRow {
    pub id: DocId,
    pub seq: u64,
    pub why: String,
}

/// A segment being filled.
struct NewSegment {
    serial: u64,
    ids: Vec<DocId>,
    vectors: Vec<f32>,
    passages: Vec<Arc<Passage>>,
    live: Vec<bool>,
    bytes: usize,
}

impl NewSegment {
    fn new(serial: u64) -> NewSegment {
        NewSegment {
            serial,
            ids: Vec::new(),
            vectors: Vec::new(),
            passages: Vec::new(),
            live: Vec::new(),
            bytes: 0,
        }
    }

    fn push(&mut self, id: DocId, vector: &[f32], passage: Arc<Passage>) -> Location {
        self.bytes += ENTRY_OVERHEAD_BYTES + vector.len() * 4 + passage.bytes();
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
        self.passages.push(passage);
        self.live.push(true);
        Location {
            serial: self.serial,
            row: self.ids.len() - 1,
        }
    }

    fn finish(self) -> Option<Held> {
        let live_rows = self.live.iter().filter(|&&l| l).count();
        (live_rows > 0).then(|| Held {
            segment: Arc::new(Segment {
                serial: self.serial,
                ids: self.ids,
                vectors: self.vectors,
                passages: self.passages,
                bytes: self.bytes,
            }),
            live: Arc::new(self.live),
            live_rows,
        })
    }
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
            segments: Vec::new(),
            next_serial: 0,
            exclusions: Arc::new(Exclusions::default()),
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

    /// Memory the view holds: its segments (dead rows too, until merged away).
    pub fn bytes(&self) -> usize {
        self.segments.iter().map(|h| h.segment.bytes).sum()
    }

    /// Segments of the view (for tests and reports).
    pub fn segment_count(&self) -> usize {
        self.segments.len()
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
        let mut fresh = NewSegment::new(next.take_serial());
        for row in &since.rows {
            let id = &row.change.id;
            let vector =
                match &row.change.put {
                    Some(put) => Some(prepared_put(next.dims, next.metric, put).map_err(
                        |why| BadRow {
                            id: id.clone(),
                            seq: row.seq,
                            why,
                        },
                    )?),
                    None => None,
                };
            // The id's earlier passage, wherever it is, is no longer live.
            if let Some(Some(old)) = next.entries.get(id).copied() {
                if old.serial == fresh.serial {
                    fresh.live[old.row] = false;
                } else {
                    next.kill(old);
                }
            }
            let location = match (vector, &row.change.put) {
                (Some(vector), Some(put)) => Some(fresh.push(
                    id.clone(),
                    &vector,
                    Arc::new(Passage::new(put.text.clone(), put.metadata.clone())),
                )),
                _ => None,
            };
            next.entries.insert(id.clone(), location);
        }
        if let Some(held) = fresh.finish() {
            next.segments.push(held);
        }
        next.tidy();
        next.base_version = since.base_version.clone();
        next.seq = since.upto;
        next.exclusions = Arc::new(Exclusions::new(self.generation(&next), next.entries.keys()));
        Ok(next)
    }

    fn take_serial(&mut self) -> u64 {
        self.next_serial += 1;
        self.next_serial
    }

    /// Marks the passage at `at` dead in this view (the segment itself is shared, unchanged).
    fn kill(&mut self, at: Location) {
        if let Some(held) = self
            .segments
            .iter_mut()
            .find(|h| h.segment.serial == at.serial)
        {
            let live = Arc::make_mut(&mut held.live);
            if std::mem::replace(&mut live[at.row], false) {
                held.live_rows -= 1;
            }
        }
    }

    /// Drops dead segments, merges the newest small ones, rewrites mostly dead sealed ones.
    fn tidy(&mut self) {
        self.segments.retain(|h| h.live_rows > 0);
        while let [.., older, newer] = self.segments.as_slice() {
            let mergeable =
                older.segment.rows() < SEALED_ROWS && older.live_rows <= 2 * newer.live_rows;
            if !mergeable {
                break;
            }
            let newer = self.segments.pop();
            let older = self.segments.pop();
            let merged = self.rewrite(older.iter().chain(newer.iter()));
            self.segments.extend(merged);
        }
        for i in 0..self.segments.len() {
            let held = &self.segments[i];
            if held.segment.rows() >= SEALED_ROWS && 2 * held.live_rows < held.segment.rows() {
                let held = held.clone();
                if let Some(rewritten) = self.rewrite(std::iter::once(&held)) {
                    self.segments[i] = rewritten;
                }
            }
        }
    }

    /// One new segment of the live rows of `parts`; their ids are pointed at it.
    fn rewrite<'a>(&mut self, parts: impl Iterator<Item = &'a Held>) -> Option<Held> {
        let mut merged = NewSegment::new(self.take_serial());
        for held in parts {
            let segment = &held.segment;
            for row in (0..segment.rows()).filter(|&r| held.live[r]) {
                let id = segment.ids[row].clone();
                let location = merged.push(
                    id.clone(),
                    self.row_vector(segment, row),
                    segment.passages[row].clone(),
                );
                self.entries.insert(id, Some(location));
            }
        }
        merged.finish()
    }

    fn row_vector<'a>(&self, segment: &'a Segment, row: usize) -> &'a [f32] {
        &segment.vectors[row * self.dims..(row + 1) * self.dims]
    }

    /// Every live row: its segment and row number.
    fn live_rows(&self) -> impl Iterator<Item = (&Segment, usize)> + '_ {
        self.segments.iter().flat_map(|held| {
            let segment = held.segment.as_ref();
            (0..segment.rows())
                .filter(|&r| held.live[r])
                .map(move |r| (segment, r))
        })
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

    /// Whether `id` was written (put or deleted) since the base version.
    pub fn shadows(&self, id: &DocId) -> bool {
        self.entries.contains_key(id)
    }

    /// The written passages (deletions left out) as a rebuild starts from them: id, vector
    /// (normalised, for cosine), text and metadata.
    pub fn passages(&self) -> impl Iterator<Item = (&DocId, Put)> + '_ {
        self.live_rows().map(|(segment, row)| {
            let passage = &segment.passages[row];
            let put = Put {
                vector: self.row_vector(segment, row).to_vec(),
                text: passage.text.clone(),
                metadata: passage.metadata.clone(),
            };
            (&segment.ids[row], put)
        })
    }

    /// The `k` written passages nearest `query` that pass `filter`, best first, by an exact scan.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<WrittenHit>, String> {
        if k == 0 || self.segments.is_empty() {
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
        Ok(self.best(k, filter, |segment, row, _| {
            Some(
                self.metric
                    .distance_f32(&query, self.row_vector(segment, row)),
            )
        }))
    }

    /// The `k` written passages that score best by BM25 for `query` and pass `filter`, best
    /// first (distance = −score), by a scan of the passages' term counts. `compiled` are the
    /// compiled shards' corpus counts and `doc_freq` their document frequency of each query
    /// term (in `query`'s order; shorter or empty when no shard answered): the written
    /// passages are added to both, so a written passage scores as it would once compacted.
    pub fn search_lexical(
        &self,
        query: &QueryTerms,
        k: usize,
        filter: Option<&Filter>,
        compiled: CorpusStats,
        doc_freq: &[u32],
    ) -> Vec<WrittenHit> {
        if k == 0 || self.segments.is_empty() || query.is_empty() {
            return Vec::new();
        }
        let mut stats = compiled;
        let mut written_df = vec![0u64; query.terms.len()];
        for (segment, row) in self.live_rows() {
            let passage = &segment.passages[row];
            stats.docs += 1;
            stats.tokens += u64::from(passage.tokens);
            for (df, (term, _)) in written_df.iter_mut().zip(&query.terms) {
                if passage.count(term) > 0 {
                    *df += 1;
                }
            }
        }
        let weights: Vec<f32> = query
            .terms
            .iter()
            .zip(&written_df)
            .enumerate()
            .map(|(i, ((_, weight), written))| {
                let df = written + u64::from(doc_freq.get(i).copied().unwrap_or(0));
                lexical::idf(stats.docs, df) * *weight as f32
            })
            .collect();
        let mean_length = stats.mean_length();
        self.best(k, filter, |_, _, passage| {
            let score: f32 = query
                .terms
                .iter()
                .zip(&weights)
                .map(|((term, _), &weight)| match passage.count(term) {
                    0 => 0.0,
                    tf => lexical::term_score(weight, tf, passage.tokens, mean_length),
                })
                .sum();
            (score > 0.0).then_some(-score)
        })
    }

    /// The `k` live passages passing `filter` with the smallest distance `distance` gives
    /// (`None`: not a candidate), best first.
    fn best(
        &self,
        k: usize,
        filter: Option<&Filter>,
        mut distance: impl FnMut(&Segment, usize, &Passage) -> Option<f32>,
    ) -> Vec<WrittenHit> {
        // A max-heap of the best k so far.
        let mut best: BinaryHeap<Ranked> = BinaryHeap::with_capacity(k + 1);
        for (segment, row) in self.live_rows() {
            let passage = &segment.passages[row];
            if filter.is_some_and(|f| !f.matches(&passage.metadata)) {
                continue;
            }
            let Some(distance) = distance(segment, row, passage) else {
                continue;
            };
            if best.len() == k && best.peek().is_some_and(|worst| distance > worst.distance) {
                continue;
            }
            let ranked = Ranked {
                distance,
                id: &segment.ids[row],
                passage,
            };
            if best.len() < k {
                best.push(ranked);
            } else if best.peek().is_some_and(|worst| ranked < *worst) {
                best.pop();
                best.push(ranked);
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|r| WrittenHit {
                distance: r.distance,
                id: r.id.clone(),
                text: r.passage.text.clone(),
                metadata: r.passage.metadata.clone(),
            })
            .collect()
    }
}

/// A put's vector as the view keeps it, checked against the index's dimensions.
fn prepared_put(dims: usize, metric: Metric, put: &Put) -> Result<Vec<f32>, String> {
    if put.vector.len() != dims {
        return Err(format!(
            "{} dimensions; the index has {dims}",
            put.vector.len()
        ));
    }
    prepared(metric, &put.vector)
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
    passage: &'a Arc<Passage>,
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
        let filter: Filter = serde_json::from_value(json!({"n": 1})).unwrap();
        let odd = view.search(&[10.2, 1.0], 2, Some(&filter)).unwrap();
        let ids: Vec<DocId> = odd.iter().map(|h| h.id.clone()).collect();
        assert_eq!(ids, vec![DocId::Int(11), DocId::Int(9)]);
        assert!(view.search(&[1.0], 3, None).is_err(), "wrong dims");
    }

    /// Pages of writes, replacements and deletes as the writer sends them, against a plain map
    /// of what each id should hold: the view's search and passages agree with the map at every
    /// step, and the segments stay few however many pages came.
    #[test]
    fn segments_merge_and_stay_equal_to_the_newest_write_of_every_id() {
        let mut state = 7u64;
        let mut next = move |bound: u64| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) % bound
        };
        let mut view = Delta::empty("d", 2, Metric::L2);
        let mut expected: HashMap<i64, (f32, String)> = HashMap::new();
        let mut seq = 0;
        for page in 0..60 {
            let mut rows = Vec::new();
            for _ in 0..(1 + next(300)) {
                seq += 1;
                let id = next(4000) as i64;
                if next(10) == 0 {
                    rows.push(delete(seq, id));
                    expected.remove(&id);
                } else {
                    let x = next(100_000) as f32;
                    let text = format!("{id}@{seq}");
                    rows.push(put(seq, id, &[x, 0.0], &text));
                    expected.insert(id, (x, text));
                }
            }
            view = view.apply(&since(rows, seq)).unwrap();
            assert!(
                view.segment_count() <= 12,
                "page {page}: {} segments",
                view.segment_count()
            );
            let passages: HashMap<i64, (f32, String)> = view
                .passages()
                .map(|(id, put)| match id {
                    DocId::Int(i) => (*i, (put.vector[0], put.text)),
                    DocId::Str(_) => unreachable!(),
                })
                .collect();
            assert_eq!(passages, expected, "page {page}");
        }
        let (&probe_id, (x, text)) = expected.iter().next().unwrap();
        let hit = &view.search(&[*x, 0.0], 1, None).unwrap()[0];
        assert_eq!((&hit.id, &hit.text), (&DocId::Int(probe_id), text));
        let all = view.search(&[0.0, 0.0], expected.len() + 5, None).unwrap();
        assert_eq!(all.len(), expected.len(), "every live passage, no dead one");
        assert!(all.windows(2).all(|w| w[0].distance <= w[1].distance));
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
        // Three bytes fewer of text, and of its one term.
        assert_eq!(replaced.bytes(), bytes - 3 - 3);
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
