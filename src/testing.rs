//! Test support shared by the native tests of the layers that wait: a virtual clock whose timers
//! fire only when the test driver advances time, so deadlines and slow I/O are exact and instant.
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::executor::LocalPool;
use futures::task::LocalSpawnExt;

use crate::retrieve::Clock;

#[derive(Clone, Default)]
pub struct VirtualClock(Rc<ClockState>);

#[derive(Default)]
struct ClockState {
    now: Cell<f64>,
    timers: RefCell<Vec<(f64, Waker)>>,
}

struct Sleep {
    clock: VirtualClock,
    until: f64,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now_ms() >= self.until {
            return Poll::Ready(());
        }
        let timers = &self.clock.0.timers;
        timers.borrow_mut().push((self.until, cx.waker().clone()));
        Poll::Pending
    }
}

impl Clock for VirtualClock {
    fn now_ms(&self) -> f64 {
        self.0.now.get()
    }

    async fn sleep(&self, ms: f64) {
        let until = self.now_ms() + ms;
        Sleep {
            clock: self.clone(),
            until,
        }
        .await
    }
}

impl VirtualClock {
    /// Moves time to the earliest pending timer and wakes every timer due by then; false when
    /// no timer is pending.
    fn advance(&self) -> bool {
        let mut timers = self.0.timers.borrow_mut();
        let Some(next) = timers.iter().map(|(t, _)| *t).reduce(f64::min) else {
            return false;
        };
        self.0.now.set(self.now_ms().max(next));
        let now = self.now_ms();
        let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(t, _)| *t <= now);
        *timers = later;
        drop(timers);
        due.into_iter().for_each(|(_, waker)| waker.wake());
        true
    }

    /// Runs `pool` until every task is done, advancing virtual time whenever nothing can run.
    pub fn run(&self, pool: &mut LocalPool) {
        loop {
            pool.run_until_stalled();
            if !self.advance() {
                return;
            }
        }
    }

    /// Runs `future` to completion on a pool of its own (with whatever it spawns there).
    pub fn block_on<F: Future + 'static>(&self, future: F) -> F::Output {
        let mut pool = LocalPool::new();
        let out = Rc::new(RefCell::new(None));
        let slot = out.clone();
        pool.spawner()
            .spawn_local(async move { *slot.borrow_mut() = Some(future.await) })
            .expect("a local pool accepts tasks");
        self.run(&mut pool);
        let result = out.borrow_mut().take();
        result.expect("the future finished once no timer was left")
    }
}
