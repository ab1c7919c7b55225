//! Driving `h2` futures from the mio loop without a runtime: a waker that only records that
//! h2 asked to be polled again. A connection runs, then runs again while the waker fired.
//! h2 handles are owned by the connection alone (client side and upstream side alike), so
//! every wake happens inside a run and nothing needs to be scheduled from elsewhere.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

/// Runs of a connection per event before other work gets its turn.
pub const MAX_PASSES: usize = 32;

/// Records that h2 wants to be polled again.
struct RunAgain(AtomicBool);

impl Wake for RunAgain {
    fn wake(self: Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.store(true, Ordering::Relaxed);
    }
}

pub struct Driver {
    run_again: Arc<RunAgain>,
    waker: Waker,
}

impl Default for Driver {
    fn default() -> Self {
        let run_again = Arc::new(RunAgain(AtomicBool::new(false)));
        let waker = Waker::from(Arc::clone(&run_again));
        Driver { run_again, waker }
    }
}

impl Driver {
    /// The waker every poll of this connection registers.
    pub fn waker(&self) -> Waker {
        self.waker.clone()
    }

    /// A new pass starts: forget earlier wakes.
    pub fn start_pass(&self) {
        self.run_again.0.store(false, Ordering::Relaxed);
    }

    /// Run again after this pass (the connection queued something h2 sends when polled).
    pub fn request_run(&self) {
        self.run_again.0.store(true, Ordering::Relaxed);
    }

    /// Something was woken during the pass: run again.
    pub fn again(&self) -> bool {
        self.run_again.0.load(Ordering::Relaxed)
    }

    /// Poll once outside a run (closing a connection): `f` gets a context.
    pub fn with_context<R>(&self, f: impl FnOnce(&mut Context<'_>) -> R) -> R {
        let waker = self.waker();
        let mut cx = Context::from_waker(&waker);
        f(&mut cx)
    }
}
