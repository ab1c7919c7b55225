//! A worker's connections to one Redis server: a few threads, each with its own blocking
//! connection, fed by one bounded queue, answering into per-request slots and waking the
//! event loop (the helper threads' waker, see `wakeups`) with the sessions to run again.
//!
//! Blocking connections on threads rather than an async client: the worker's event loop is
//! mio, not a runtime an async client could run on, and one thread per connection keeps the
//! loop free of any Redis I/O; a thread pipelines whatever queued up while it waited, so a few
//! of them carry a worker's load.
//!
//! Health: a thread that loses its connection (or cannot make one) retries with a doubling
//! backoff (never a connection per request); when no thread of the backend is connected the
//! backend is *down*: one warning per outage, and checks skip Redis (the failure mode decides)
//! until a thread connects again, which is logged too.
//!
//! Backends are shared by the filters (and the generations) that name the same server with
//! the same pool size and timeout: a reload does not reconnect. The last filter to drop one
//! closes its queue, and its threads exit.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use tracing::{error, info, warn};

use super::script::{Call, Reply, Scripted};

/// Threads (connections) per backend and worker, at most: each pipelines, so more would only
/// add idle connections.
pub const MAX_CONNECTIONS: u32 = 4;
/// Queued checks per connection: past it a check fails at once (the queue is full).
const QUEUE_PER_CONNECTION: usize = 256;
/// Calls a thread sends in one round trip, at most.
const BATCH: usize = 64;
/// Reconnection backoff: first wait, and the most it doubles to.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Connect, read and write timeout of a connection: the checks' own deadline is shorter
/// (`redis-timeout-ms`, enforced by the session), this one only decides when a silent server
/// counts as lost.
const IO_TIMEOUT_MIN: Duration = Duration::from_millis(500);

/// The answer to one check, filled by a Redis thread (or never, past its deadline).
pub type Slot = OnceLock<Result<Reply, String>>;

/// One check queued for a Redis thread.
struct Job {
    call: Call,
    /// Past it the session decided without Redis: the call is not sent.
    deadline: Instant,
    /// The session to run again with the answer.
    session: usize,
    slot: Arc<Slot>,
}

/// Which backend: the server and the settings its threads were started with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendKey {
    pub url: String,
    pub pool_size: u32,
    pub timeout_ms: u64,
}

/// Shared by a backend's threads and the event loop.
#[derive(Debug, Default)]
struct Health {
    /// Threads with a working connection.
    connected: AtomicUsize,
    /// An outage is going on (warned once; checks skip Redis).
    down: AtomicBool,
}

impl Health {
    fn connected(&self, url: &str) {
        self.connected.fetch_add(1, Ordering::SeqCst);
        if self.down.swap(false, Ordering::SeqCst) {
            info!(
                redis = url,
                "Redis reachable again: shared rate limits resume"
            );
        }
    }

    /// A thread lost its connection (`was_connected`) or could not make one.
    fn failed(&self, url: &str, was_connected: bool, error: &redis::RedisError) {
        let left = if was_connected {
            self.connected
                .fetch_sub(1, Ordering::SeqCst)
                .saturating_sub(1)
        } else {
            self.connected.load(Ordering::SeqCst)
        };
        if left == 0 && !self.down.swap(true, Ordering::SeqCst) {
            warn!(
                redis = url,
                error = %error,
                "Redis unreachable: rate limits on it use their failure mode until it is back \
                 (reconnecting with backoff)"
            );
        }
    }
}

/// A worker's connections to one server.
#[derive(Debug)]
pub struct Backend {
    key: BackendKey,
    jobs: Option<Sender<Job>>,
    health: Arc<Health>,
    closed: Arc<AtomicBool>,
}

impl Drop for Backend {
    /// Its threads exit: those waiting for work see the queue closed, those waiting to
    /// reconnect see `closed`.
    fn drop(&mut self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// Why a check could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSent {
    /// The backend is down (or could never start): no attempt was made.
    Down,
    /// The queue is full: Redis is not keeping up.
    QueueFull,
}

impl Backend {
    /// The backend of `key` for this worker thread: the running one, or a new one.
    pub fn get(key: &BackendKey) -> Rc<Backend> {
        BACKENDS.with(|b| {
            let mut map = b.borrow_mut();
            map.retain(|_, w| w.strong_count() > 0);
            if let Some(live) = map.get(key).and_then(Weak::upgrade) {
                return live;
            }
            let backend = Rc::new(Backend::start(key.clone()));
            map.insert(key.clone(), Rc::downgrade(&backend));
            backend
        })
    }

    fn start(key: BackendKey) -> Backend {
        let health = Arc::new(Health::default());
        let closed = Arc::new(AtomicBool::new(false));
        let client = match redis::Client::open(key.url.as_str()) {
            Ok(c) => c,
            Err(e) => {
                error!(redis = %key.url, error = %e, "invalid redis-url: rate limits on it use their failure mode");
                health.down.store(true, Ordering::SeqCst);
                return Backend {
                    key,
                    jobs: None,
                    health,
                    closed,
                };
            }
        };
        let threads = key.pool_size.clamp(1, MAX_CONNECTIONS);
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_PER_CONNECTION * threads as usize);
        let io_timeout =
            Duration::from_millis(key.timeout_ms.saturating_mul(4)).max(IO_TIMEOUT_MIN);
        let waker = crate::wakeups::helper_waker_if_any();
        let done = ANSWERED.with(|(tx, _)| tx.clone());
        let mut started = 0;
        for i in 0..threads {
            let conn = Conn {
                url: key.url.clone(),
                client: client.clone(),
                io_timeout,
                jobs: rx.clone(),
                health: Arc::clone(&health),
                closed: Arc::clone(&closed),
                waker: waker.clone(),
                done: done.clone(),
            };
            match thread::Builder::new()
                .name(format!("redis-{i}"))
                .stack_size(256 * 1024)
                .spawn(move || conn.run())
            {
                Ok(_) => started += 1,
                Err(e) => error!(redis = %key.url, error = %e, "cannot start a Redis thread"),
            }
        }
        if started == 0 {
            health.down.store(true, Ordering::SeqCst);
        }
        Backend {
            key,
            jobs: (started > 0).then_some(tx),
            health,
            closed,
        }
    }

    /// Queue one check for `session`; the answer lands in the returned slot, and the session
    /// is run again then.
    pub fn send(
        &self,
        call: Call,
        deadline: Instant,
        session: usize,
    ) -> Result<Arc<Slot>, NotSent> {
        let Some(jobs) = &self.jobs else {
            return Err(NotSent::Down);
        };
        if self.health.down.load(Ordering::SeqCst) {
            return Err(NotSent::Down);
        }
        let slot = Arc::new(Slot::new());
        let job = Job {
            call,
            deadline,
            session,
            slot: Arc::clone(&slot),
        };
        match jobs.try_send(job) {
            Ok(()) => Ok(slot),
            Err(TrySendError::Full(_)) => Err(NotSent::QueueFull),
            Err(TrySendError::Disconnected(_)) => Err(NotSent::Down),
        }
    }

    pub fn url(&self) -> &str {
        &self.key.url
    }
}

thread_local! {
    /// This worker's backends (the event loop's thread).
    static BACKENDS: RefCell<HashMap<BackendKey, Weak<Backend>>> = RefCell::new(HashMap::new());
    /// Sessions whose check was answered, sent by the Redis threads of this worker.
    static ANSWERED: (Sender<usize>, Receiver<usize>) = crossbeam_channel::unbounded();
}

/// The event loop was woken by a helper thread: queue the sessions whose Redis check was
/// answered to run again (see `wakeups`).
pub fn wake_answered() {
    let _ = ANSWERED.try_with(|(_, rx)| {
        for session in rx.try_iter() {
            crate::wakeups::wake(crate::wakeups::Wake::Session(session));
        }
    });
}

/// One Redis thread.
struct Conn {
    url: String,
    client: redis::Client,
    io_timeout: Duration,
    jobs: Receiver<Job>,
    health: Arc<Health>,
    /// The backend was dropped: a thread waiting to reconnect exits.
    closed: Arc<AtomicBool>,
    waker: Option<Arc<mio::Waker>>,
    /// Sessions to run again (read by the event loop when woken).
    done: Sender<usize>,
}

impl Conn {
    fn run(self) {
        let mut con: Option<Scripted> = None;
        let mut backoff = BACKOFF_MIN;
        loop {
            // Not connected: connect, or wait for the next try without taking work (the
            // connected threads take it; with none, the backend is down and gets none).
            while con.is_none() {
                if self.closed.load(Ordering::SeqCst) {
                    return;
                }
                match Scripted::connect(&self.client, self.io_timeout) {
                    Ok(c) => {
                        con = Some(c);
                        backoff = BACKOFF_MIN;
                        self.health.connected(&self.url);
                    }
                    Err(e) => {
                        self.health.failed(&self.url, false, &e);
                        thread::sleep(backoff);
                        backoff = (backoff * 2).min(BACKOFF_MAX);
                    }
                }
            }
            let Ok(first) = self.jobs.recv() else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < BATCH {
                match self.jobs.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            // The sessions of expired checks decided without Redis: do not count them there.
            let now = Instant::now();
            batch.retain(|j| j.deadline > now);
            if batch.is_empty() {
                continue;
            }
            let calls: Vec<Call> = batch.iter().map(|j| j.call.clone()).collect();
            let answers = match con.as_mut().map(|c| c.run(&calls)) {
                Some(Ok(list)) => list,
                Some(Err(e)) => {
                    self.health.failed(&self.url, true, &e);
                    con = None;
                    let why = format!("Redis connection lost: {e}");
                    batch.iter().map(|_| Err(why.clone())).collect()
                }
                None => batch
                    .iter()
                    .map(|_| Err("not connected".to_owned()))
                    .collect(),
            };
            for (job, answer) in batch.iter().zip(answers) {
                let _ = job.slot.set(answer);
                if self.done.send(job.session).is_err() {
                    return;
                }
            }
            if let Some(w) = &self.waker {
                // A failed wake only delays the answers to the sessions' deadlines.
                let _ = w.wake();
            }
        }
    }
}
