//! The isolate's views of its indexes' writes ([`Delta`]s), byte-bounded like the shard store,
//! and how a request gets one: the view it holds if it is fresh (read within `CURRENT_TTL_MS`)
//! and has the writes the request asks for (`min_seq`), else the writer's rows since that view,
//! asked again until `min_seq` is in or the wait is over.
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use super::{Delta, Since};
use crate::clock::Clock;
use crate::shard::Metric;

/// How often a request waiting for `min_seq` asks the writer again.
pub const MIN_SEQ_POLL_MS: f64 = 25.0;

/// How the isolate reaches an index's writer (a Durable Object stub in the worker).
#[allow(async_fn_in_trait)]
pub trait Writer {
    /// The rows above `after` on top of `base` (one page; see [`Since::more`]).
    async fn since(&self, after: u64, base: Option<&str>) -> Result<Since, String>;
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
}

impl Views {
    pub fn new(capacity: usize) -> Views {
        Views {
            capacity,
            held: RefCell::new(HashMap::new()),
        }
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

    /// `view` with every row the writer has above it, page by page.
    async fn catch_up<W: Writer>(&self, view: &Delta, writer: &W) -> Result<Delta, ViewError> {
        let mut next = view.clone();
        loop {
            let since = writer
                .since(next.seq, next.base_version.as_deref())
                .await
                .map_err(ViewError::Unreachable)?;
            next = next
                .apply(&since)
                .map_err(|e| ViewError::Unreachable(e.to_string()))?;
            if next.bytes() > self.capacity {
                return Err(self.over(view.index(), next.bytes()));
            }
            if !since.more {
                return Ok(next);
            }
        }
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

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::shard::DocId;
    use crate::testing::VirtualClock;
    use crate::write::{Change, Put, Row};

    /// A writer whose log is a list of rows; `since` pages by `page` rows and counts its calls.
    struct Log {
        rows: RefCell<Vec<Row>>,
        page: usize,
        calls: Cell<usize>,
    }

    impl Log {
        fn new(page: usize) -> Log {
            Log {
                rows: RefCell::new(Vec::new()),
                page,
                calls: Cell::new(0),
            }
        }

        fn write(&self, id: i64, text: &str) -> u64 {
            let mut rows = self.rows.borrow_mut();
            let seq = rows.last().map_or(0, |r| r.seq) + 1;
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
    }

    impl Writer for Log {
        async fn since(&self, after: u64, _base: Option<&str>) -> Result<Since, String> {
            self.calls.set(self.calls.get() + 1);
            let rows = self.rows.borrow();
            let last_seq = rows.iter().map(|r| r.seq).max().unwrap_or(0);
            let above: Vec<Row> = rows.iter().filter(|r| r.seq > after).cloned().collect();
            let more = above.len() > self.page;
            let page: Vec<Row> = above.into_iter().take(self.page).collect();
            let upto = if more {
                page.last().map_or(after, |r| r.seq)
            } else {
                last_seq
            };
            Ok(Since {
                rows: page,
                upto,
                more,
                last_seq,
                ..Since::default()
            })
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
}
