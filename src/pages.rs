//! Whole-page runs for large allocations, kept apart from the general heap.
//!
//! Wasm linear memory only grows. A general allocator that places a freed shard buffer's bytes
//! among small allocations cannot give the next shard that hole back whole, so each load may grow
//! memory again (measured: 4× the shard budget under concurrent loads). Large blocks therefore take
//! runs of 64 KiB pages that nothing small ever shares: a freed run merges with free neighbours
//! and is handed whole to the next block it fits (best fit), and memory grows only when no free
//! run is long enough, by no more than the block lacks past the last free run at the top.
//! Shard buffers of one index version all have one size (see `store`), so any freed one fits the
//! next and the runs never fragment for them.
//!
//! This is the bookkeeping only, over page numbers; the worker's global allocator
//! (`edge::heap`) grows the memory and hands out the addresses.

/// Bytes in one wasm page.
pub const PAGE: usize = 65536;

/// Pages needed for `bytes`.
pub fn pages_for(bytes: usize) -> usize {
    bytes.div_ceil(PAGE)
}

/// `bytes` rounded up to whole pages.
pub fn page_rounded(bytes: usize) -> usize {
    pages_for(bytes).saturating_mul(PAGE)
}

/// Free runs tracked at most; past this a freed run is merged if it can be, else left out of
/// the list (its pages are lost to reuse, never handed out twice). A fixed array, because the
/// allocator that uses this must not allocate.
const MAX_FREE_RUNS: usize = 256;

/// A run of pages: first page number and length in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub start: usize,
    pub pages: usize,
}

/// The free runs, sorted by start, none adjacent to another.
pub struct PageRuns {
    free: [Run; MAX_FREE_RUNS],
    len: usize,
    /// Pages held by blocks now.
    used_pages: usize,
    /// Pages memory grew by for runs: what they cost, including pages lost to a full free list.
    grown_pages: usize,
}

impl Default for PageRuns {
    fn default() -> Self {
        Self::new()
    }
}

impl PageRuns {
    pub const fn new() -> PageRuns {
        PageRuns {
            free: [Run { start: 0, pages: 0 }; MAX_FREE_RUNS],
            len: 0,
            used_pages: 0,
            grown_pages: 0,
        }
    }

    /// Pages held by blocks now.
    pub fn used_pages(&self) -> usize {
        self.used_pages
    }

    /// Pages memory grew by for runs, used or not: what page runs cost.
    pub fn grown_pages(&self) -> usize {
        self.grown_pages
    }

    /// Pages free for reuse.
    #[cfg(test)]
    fn free_pages(&self) -> usize {
        self.free[..self.len].iter().map(|r| r.pages).sum()
    }

    /// The first page of `pages` free pages. `top` is the page count of the whole memory now
    /// (nothing may grow it before `grow` runs); when no free run is long enough, `grow(n)` must
    /// add `n` pages at the top and return the first new page number (`None` if memory cannot
    /// grow). A free run that ends at the top is extended rather than left behind.
    pub fn take(
        &mut self,
        pages: usize,
        top: usize,
        grow: impl FnOnce(usize) -> Option<usize>,
    ) -> Option<usize> {
        if pages == 0 {
            return None;
        }
        let best = (0..self.len)
            .filter(|&i| self.free[i].pages >= pages)
            .min_by_key(|&i| self.free[i].pages);
        let start = match best {
            Some(i) => {
                let run = &mut self.free[i];
                let start = run.start;
                run.start += pages;
                run.pages -= pages;
                if run.pages == 0 {
                    self.remove(i);
                }
                start
            }
            None => {
                let last = self.len.checked_sub(1).map(|i| self.free[i]);
                match last {
                    Some(run) if run.start + run.pages == top => {
                        grow(pages - run.pages)?;
                        self.grown_pages += pages - run.pages;
                        self.remove(self.len - 1);
                        run.start
                    }
                    _ => {
                        let start = grow(pages)?;
                        self.grown_pages += pages;
                        start
                    }
                }
            }
        };
        self.used_pages += pages;
        Some(start)
    }

    /// Returns a run taken before, merged with its free neighbours.
    pub fn give(&mut self, start: usize, pages: usize) {
        if pages == 0 {
            return;
        }
        self.used_pages = self.used_pages.saturating_sub(pages);
        let at = self.free[..self.len].partition_point(|r| r.start < start);
        let joins_left = at > 0 && {
            let left = self.free[at - 1];
            left.start + left.pages == start
        };
        let joins_right = at < self.len && start + pages == self.free[at].start;
        match (joins_left, joins_right) {
            (true, true) => {
                self.free[at - 1].pages += pages + self.free[at].pages;
                self.remove(at);
            }
            (true, false) => self.free[at - 1].pages += pages,
            (false, true) => {
                self.free[at].start = start;
                self.free[at].pages += pages;
            }
            (false, false) => {
                if self.len == MAX_FREE_RUNS {
                    return;
                }
                self.free.copy_within(at..self.len, at + 1);
                self.free[at] = Run { start, pages };
                self.len += 1;
            }
        }
    }

    fn remove(&mut self, i: usize) {
        self.free.copy_within(i + 1..self.len, i);
        self.len -= 1;
    }

    #[cfg(test)]
    fn runs(&self) -> Vec<Run> {
        self.free[..self.len].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A memory of `top` pages that grows at the top.
    struct Memory {
        top: usize,
        runs: PageRuns,
    }

    impl Memory {
        fn new(top: usize) -> Memory {
            Memory {
                top,
                runs: PageRuns::new(),
            }
        }

        fn take(&mut self, pages: usize) -> usize {
            let top = &mut self.top;
            let now = *top;
            self.runs
                .take(pages, now, |n| {
                    let first = *top;
                    *top += n;
                    Some(first)
                })
                .expect("memory grows")
        }
    }

    #[test]
    fn freed_runs_merge_with_their_neighbours_and_serve_a_larger_block_without_growing() {
        let mut m = Memory::new(10);
        let a = m.take(3);
        let b = m.take(3);
        let c = m.take(3);
        assert_eq!((a, b, c, m.top), (10, 13, 16, 19));
        m.runs.give(a, 3);
        m.runs.give(c, 3);
        m.runs.give(b, 3);
        assert_eq!(
            m.runs.runs(),
            vec![Run {
                start: 10,
                pages: 9
            }]
        );
        assert_eq!(m.take(8), 10);
        assert_eq!(m.top, 19, "the merged run served the block");
        assert_eq!(m.runs.used_pages(), 8);
    }

    #[test]
    fn best_fit_keeps_the_larger_hole_whole() {
        let mut m = Memory::new(0);
        let blocks: Vec<usize> = [4, 1, 2, 1].iter().map(|&p| m.take(p)).collect();
        m.runs.give(blocks[0], 4);
        m.runs.give(blocks[2], 2);
        assert_eq!(m.take(2), blocks[2], "the 2-page hole, not the 4-page one");
        assert_eq!(m.take(4), blocks[0]);
        assert_eq!(m.top, 8);
    }

    #[test]
    fn a_free_run_at_the_top_is_extended_instead_of_left_behind() {
        let mut m = Memory::new(5);
        let a = m.take(2);
        let b = m.take(2);
        m.runs.give(b, 2);
        let c = m.take(3);
        assert_eq!(c, b, "grew by one page past the free run");
        assert_eq!(m.top, 10);
        assert_eq!(m.runs.grown_pages(), 5);
        m.runs.give(a, 2);
        assert_eq!(m.runs.free_pages(), 2);
    }

    #[test]
    fn blocks_of_one_size_cycling_through_a_budget_never_grow_memory_past_the_most_held_at_once() {
        // Eight same-size buffers live at a time, freed in an arbitrary order and replaced:
        // memory ends at exactly eight buffers, however long this runs.
        let mut m = Memory::new(0);
        let mut live: Vec<usize> = (0..8).map(|_| m.take(7)).collect();
        let mut x = 12345u64;
        for _ in 0..10_000 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let i = (x >> 33) as usize % live.len();
            m.runs.give(live.swap_remove(i), 7);
            live.push(m.take(7));
        }
        assert_eq!(m.top, 56);
        assert_eq!(m.runs.grown_pages(), 56);
    }

    #[test]
    fn memory_that_cannot_grow_is_a_none_not_a_bogus_run() {
        let mut runs = PageRuns::new();
        assert_eq!(runs.take(3, 0, |_| None), None);
        assert_eq!(runs.used_pages(), 0);
        assert_eq!(runs.take(0, 0, |_| Some(0)), None);
    }
}
