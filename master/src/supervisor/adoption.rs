//! New master: the adapter of the adoption state machine (`crate::upgrade::adoption`). The
//! machine decides; this feeds it what the loop saw (adopted workers answering or exiting, the
//! previous master's pidfd, a stop, the clock) and carries out its commands.
//!
//! [`Supervisor::adopt`] takes the workers over (pidfd + channel EOF, no waitpid), checks that
//! each answers a status request, confirms readiness, tells the client `MasterReplaced`, and
//! with `--rolling` hands on to the rolling upgrade. If the previous master dies first (its
//! pidfd, or EPIPE on the readiness pipe), it confirms to nobody and takes full ownership.

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;

use zentinel_protocol::control::WorkerState as CtlState;
use zentinel_protocol::state::PendingUpgrade;

use super::upgrade::Inherited;
use super::*;
use crate::drain_deadline::{adopted_drain_deadline, ClockPair};
use crate::upgrade::adoption::{self as machine, Command, Event};
use crate::upgrade::{pidfd_exited, pidfd_open, write_ready, DEFAULT_READY_TIMEOUT};

/// New master: taking over until confirmed. The machine decides; this holds the status
/// requests, the previous master's pidfd and the client.
#[derive(Debug)]
pub(super) struct Adoption {
    machine: machine::Adoption,
    /// Each adopted worker's status request (answered: `all_answered`).
    waits: Vec<(Token, u64)>,
    previous_master_pid: u32,
    /// Readable once the previous master exited; registered under `UPGRADE_PIPE_TOKEN`.
    previous_master: Option<OwnedFd>,
    pending: Option<PendingUpgrade>,
    /// The upgrade's client: the inherited stream until `Prepare` registers it, then its token.
    client: Option<UnixStream>,
    client_token: Option<Token>,
    /// A test fault holding the confirmation back (never in a build without faults).
    hold: Hold,
}

/// How a test fault holds a new master before its confirmation, in its event loop: answers are
/// not reported to the adoption machine meanwhile (its deadline still counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
enum Hold {
    No,
    /// `takeover-delay`: until the previous master is gone (seen through its pidfd).
    UntilGone,
    /// `takeover-delay-unwatched`: no pidfd on the previous master, a fixed hold (5 s); its death
    /// then shows only as EPIPE on the readiness pipe.
    Until(Instant),
}

/// The hold of `takeover-delay-unwatched`.
#[cfg(feature = "fault-injection")]
const UNWATCHED_HOLD: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Take the previous master's workers over and start checking that they answer.
    pub(super) fn adopt(&mut self, inherited: Inherited) {
        // First: whatever fails below, the pipe closes only with the supervisor.
        self.ready_pipe = Some(inherited.ready_fd);
        self.previous_executable = Some(inherited.previous_executable);
        self.phase = Phase::Running;
        // For a draining worker whose record carries no deadline (a predecessor from before
        // state format 5): it was retired while the service went on.
        let drain = self.config.system.upgrade_drain();
        let clocks = ClockPair::now();
        let mut adopted = Vec::new();
        for (record, channel_fd) in inherited.workers {
            let pid = Pid::from_raw(i32::try_from(record.pid).unwrap_or(0));
            let pidfd = match pidfd_open(pid) {
                Ok(fd) => fd,
                Err(err) if err.raw_os_error() == Some(libc::ESRCH) => {
                    // Gone already: its slot gets a new worker once the takeover is confirmed.
                    warn!(worker_id = record.id, pid = record.pid, error = %err, "adopted worker is gone");
                    continue;
                }
                Err(err) => {
                    // Alive but unwatchable (EMFILE under a low open-file limit, say): this
                    // master could not supervise it, so the previous one must stay.
                    return self.abandon_takeover(format!(
                        "cannot watch adopted worker {} (pid {}): pidfd_open: {err}",
                        record.id, record.pid
                    ));
                }
            };
            let token = Self::alloc_token(&mut self.next_token);
            let pidfd_token = Self::alloc_token(&mut self.next_token);
            let retired = record.state == CtlState::Draining;
            // The deadline it was retired with, whatever our configuration says (issue 14).
            let drain_deadline = retired
                .then(|| adopted_drain_deadline(record.drain_deadline_monotonic_ms, clocks, drain));
            let drain_left_ms = drain_deadline.map(|deadline| {
                let left = deadline.saturating_duration_since(Instant::now());
                u64::try_from(left.as_millis()).unwrap_or(u64::MAX)
            });
            let mut process = WorkerProcess::new(NewWorker {
                worker_id: record.id,
                generation: record.generation,
                role: if retired {
                    Role::Retired
                } else {
                    Role::Current
                },
                pid,
                channel: Channel::from_owned_fd(channel_fd),
                token,
                state: if retired {
                    WorkerState::Draining
                } else {
                    WorkerState::Running
                },
                spawned_at: instant_of_unix_ms(record.started_at_unix_ms),
                ready_at: Some(Instant::now()),
                version: Some(record.version),
                protocol_version: record.protocol_version,
                counters: Some(record.counters),
                drain_deadline,
                binary: record.binary,
                ready_timeout: HANDSHAKE_TIMEOUT,
                ownership: inherited.ownership.clone(),
            });
            let registry = self.poll.registry();
            let registered = register_channel(registry, &mut process).and_then(|()| {
                registry
                    .register(
                        &mut SourceFd(&pidfd.as_raw_fd()),
                        pidfd_token,
                        Interest::READABLE,
                    )
                    .map_err(ProtocolError::from)
            });
            process.watch_through(pidfd, pidfd_token);
            self.pidfds.insert(pidfd_token, token);
            info!(
                worker_id = process.worker_id(),
                pid = record.pid,
                generation = process.generation(),
                retired,
                drain_left_ms,
                drain_deadline_recorded = record.drain_deadline_monotonic_ms.is_some(),
                "adopted worker"
            );
            if !retired {
                if let Some(index) = self.slot_index(process.worker_id()) {
                    if self.slots[index].current.is_none() {
                        self.slots[index].current = Some(token);
                    } else {
                        process.set_role(Role::Retired);
                    }
                } else {
                    // The configuration has fewer workers than were running: not ours to keep.
                    process.set_role(Role::Retired);
                }
            }
            self.processes.insert(token, process);
            if let Err(err) = registered {
                return self.abandon_takeover(format!(
                    "cannot poll adopted worker {} (pid {}): {err}",
                    record.id, record.pid
                ));
            }
            adopted.push(token);
        }
        let now = Instant::now();
        for slot in &mut self.slots {
            if slot.current.is_none() {
                slot.restart_at = Some(now);
            }
        }
        let ready_timeout = inherited
            .upgrade
            .as_ref()
            .map_or(DEFAULT_READY_TIMEOUT, |u| {
                Duration::from_millis(u.ready_timeout_ms)
            });
        let waits: Vec<(Token, u64)> = adopted
            .into_iter()
            .filter_map(|token| self.ask_status(token).map(|seq| (token, seq)))
            .collect();
        let waiting: BTreeMap<usize, String> = waits
            .iter()
            .filter_map(|(token, _)| {
                let p = self.processes.get(token)?;
                Some((
                    token.0,
                    format!("worker {} (pid {})", p.worker_id(), p.pid()),
                ))
            })
            .collect();
        let hold = hold_fault(now);
        let (previous_master, previous_gone) = if matches!(hold, Hold::Until(_)) {
            (None, false)
        } else {
            self.watch_previous_master(inherited.previous_master_pid)
        };
        let rolling = inherited.upgrade.as_ref().is_some_and(|u| u.rolling);
        self.adoption = Some(Adoption {
            machine: machine::Adoption::new(
                waiting,
                now + ready_timeout,
                rolling,
                inherited.client.is_some(),
            ),
            waits,
            previous_master_pid: inherited.previous_master_pid,
            previous_master,
            pending: inherited.upgrade,
            client: inherited.client,
            client_token: None,
            hold,
        });
        if previous_gone {
            self.previous_master_gone();
        }
        match hold {
            Hold::No => {}
            Hold::UntilGone => warn!(
                "fault injection: takeover-delay: holding the confirmation until the previous \
                 master is gone"
            ),
            Hold::Until(_) => warn!(
                "fault injection: takeover-delay-unwatched: holding the confirmation, the \
                 previous master unwatched"
            ),
        }
        self.adoption_progress();
    }

    /// A test fault holds the confirmation back now.
    fn takeover_held(&self) -> bool {
        self.adoption.as_ref().is_some_and(|a| match a.hold {
            Hold::No => false,
            Hold::UntilGone => !a.machine.previous_gone(),
            Hold::Until(at) => Instant::now() < at,
        })
    }

    /// A pidfd of the previous master, registered, and whether it is gone already. It is our
    /// parent: while `getppid` still names it, the pidfd opened before cannot be of another
    /// process that reused its pid. Without a pidfd, its death shows only as EPIPE on the
    /// readiness pipe.
    fn watch_previous_master(&self, pid: u32) -> (Option<OwnedFd>, bool) {
        let Ok(raw) = i32::try_from(pid) else {
            return (None, false);
        };
        let pidfd = match pidfd_open(Pid::from_raw(raw)) {
            Ok(fd) => fd,
            Err(err) if err.raw_os_error() == Some(libc::ESRCH) => return (None, true),
            Err(err) => {
                warn!(previous_master_pid = pid, error = %err, "cannot watch the previous master");
                return (None, false);
            }
        };
        if nix::unistd::getppid().as_raw() != raw {
            return (None, true);
        }
        let registered = self.poll.registry().register(
            &mut SourceFd(&pidfd.as_raw_fd()),
            UPGRADE_PIPE_TOKEN,
            Interest::READABLE,
        );
        match registered {
            Ok(()) => (Some(pidfd), false),
            Err(err) => {
                warn!(previous_master_pid = pid, error = %err, "cannot watch the previous master");
                (None, false)
            }
        }
    }

    /// The previous master's pidfd is readable (through `handover_readable`).
    pub(super) fn previous_master_event(&mut self) {
        let gone = self
            .adoption
            .as_ref()
            .and_then(|a| a.previous_master.as_ref())
            .is_some_and(pidfd_exited);
        if gone {
            self.previous_master_gone();
        }
    }

    fn previous_master_gone(&mut self) {
        let Some(adoption) = self.adoption.as_mut() else {
            return;
        };
        if let Some(pidfd) = adoption.previous_master.take() {
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
        }
        warn!(
            previous_master_pid = adoption.previous_master_pid,
            "the previous master is gone before this master confirmed readiness"
        );
        self.adoption_event(Event::PreviousMasterGone);
    }

    /// An adopted worker's pidfd became readable: it exited (status unknown: not our child).
    pub(super) fn adopted_exited(&mut self, token: Token) {
        let Some(process) = self.processes.get(&token) else {
            return;
        };
        if let Some((pidfd, pidfd_token)) = process.pidfd() {
            if !pidfd_exited(pidfd) {
                return;
            }
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
            self.pidfds.remove(pidfd_token);
        }
        let clean =
            process.channel_closed_at().is_some() || matches!(process.role(), Role::Retired);
        self.worker_exited(token, "exited (adopted: exit status unknown)", clean);
        if !self.takeover_held() {
            self.adoption_event(Event::WorkerExited(token.0));
        }
        self.adoption_progress();
    }

    /// Feed the adoption the answers that came (after a status reply, an exit, a closed
    /// channel).
    pub(super) fn adoption_progress(&mut self) {
        if self.takeover_held() {
            return;
        }
        let Some(adoption) = self.adoption.as_ref() else {
            return;
        };
        let answered: Vec<usize> = adoption
            .waits
            .iter()
            .filter(|&&wait| self.all_answered(&[wait]))
            .map(|(token, _)| token.0)
            .filter(|key| adoption.machine.waiting().contains(key))
            .collect();
        for key in answered {
            self.adoption_event(Event::WorkerAnswered(key));
        }
        // Settles an adoption of no worker at all.
        self.adoption_event(Event::Tick);
    }

    /// The adoption's deadline (from `upgrade_timers`).
    pub(super) fn adoption_timers(&mut self, now: Instant) {
        if let Some(adoption) = self.adoption.as_mut() {
            if matches!(adoption.hold, Hold::Until(at) if at <= now) {
                adoption.hold = Hold::No;
                self.adoption_progress();
            }
        }
        let due = self
            .adoption
            .as_ref()
            .and_then(|a| a.machine.deadline())
            .is_some_and(|at| at <= now);
        if due {
            self.adoption_event(Event::Tick);
        }
    }

    pub(super) fn adoption_deadline(&self) -> Option<Instant> {
        let adoption = self.adoption.as_ref()?;
        let hold = match adoption.hold {
            Hold::Until(at) => Some(at),
            Hold::No | Hold::UntilGone => None,
        };
        adoption.machine.deadline().into_iter().chain(hold).min()
    }

    /// A stop signal while adopting: before the confirmation it abandons the takeover.
    pub(super) fn adoption_stop(&mut self, what: String) {
        if self.adoption.is_some() {
            self.adoption_event(Event::StopRequested(what));
        } else {
            self.abandon_takeover(format!("{what} before the takeover was confirmed"));
        }
    }

    fn adoption_event(&mut self, event: Event) {
        let Some(adoption) = self.adoption.as_mut() else {
            return;
        };
        for command in adoption.machine.handle(event, Instant::now()) {
            self.adoption_command(command);
        }
        if self.adoption.as_ref().is_some_and(|a| a.machine.finished()) {
            if let Some(pidfd) = self.adoption.take().and_then(|a| a.previous_master) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&pidfd.as_raw_fd()));
            }
        }
    }

    fn adoption_command(&mut self, command: Command) {
        match command {
            Command::Prepare => self.adoption_prepare(),
            Command::ConfirmReadiness => {
                let event = match self.ready_pipe.take().map(write_ready) {
                    Some(Ok(())) => Event::ReadyWritten,
                    Some(Err(err)) => {
                        warn!(error = %err, "cannot write READY on the readiness pipe");
                        Event::ReadyFailed {
                            peer_gone: err.kind() == io::ErrorKind::BrokenPipe,
                            reason: err.to_string(),
                        }
                    }
                    None => Event::ReadyFailed {
                        peer_gone: false,
                        reason: "the readiness pipe is gone".to_owned(),
                    },
                };
                self.adoption_event(event);
            }
            Command::TakeOwnership { confirmed } => self.adoption_take_ownership(confirmed),
            Command::AnswerReplaced => {
                let Some(adoption) = self.adoption.as_ref() else {
                    return;
                };
                let replaced = ControlResponse::MasterReplaced {
                    old_pid: adoption.previous_master_pid,
                    new_pid: std::process::id(),
                    ready_ms: ready_ms(self.started_at),
                    generation: self.generation,
                    binary: self.executable.path().display().to_string(),
                };
                self.upgrade_respond(adoption.client_token, replaced, false);
            }
            Command::BeginRolling => {
                let Some(adoption) = self.adoption.as_ref() else {
                    return;
                };
                if let Some(pending) = adoption.pending.clone() {
                    self.begin_rolling(adoption.client_token, &pending);
                }
            }
            Command::AnswerDone => {
                let client = self.adoption.as_ref().and_then(|a| a.client_token);
                self.metrics_upgrade_finished(true);
                let message = format!(
                    "upgrade complete: master on {}, generation {} (workers not replaced)",
                    self.executable.path().display(),
                    self.generation
                );
                self.upgrade_respond(client, ControlResponse::Done { message }, true);
            }
            Command::Abandon(reason) => self.abandon_takeover(reason),
        }
    }

    /// Everything confirming needs that can fail, then the pid file and systemd.
    fn adoption_prepare(&mut self) {
        let client = self.adoption.as_mut().and_then(|a| a.client.take());
        let client_token = match self.prepare_confirmation(client) {
            Ok(token) => token,
            Err(reason) => {
                error!(reason = %reason, "cannot prepare the confirmation");
                return self.adoption_event(Event::PrepareFailed(reason));
            }
        };
        if let Some(adoption) = self.adoption.as_mut() {
            adoption.client_token = client_token;
        }
        if self.takeover_fault() {
            return;
        }
        let previous = self.adoption.as_ref().map_or(0, |a| a.previous_master_pid);
        // systemd (Type=notify, NotifyAccess=all): we are the main process from here on.
        // Said BEFORE the previous master learns that we are ready, so the datagram is
        // queued before that master can exit: systemd reads notifications ahead of SIGCHLD,
        // and sees the main pid move instead of the main process dying. If confirming fails
        // after this, the previous master takes MAINPID back (`handover_kill`).
        self.write_pid_file();
        crate::systemd::ready(&format!(
            "serving: took over from pid {previous} (generation {}, binary {})",
            self.generation,
            self.executable.path().display()
        ));
        self.adoption_event(Event::Prepared);
    }

    fn adoption_take_ownership(&mut self, confirmed: bool) {
        let previous = self.adoption.as_ref().map_or(0, |a| a.previous_master_pid);
        if !confirmed {
            // Nobody reads it any more.
            self.ready_pipe = None;
            warn!(
                previous_master_pid = previous,
                "the previous master is gone: readiness confirmed to nobody; taking full \
                 ownership of everything adopted"
            );
        }
        self.confirm_takeover();
        info!(
            previous_master_pid = previous,
            generation = self.generation,
            binary = %self.executable.path().display(),
            workers = self.processes.len(),
            ready_ms = ready_ms(self.started_at),
            confirmed,
            "took over from the previous master"
        );
    }
}

/// The hold a test fault asks for.
#[cfg(feature = "fault-injection")]
fn hold_fault(now: Instant) -> Hold {
    use zentinel_worker::fault_injection::{armed, Fault};
    match armed() {
        Some(Fault::TakeoverDelay) => Hold::UntilGone,
        Some(Fault::TakeoverDelayUnwatched) => Hold::Until(now + UNWATCHED_HOLD),
        _ => Hold::No,
    }
}

/// No faults in this build.
#[cfg(not(feature = "fault-injection"))]
fn hold_fault(_now: Instant) -> Hold {
    Hold::No
}

/// From the old master's fork to readiness.
fn ready_ms(started_at: Instant) -> u64 {
    let ready = crate::upgrade::time_since_spawn().unwrap_or_else(|| started_at.elapsed());
    u64::try_from(ready.as_millis()).unwrap_or(u64::MAX)
}

/// The monotonic instant of a wall-clock time from the state file (uptimes in status).
fn instant_of_unix_ms(ms: u64) -> Instant {
    let now_ms = super::handover::unix_ms_ago(Duration::ZERO);
    let ago = Duration::from_millis(now_ms.saturating_sub(ms));
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}
