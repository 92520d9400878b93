//! The isolate's views of its indexes' writes ([`Delta`]s), byte-bounded like the shard store,
//! and how a request gets one: the view it holds if it is fresh (read within `CURRENT_TTL_MS`)
//! and has the writes the request asks for (`min_seq`), else the writer's rows since that view,
//! asked again until `min_seq` is in or the wait is over. The writer answers with the sealed
//! segments to read from R2 and only the unsealed tail's rows; a segment that cannot be read
//! (missing, corrupt, over the budget) is asked of the writer as rows instead, so it costs time,
//! never writes.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::segment::{self, Sealed};
use super::{Delta, Since};
use crate::clock::Clock;
use crate::shard::Metric;

/// How often a request waiting for `min_seq` asks the writer again.
pub const MIN_SEQ_POLL_MS: f64 = 25.0;

/// How the isolate reaches an index's writer (a Durable Object stub in the worker).
#[allow(async_fn_in_trait)]
pub trait Writer {
    /// What a reader holding the rows up to `after` on top of `base` applies next: sealed
    /// segments and one page of tail rows (see [`Since::more`]); with `rows_only`, rows alone.
    async fn since(&self, after: u64, base: Option<&str>, rows_only: bool)
        -> Result<Since, String>;
    /// The blob of a sealed segment, at most `max_len` bytes; `Ok(None)` if no region has it.
    async fn segment(&self, sealed: &Sealed, max_len: usize) -> Result<Option<Vec<u8>>, String>;
}

/// Why a request gets no view.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ViewError {
    #[error("the index has writes up to seq {seq}, not yet {min_seq}")]
    NotYetVisible { min_seq: u64, seq: u64 },
    #[error("the index's writer: {0}")]
    Unreachable(String),
    #[error("{0}")]
    OverBudget(String),
}

/// What a request asks of its view.
#[derive(Debug, Clone, Copy)]
pub struct Wanted {
    pub dims: usize,
    pub metric: Metric,
    pub min_seq: Option<u64>,
    /// `CURRENT_TTL_MS`: how old a view may be when no `min_seq` asks for more.
    pub ttl_ms: f64,
    /// `MIN_SEQ_WAIT_MS`: how long to wait for `min_seq`.
    pub wait_ms: f64,
}

struct Held {
    view: Rc<Delta>,
    synced_at_ms: f64,
}

/// Every index's view in this isolate, within `capacity` bytes together.
pub struct Views {
    capacity: usize,
    held: RefCell<HashMap<String, Held>>,
    segment_reads: RefCell<SegmentReads>,
}

/// How this isolate's catch-ups read sealed segments: from their blobs, or (`fallbacks`) from
/// the writer instead, and why the last one fell back.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SegmentReads {
    pub read: u64,
    pub fallbacks: u64,
    pub last_fallback: Option<String>,
}

impl SegmentReads {
    fn fell_back(&mut self, why: String) {
        self.fallbacks += 1;
        self.last_fallback = Some(why);
    }
}

impl Views {
    pub fn new(capacity: usize) -> Views {
        Views {
            capacity,
            held: RefCell::new(HashMap::new()),
            segment_reads: RefCell::new(SegmentReads::default()),
        }
    }

    pub fn segment_reads(&self) -> SegmentReads {
        self.segment_reads.borrow().clone()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes of every view held.
    pub fn bytes(&self) -> usize {
        self.held.borrow().values().map(|h| h.view.bytes()).sum()
    }

    /// The view of `index` for a request: see the module doc.
    pub async fn view<W: Writer, C: Clock>(
        &self,
        index: &str,
        writer: &W,
        clock: &C,
        wanted: Wanted,
    ) -> Result<Rc<Delta>, ViewError> {
        let started = clock.now_ms();
        let min_seq = wanted.min_seq.unwrap_or(0);
        let mut view = match self.held.borrow().get(index) {
            Some(held) if held.view.fits(wanted.dims, wanted.metric) => {
                if held.view.seq >= min_seq && clock.now_ms() - held.synced_at_ms < wanted.ttl_ms {
                    return Ok(held.view.clone());
                }
                held.view.clone()
            }
            _ => Rc::new(Delta::empty(index, wanted.dims, wanted.metric)),
        };
        loop {
            let synced_at_ms = clock.now_ms();
            view = Rc::new(self.catch_up(&view, writer).await?);
            self.keep(index, view.clone(), synced_at_ms)?;
            if view.seq >= min_seq {
                return Ok(view);
            }
            if clock.now_ms() - started >= wanted.wait_ms {
                return Err(ViewError::NotYetVisible {
                    min_seq,
                    seq: view.seq,
                });
            }
            clock.sleep_ms(MIN_SEQ_POLL_MS).await;
        }
    }

    /// `view` with every row the writer has above it: its sealed segments, then the tail page
    /// by page. After a segment that cannot be read, the rest comes from the writer as rows.
    async fn catch_up<W: Writer>(&self, view: &Delta, writer: &W) -> Result<Delta, ViewError> {
        let mut next = view.clone();
        let mut rows_only = false;
        loop {
            let since = writer
                .since(next.seq, next.base_version.as_deref(), rows_only)
                .await
                .map_err(ViewError::Unreachable)?;
            let mut reset = since.reset;
            let mut unread = false;
            for sealed in &since.sealed {
                match self.read_segment(writer, sealed).await {
                    Ok(rows) => {
                        self.segment_reads.borrow_mut().read += 1;
                        let part = Since {
                            base_version: since.base_version.clone(),
                            reset,
                            rows,
                            upto: sealed.upto,
                            ..Since::default()
                        };
                        next = apply(&next, &part)?;
                        reset = false;
                        self.check_budget(view.index(), &next)?;
                    }
                    Err(why) => {
                        self.segment_reads.borrow_mut().fell_back(why);
                        unread = true;
                        break;
                    }
                }
            }
            if unread {
                rows_only = true;
                continue;
            }
            let tail = Since {
                reset,
                sealed: Vec::new(),
                ..since
            };
            next = apply(&next, &tail)?;
            self.check_budget(view.index(), &next)?;
            if !tail.more {
                return Ok(next);
            }
        }
    }

    /// A segment's rows from its blob, or why they cannot be read from it.
    async fn read_segment<W: Writer>(
        &self,
        writer: &W,
        sealed: &Sealed,
    ) -> Result<Vec<super::Row>, String> {
        let blob = writer
            .segment(sealed, self.capacity)
            .await?
            .ok_or_else(|| format!("segment {} is in no region's bucket", sealed.key))?;
        segment::decode(sealed, &blob).map_err(|e| e.to_string())
    }

    fn check_budget(&self, index: &str, view: &Delta) -> Result<(), ViewError> {
        if view.bytes() > self.capacity {
            return Err(self.over(index, view.bytes()));
        }
        Ok(())
    }

    /// Keeps `view` as the index's, if all views still fit the budget.
    fn keep(&self, index: &str, view: Rc<Delta>, synced_at_ms: f64) -> Result<(), ViewError> {
        let mut held = self.held.borrow_mut();
        let others: usize = held
            .iter()
            .filter(|(name, _)| name.as_str() != index)
            .map(|(_, h)| h.view.bytes())
            .sum();
        if others + view.bytes() > self.capacity {
            return Err(self.over(index, others + view.bytes()));
        }
        // Two requests may catch up at once: the view with more writes wins.
        let newer = held
            .get(index)
            .is_none_or(|h| h.view.seq <= view.seq || h.view.base_version != view.base_version);
        if newer {
            held.insert(index.to_string(), Held { view, synced_at_ms });
        }
        Ok(())
    }

    fn over(&self, index: &str, bytes: usize) -> ViewError {
        ViewError::OverBudget(format!(
            "the live writes of this isolate's indexes would take {bytes} bytes with {index}'s, \
             more than WRITES_CACHE_BYTES = {}: compact {index} (`shardc compact`)",
            self.capacity
        ))
    }
}

fn apply(view: &Delta, since: &Since) -> Result<Delta, ViewError> {
    view.apply(since)
        .map_err(|e| ViewError::Unreachable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::shard::DocId;
    use crate::testing::VirtualClock;
    use crate::write::{Change, Put, Row};

    /// A writer whose log is a list of rows (the newest per id) and the segments sealed from
    /// it; `since` pages the tail by `page` rows and counts its calls and the rows it sent.
    struct Log {
        rows: RefCell<Vec<Row>>,
        sealed: RefCell<Vec<(Sealed, Vec<u8>)>>,
        page: usize,
        calls: Cell<usize>,
        rows_sent: Cell<usize>,
    }

    impl Log {
        fn new(page: usize) -> Log {
            Log {
                rows: RefCell::new(Vec::new()),
                sealed: RefCell::new(Vec::new()),
                page,
                calls: Cell::new(0),
                rows_sent: Cell::new(0),
            }
        }

        fn write(&self, id: i64, text: &str) -> u64 {
            let mut rows = self.rows.borrow_mut();
            let seq = rows.iter().map(|r| r.seq).max().unwrap_or(0) + 1;
            rows.retain(|r| r.change.id != DocId::Int(id));
            rows.push(Row {
                seq,
                change: Change {
                    id: DocId::Int(id),
                    put: Some(Put {
                        vector: vec![id as f32, 1.0],
                        text: text.into(),
                        metadata: Default::default(),
                    }),
                },
            });
            seq
        }

        fn sealed_upto(&self) -> u64 {
            self.sealed.borrow().last().map_or(0, |(s, _)| s.upto)
        }

        /// Seals the tail into a segment, as the writer does.
        fn seal(&self) {
            let above = self.sealed_upto();
            let rows: Vec<Row> = self
                .rows
                .borrow()
                .iter()
                .filter(|r| r.seq > above)
                .cloned()
                .collect();
            let upto = rows.iter().map(|r| r.seq).max().unwrap_or(above);
            let blob = segment::encode(above, upto, &rows).unwrap();
            let sealed = Sealed {
                key: Sealed::key_for("d", above, upto, 0),
                above,
                upto,
                rows: rows.len() as u64,
            };
            self.sealed.borrow_mut().push((sealed, blob));
        }
    }

    impl Writer for Log {
        async fn since(
            &self,
            after: u64,
            _base: Option<&str>,
            rows_only: bool,
        ) -> Result<Since, String> {
            self.calls.set(self.calls.get() + 1);
            let (sealed, from) = if rows_only {
                (Vec::new(), after)
            } else {
                let listed = self
                    .sealed
                    .borrow()
                    .iter()
                    .map(|(s, _)| s.clone())
                    .filter(|s| s.upto > after)
                    .collect();
                (listed, after.max(self.sealed_upto()))
            };
            let rows = self.rows.borrow();
            let last_seq = rows.iter().map(|r| r.seq).max().unwrap_or(0);
            let mut above: Vec<Row> = rows.iter().filter(|r| r.seq > from).cloned().collect();
            above.sort_by_key(|r| r.seq);
            let more = above.len() > self.page;
            let page: Vec<Row> = above.into_iter().take(self.page).collect();
            self.rows_sent.set(self.rows_sent.get() + page.len());
            let upto = if more {
                page.last().map_or(from, |r| r.seq)
            } else {
                last_seq
            };
            Ok(Since {
                sealed,
                rows: page,
                upto,
                more,
                last_seq,
                ..Since::default()
            })
        }

        async fn segment(
            &self,
            sealed: &Sealed,
            _max_len: usize,
        ) -> Result<Option<Vec<u8>>, String> {
            // An emptied blob stands for an object no bucket has.
            Ok(self
                .sealed
                .borrow()
                .iter()
                .find(|(s, blob)| s == sealed && !blob.is_empty())
                .map(|(_, blob)| blob.clone()))
        }
    }

    fn wanted(min_seq: Option<u64>) -> Wanted {
        Wanted {
            dims: 2,
            metric: Metric::L2,
            min_seq,
            ttl_ms: 1000.0,
            wait_ms: 200.0,
        }
    }

    struct Setup {
        clock: VirtualClock,
        views: Views,
        log: Log,
    }

    impl Setup {
        fn new(capacity: usize, page: usize) -> Setup {
            Setup {
                clock: VirtualClock::default(),
                views: Views::new(capacity),
                log: Log::new(page),
            }
        }

        fn view(&self, min_seq: Option<u64>) -> Result<Rc<Delta>, ViewError> {
            let wanted = wanted(min_seq);
            self.clock
                .block_on(self.views.view("d", &self.log, &self.clock, wanted))
        }
    }

    #[test]
    fn a_fresh_view_is_reused_and_min_seq_forces_a_catch_up() {
        let setup = Setup::new(1 << 20, 2);
        for i in 0..5 {
            setup.log.write(i, "first");
        }
        let view = setup.view(None).unwrap();
        assert_eq!((view.seq, view.pending_writes()), (5, 5));
        assert_eq!(setup.log.calls.get(), 3, "five rows in pages of two");
        let seq = setup.log.write(1, "second");
        let stale = setup.view(None).unwrap();
        assert_eq!(
            (stale.seq, setup.log.calls.get()),
            (5, 3),
            "within the TTL, no call"
        );
        let fresh = setup.view(Some(seq)).unwrap();
        assert_eq!(fresh.seq, 6);
        let hit = &fresh.search(&[1.0, 1.0], 1, None).unwrap()[0];
        assert_eq!(hit.text, "second");
    }

    #[test]
    fn a_seq_never_written_waits_then_fails() {
        let setup = Setup::new(1 << 20, 10);
        setup.log.write(1, "x");
        let started = setup.clock.now_ms();
        let error = setup.view(Some(9)).unwrap_err();
        assert_eq!(error, ViewError::NotYetVisible { min_seq: 9, seq: 1 });
        let waited = setup.clock.now_ms() - started;
        assert!((200.0..300.0).contains(&waited), "{waited}");
    }

    #[test]
    fn views_over_the_budget_are_refused_and_named() {
        let setup = Setup::new(64, 100);
        for i in 0..20 {
            setup.log.write(i, "a passage of some length");
        }
        let error = setup.view(None).unwrap_err();
        let ViewError::OverBudget(why) = error else {
            panic!("{error:?}")
        };
        assert!(
            why.contains("WRITES_CACHE_BYTES") && why.contains("d"),
            "{why}"
        );
        assert_eq!(setup.views.bytes(), 0);
    }

    /// The texts the view finds for ids 0..n (by each id's own vector), in id order.
    fn texts(view: &Delta, n: i64) -> Vec<String> {
        (0..n)
            .map(|id| {
                view.search(&[id as f32, 1.0], 1, None).unwrap()[0]
                    .text
                    .clone()
            })
            .collect()
    }

    #[test]
    fn a_catch_up_reads_sealed_segments_and_asks_the_writer_only_for_the_tail() {
        let setup = Setup::new(1 << 20, 100);
        for i in 0..10 {
            setup.log.write(i, "sealed");
        }
        setup.log.seal();
        for i in 10..13 {
            setup.log.write(i, "tail");
        }
        let seq = setup.log.write(4, "replaced");
        let view = setup.view(Some(seq)).unwrap();
        assert_eq!((view.seq, view.pending_writes()), (14, 13));
        assert_eq!(
            setup.log.rows_sent.get(),
            4,
            "only the tail came from the writer"
        );
        assert_eq!(setup.views.segment_reads().read, 1);
        let mut expected = vec!["sealed".to_string(); 13];
        expected[4] = "replaced".into();
        for text in &mut expected[10..13] {
            *text = "tail".into();
        }
        assert_eq!(texts(&view, 13), expected);
    }

    #[test]
    fn a_reader_inside_a_sealed_span_applies_the_segment_over_what_it_holds() {
        let setup = Setup::new(1 << 20, 100);
        for i in 0..5 {
            setup.log.write(i, "first");
        }
        setup.view(None).unwrap();
        setup.log.write(2, "second");
        for i in 5..8 {
            setup.log.write(i, "first");
        }
        setup.log.seal();
        let seq = setup.log.write(3, "third");
        let view = setup.view(Some(seq)).unwrap();
        assert_eq!(
            texts(&view, 8),
            ["first", "first", "second", "third", "first", "first", "first", "first"]
        );
        assert_eq!(view.pending_writes(), 8);
    }

    #[test]
    fn a_corrupt_or_missing_segment_is_read_from_the_writer_instead() {
        for damage in ["corrupt", "missing"] {
            let setup = Setup::new(1 << 20, 100);
            for i in 0..6 {
                setup.log.write(i, "sealed");
            }
            setup.log.seal();
            let seq = setup.log.write(6, "tail");
            match damage {
                "corrupt" => setup.log.sealed.borrow_mut()[0].1[60] ^= 1,
                _ => setup.log.sealed.borrow_mut()[0].1.clear(),
            }
            let view = setup.view(Some(seq)).unwrap();
            assert_eq!(
                texts(&view, 7)[..6],
                vec!["sealed".to_string(); 6][..],
                "{damage}"
            );
            assert_eq!(texts(&view, 7)[6], "tail");
            let reads = setup.views.segment_reads();
            assert_eq!((reads.read, reads.fallbacks), (0, 1), "{damage}");
            assert!(reads.last_fallback.is_some());
            // The tail row came with the list, then all seven again as rows.
            assert_eq!(
                setup.log.rows_sent.get(),
                1 + 7,
                "{damage}: every row from the writer"
            );
        }
    }
}
