//! Test support shared by the native tests of the layers that wait: a virtual clock whose timers
//! fire only when the test driver advances time, so deadlines, backoff and slow I/O are exact
//! and instant.
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use futures::executor::LocalPool;

use crate::clock::Clock;

/// Starts at zero; moves only when the driver ([`run`](VirtualClock::run),
/// [`block_on`](VirtualClock::block_on)) finds nothing else to do, or when a test sets it.
#[derive(Clone, Default)]
pub struct VirtualClock(Rc<ClockState>);

#[derive(Default)]
struct ClockState {
    now: Cell<Duration>,
    timers: RefCell<Vec<(Duration, Waker)>>,
    /// Every wait asked of `sleep`, in order.
    sleeps: RefCell<Vec<Duration>>,
}

struct Sleep {
    clock: VirtualClock,
    until: Duration,
}

impl Future for Sleep {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.clock.now() >= self.until {
            return Poll::Ready(());
        }
        let timers = &self.clock.0.timers;
        timers.borrow_mut().push((self.until, cx.waker().clone()));
        Poll::Pending
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Duration {
        self.0.now.get()
    }

    async fn sleep(&self, wait: Duration) {
        self.0.sleeps.borrow_mut().push(wait);
        let until = self.now().saturating_add(wait);
        Sleep {
            clock: self.clone(),
            until,
        }
        .await
    }
}

/// Whether a future's waker was called since the flag was last cleared.
#[derive(Default)]
struct Woken(AtomicBool);

impl Wake for Woken {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::SeqCst);
    }
}

impl VirtualClock {
    /// Moves time to the earliest pending timer and wakes every timer due by then; false when
    /// no timer is pending.
    fn advance(&self) -> bool {
        let mut timers = self.0.timers.borrow_mut();
        let Some(next) = timers.iter().map(|(t, _)| *t).min() else {
            return false;
        };
        self.0.now.set(self.now().max(next));
        let now = self.now();
        let (due, later): (Vec<_>, Vec<_>) = timers.drain(..).partition(|(t, _)| *t <= now);
        *timers = later;
        drop(timers);
        due.into_iter().for_each(|(_, waker)| waker.wake());
        true
    }

    /// Moves time on to `now` at once, as work that takes time without a timer does (a scripted
    /// attempt's latency) or time passing between requests; timers due by then fire when the
    /// driver next advances.
    pub fn set(&self, now: Duration) {
        assert!(now >= self.now(), "virtual time only moves forward");
        self.0.now.set(now);
    }

    /// Every wait asked of [`sleep`](Clock::sleep) so far, in order.
    pub fn sleeps(&self) -> Vec<Duration> {
        self.0.sleeps.borrow().clone()
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

    /// Runs `future` to completion, advancing virtual time whenever it waits on nothing but
    /// timers. It may borrow from the caller: it is polled here, not spawned.
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(woken.clone());
        let mut cx = Context::from_waker(&waker);
        let mut future = pin!(future);
        loop {
            woken.0.store(false, Ordering::SeqCst);
            if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
                return out;
            }
            if !woken.0.load(Ordering::SeqCst) {
                assert!(self.advance(), "the future waits, and on no timer");
            }
        }
    }
}
