//! `system { max-draining-generations }`: how many generations of retired workers may drain at
//! once before the oldest is asked to finish now (design: `docs/design/drain-deadlines.md`).
//!
//! Overlapping upgrades leave one generation of retired workers draining per upgrade, each
//! with its own deadline (which later hand-overs keep). Nothing is lost by that, but every
//! draining worker is a process with its memory and descriptors, and most of what keeps an
//! old one alive late in its drain is idle keep-alive connections, which the close spread
//! keeps until near its deadline. Past the limit, the oldest draining generation is asked to
//! finish now: its workers close their idle connections at once; requests in flight, downloads
//! and tunnels keep their deadline.
//!
//! A state machine without processes or channels: it owns which workers drain, of which
//! generation, and which were asked to finish; the supervisor feeds it what happens and sends
//! `FinishDrain` where it says. A generation asked to finish no longer counts against the
//! limit (it has been dealt with), so each upgrade past the limit asks the next oldest.

use std::collections::{BTreeMap, BTreeSet};

/// What the supervisor saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<K> {
    /// `worker` of `generation` started draining: retired by this master, or adopted
    /// draining once the takeover is confirmed.
    Retired { worker: K, generation: u64 },
    /// `worker` exited (or is otherwise gone).
    Exited { worker: K },
    /// A reload set `max-draining-generations` to this.
    Limit(u32),
}

/// What the supervisor must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command<K> {
    /// Ask `worker` (of `generation`) to finish now: close its idle connections at once.
    FinishNow { worker: K, generation: u64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Draining {
    generation: u64,
    finishing: bool,
}

#[derive(Debug)]
pub struct DrainingGenerations<K> {
    limit: u32,
    workers: BTreeMap<K, Draining>,
}

impl<K: Ord + Copy> DrainingGenerations<K> {
    pub fn new(limit: u32) -> Self {
        DrainingGenerations {
            limit,
            workers: BTreeMap::new(),
        }
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// `worker` was asked to finish now.
    pub fn finishing(&self, worker: K) -> bool {
        self.workers.get(&worker).is_some_and(|d| d.finishing)
    }

    /// The generations draining and not asked to finish, oldest first.
    pub fn unfinished_generations(&self) -> BTreeSet<u64> {
        self.workers
            .values()
            .filter(|d| !d.finishing)
            .map(|d| d.generation)
            .collect()
    }

    pub fn handle(&mut self, event: Event<K>) -> Vec<Command<K>> {
        match event {
            Event::Retired { worker, generation } => {
                // A worker joining a generation already asked to finish finishes with it.
                let finishing = self
                    .workers
                    .values()
                    .any(|d| d.generation == generation && d.finishing);
                if self.workers.contains_key(&worker) {
                    return Vec::new();
                }
                self.workers.insert(
                    worker,
                    Draining {
                        generation,
                        finishing,
                    },
                );
                let mut out = Vec::new();
                if finishing {
                    out.push(Command::FinishNow { worker, generation });
                }
                out.extend(self.enforce());
                out
            }
            Event::Exited { worker } => {
                self.workers.remove(&worker);
                Vec::new()
            }
            Event::Limit(limit) => {
                self.limit = limit;
                self.enforce()
            }
        }
    }

    /// While more unfinished generations drain than the limit, ask the oldest to finish.
    fn enforce(&mut self) -> Vec<Command<K>> {
        let mut out = Vec::new();
        loop {
            let unfinished = self.unfinished_generations();
            let over = u32::try_from(unfinished.len()).unwrap_or(u32::MAX) > self.limit;
            let Some(&oldest) = unfinished.first().filter(|_| over) else {
                return out;
            };
            for (&worker, d) in self.workers.iter_mut() {
                if d.generation == oldest && !d.finishing {
                    d.finishing = true;
                    out.push(Command::FinishNow {
                        worker,
                        generation: oldest,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "draining_generations_tests.rs"]
mod tests;
