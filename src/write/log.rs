//! The writer's decisions, whatever storage it keeps its rows in: which seq a batch takes, which
//! batches are refused (ids of the other kind, a backlog past its limit), what a reader that
//! has seen writes up to some seq is sent next; and the wire types between worker, writer and
//! isolates.
use serde::{Deserialize, Serialize};

use super::segment::Sealed;
use super::{Change, Row};
use crate::shard::DocId;

/// Whether an index's ids are integers or strings: fixed by its first write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdKind {
    Int,
    Str,
}

impl IdKind {
    pub fn of(id: &DocId) -> IdKind {
        match id {
            DocId::Int(_) => IdKind::Int,
            DocId::Str(_) => IdKind::Str,
        }
    }

    fn name(self) -> &'static str {
        match self {
            IdKind::Int => "integers",
            IdKind::Str => "strings",
        }
    }
}

/// What the writer knows of its log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LogMeta {
    /// The seq of the newest acknowledged write (0: none yet).
    pub last_seq: u64,
    /// Every write up to this seq is in the shards of `base_version`; the log keeps no row at or
    /// below it.
    pub base_seq: u64,
    /// The compiled version the rows apply on top of; `None` until a compaction or a publish
    /// names one (then: whatever version is current).
    pub base_version: Option<String>,
    pub id_kind: Option<IdKind>,
    /// Rows the log holds: ids written since the base (deletes included).
    pub rows: u64,
    /// The log's sealed segments, oldest first, each starting where the one before ends (the
    /// first at `base_seq` or above); rows above the last are the unsealed tail.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<Sealed>,
    /// Objects of segments no longer listed, still to be deleted from every region.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

/// What the writer should seal next, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealPlan {
    /// The tail `(above, upto]` as a new segment after the last.
    Tail { above: u64, upto: u64 },
    /// Every sealed span `(above, upto]` again as one segment: most of the sealed rows were
    /// replaced or deleted since, so the listed segments hold far more rows than a reader needs.
    Reseal { above: u64, upto: u64 },
}

/// A validated batch, as the worker hands it to the writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WriteBatch {
    pub changes: Vec<Change>,
    /// The most rows the log may hold (`WRITE_BACKLOG_MAX`).
    pub max_rows: u64,
}

/// Why the writer refused a batch; nothing of it was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The batch itself is wrong (422).
    #[error("{0}")]
    Invalid(String),
    /// The log is full until a compaction (503).
    #[error("{0}")]
    Backlog(String),
}

/// A durable write's answer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub seq: u64,
    /// Rows not yet compacted into shards, this write's included.
    pub pending_writes: u64,
}

impl LogMeta {
    /// The seq `batch` takes, or why it is refused: ids must be of the index's one kind, and the
    /// log may not grow past `batch.max_rows` (`new_rows`: the batch's ids the log does not
    /// hold yet).
    pub fn admit(&self, batch: &WriteBatch, new_rows: u64) -> Result<u64, Refused> {
        let kind = self
            .id_kind
            .or_else(|| batch.changes.first().map(|c| IdKind::of(&c.id)));
        if let Some(kind) = kind {
            if let Some((i, c)) = batch
                .changes
                .iter()
                .enumerate()
                .find(|(_, c)| IdKind::of(&c.id) != kind)
            {
                return Err(Refused::Invalid(format!(
                    "item {i} (id {}): this index's ids are {}",
                    super::id_key(&c.id),
                    kind.name()
                )));
            }
        }
        if self.rows + new_rows > batch.max_rows {
            return Err(Refused::Backlog(format!(
                "the index holds {} uncompacted writes and this batch adds {new_rows}; the limit is \
                 {} (WRITE_BACKLOG_MAX): compact the index (`shardc compact`) and retry",
                self.rows, batch.max_rows
            )));
        }
        Ok(self.last_seq + 1)
    }

    /// What a reader that holds the rows up to `after` on top of `base` must be sent: every
    /// row above `after`, or, when the base moved (a compaction or a publish), every row there
    /// is (`reset`), for it to start over on the new base. Returns (reset, rows above this seq).
    pub fn plan_since(&self, after: u64, base: Option<&str>) -> (bool, u64) {
        let reset = base != self.base_version.as_deref() || after < self.base_seq;
        (reset, if reset { 0 } else { after })
    }

    /// The seq up to which the log is sealed into segments.
    pub fn sealed_upto(&self) -> u64 {
        self.sealed.last().map_or(self.base_seq, |s| s.upto)
    }

    /// The next seal: the tail once it holds `seal_rows` rows (`tail_rows`: rows above
    /// [`Self::sealed_upto`]); else one segment for every sealed span once the segments hold
    /// over twice the rows the log still keeps at or below it (a reader from scratch would
    /// read the dead rows too).
    pub fn seal_plan(&self, tail_rows: u64, seal_rows: u64) -> Option<SealPlan> {
        let upto = self.sealed_upto();
        if tail_rows >= seal_rows.max(1) && self.last_seq > upto {
            return Some(SealPlan::Tail {
                above: upto,
                upto: self.last_seq,
            });
        }
        let listed: u64 = self.sealed.iter().map(|s| s.rows).sum();
        let live = self.rows.saturating_sub(tail_rows);
        (self.sealed.len() > 1 && listed > 2 * live).then_some(SealPlan::Reseal {
            above: self.base_seq,
            upto,
        })
    }

    /// Lists `sealed`, made for `plan`, if the log is still where the plan found it (a
    /// compaction or another seal in between makes it stale: then its object is retired
    /// instead). Returns whether it was listed.
    pub fn record_seal(&mut self, plan: SealPlan, sealed: Sealed) -> bool {
        let fits = match plan {
            SealPlan::Tail { above, .. } => above == self.sealed_upto(),
            SealPlan::Reseal { above, upto } => {
                above == self.base_seq && upto == self.sealed_upto()
            }
        };
        if !fits {
            self.retired.push(sealed.key);
            return false;
        }
        if matches!(plan, SealPlan::Reseal { .. }) {
            self.retire_sealed();
        }
        self.sealed.push(sealed);
        true
    }

    /// Unlists every segment (a compaction or a dropped log: their spans no longer match the
    /// log); their objects are retired. The rows stay in the writer's table, so nothing is lost.
    pub fn retire_sealed(&mut self) {
        self.retired
            .extend(self.sealed.drain(..).map(|sealed| sealed.key));
    }

    /// What a reader that holds the rows up to `from` (see [`Self::plan_since`]) reads from
    /// segments: those ending above `from`, in order, and then the tail rows above the returned seq.
    pub fn sealed_since(&self, from: u64) -> (Vec<Sealed>, u64) {
        let listed: Vec<Sealed> = self
            .sealed
            .iter()
            .filter(|s| s.upto > from)
            .cloned()
            .collect();
        (listed, from.max(self.sealed_upto()))
    }

    /// The answer to `GET /v1/indexes/{name}`'s `writes`.
    pub fn state(&self) -> WriteState {
        WriteState {
            seq: self.last_seq,
            base_seq: self.base_seq,
            base_version: self.base_version.clone(),
            pending_writes: self.rows,
            sealed_segments: self.sealed.len(),
            sealed_seq: self.sealed_upto(),
        }
    }
}

/// An index's write state as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteState {
    /// The newest acknowledged write.
    pub seq: u64,
    /// Writes up to here are compacted into the base version's shards.
    pub base_seq: u64,
    pub base_version: Option<String>,
    /// Writes not yet compacted into shards.
    pub pending_writes: u64,
    /// Segments the writes up to `sealed_seq` are sealed into (read from R2 by isolates).
    pub sealed_segments: usize,
    pub sealed_seq: u64,
}

/// The writer's answer to a reader: rows above the reader's seq, at most a page of them and
/// always whole writes; `upto` is the seq the reader holds once it applied them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Since {
    pub base_version: Option<String>,
    pub base_seq: u64,
    pub last_seq: u64,
    /// The reader must drop what it holds first: the base moved.
    pub reset: bool,
    /// Segments to read and apply, in order, before `rows`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed: Vec<Sealed>,
    pub rows: Vec<Row>,
    pub upto: u64,
    /// More rows follow: ask again from `upto`.
    pub more: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::write::Put;

    fn put(id: DocId) -> Change {
        Change {
            id,
            put: Some(Put {
                vector: vec![1.0],
                text: String::new(),
                metadata: Default::default(),
            }),
        }
    }

    fn batch(changes: Vec<Change>, max_rows: u64) -> WriteBatch {
        WriteBatch { changes, max_rows }
    }

    #[test]
    fn a_batch_takes_the_next_seq_and_one_id_kind() {
        let mut meta = LogMeta::default();
        let ints = batch(vec![put(DocId::Int(1)), put(DocId::Int(2))], 10);
        assert_eq!(meta.admit(&ints, 2), Ok(1));
        let mixed = batch(vec![put(DocId::Int(1)), put(DocId::Str("a".into()))], 10);
        let Err(Refused::Invalid(why)) = meta.admit(&mixed, 2) else {
            panic!("mixed ids admitted")
        };
        assert!(why.contains("item 1") && why.contains("\"a\""), "{why}");
        meta.id_kind = Some(IdKind::Str);
        meta.last_seq = 41;
        assert!(matches!(meta.admit(&ints, 2), Err(Refused::Invalid(_))));
        let strs = batch(vec![put(DocId::Str("a".into()))], 10);
        assert_eq!(meta.admit(&strs, 1), Ok(42));
    }

    #[test]
    fn the_backlog_limit_counts_new_ids_only() {
        let meta = LogMeta {
            rows: 9,
            ..LogMeta::default()
        };
        let one = batch(vec![put(DocId::Int(1))], 10);
        assert!(meta.admit(&one, 1).is_ok());
        let Err(Refused::Backlog(why)) = meta.admit(&batch(vec![put(DocId::Int(1)); 2], 10), 2)
        else {
            panic!("backlog not refused")
        };
        assert!(why.contains("WRITE_BACKLOG_MAX"), "{why}");
        assert!(meta.admit(&one, 0).is_ok(), "a replaced id adds no row");
    }

    #[test]
    fn a_reader_starts_over_when_the_base_moves() {
        let meta = LogMeta {
            last_seq: 20,
            base_seq: 10,
            base_version: Some("v2".into()),
            ..LogMeta::default()
        };
        assert_eq!(meta.plan_since(15, Some("v2")), (false, 15));
        assert_eq!(meta.plan_since(15, Some("v1")), (true, 0));
        assert_eq!(meta.plan_since(15, None), (true, 0));
        assert_eq!(
            meta.plan_since(5, Some("v2")),
            (true, 0),
            "rows at or below 10 are gone"
        );
    }

    fn sealed(above: u64, upto: u64, rows: u64) -> Sealed {
        Sealed {
            key: Sealed::key_for("d", above, upto, 0),
            above,
            upto,
            rows,
        }
    }

    #[test]
    fn the_tail_is_sealed_once_it_holds_seal_rows_and_segments_chain() {
        let mut meta = LogMeta {
            last_seq: 30,
            base_seq: 10,
            rows: 25,
            ..LogMeta::default()
        };
        assert_eq!(meta.seal_plan(25, 100), None);
        let plan = meta.seal_plan(25, 20).unwrap();
        assert_eq!(
            plan,
            SealPlan::Tail {
                above: 10,
                upto: 30
            }
        );
        assert!(meta.record_seal(plan, sealed(10, 30, 25)));
        assert_eq!(meta.sealed_upto(), 30);
        meta.last_seq = 50;
        meta.rows = 45;
        assert_eq!(
            meta.seal_plan(20, 20),
            Some(SealPlan::Tail {
                above: 30,
                upto: 50
            })
        );
        // A reader at 20 reads the segment over (10, 30], then the tail above 30.
        let (listed, rows_from) = meta.sealed_since(20);
        assert_eq!((listed.len(), rows_from), (1, 30));
        let (listed, rows_from) = meta.sealed_since(40);
        assert_eq!((listed.len(), rows_from), (0, 40));
    }

    #[test]
    fn a_seal_made_stale_by_a_compaction_is_retired_not_listed() {
        let mut meta = LogMeta {
            last_seq: 30,
            base_seq: 10,
            rows: 20,
            ..LogMeta::default()
        };
        let plan = meta.seal_plan(20, 20).unwrap();
        // The compaction lands while the segment is being written.
        meta.base_seq = 25;
        meta.retire_sealed();
        let made = sealed(10, 30, 20);
        assert!(!meta.record_seal(plan, made.clone()));
        assert!(meta.sealed.is_empty());
        assert_eq!(meta.retired, vec![made.key]);
    }

    #[test]
    fn mostly_dead_segments_are_resealed_into_one() {
        let mut meta = LogMeta {
            last_seq: 300,
            base_seq: 0,
            rows: 50,
            ..LogMeta::default()
        };
        for (above, upto) in [(0, 100), (100, 200), (200, 300)] {
            let plan = SealPlan::Tail { above, upto };
            assert!(meta.record_seal(plan, sealed(above, upto, 100)));
        }
        // 300 listed rows, 50 live: reseal (0, 300].
        let plan = meta.seal_plan(0, 100).unwrap();
        assert_eq!(
            plan,
            SealPlan::Reseal {
                above: 0,
                upto: 300
            }
        );
        assert!(meta.record_seal(plan, sealed(0, 300, 50)));
        assert_eq!(meta.sealed.len(), 1);
        assert_eq!(meta.retired.len(), 3);
        assert_eq!(
            meta.seal_plan(0, 100),
            None,
            "one segment is never resealed"
        );
    }
}
