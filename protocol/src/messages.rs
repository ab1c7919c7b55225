//! Messages exchanged between the master and its workers.
//!
//! The first message each way is a [`Hello`] carrying [`PROTOCOL_VERSION`]; a peer speaking
//! another version is refused with an error naming both versions.

// rkyv's `Archive` derive gives the resolver of an enum with struct variants (generated next
// to it, in this module) fields without docs, which nothing but a module-level attribute can
// reach. Every item written here is documented all the same.
#![allow(
    missing_docs,
    reason = "the Archive derive leaves its resolvers' struct-variant fields undocumented"
)]

use rkyv::{Archive, Deserialize, Serialize};

use crate::config::ProxyConfig;
use crate::filter_shm::FilterSegmentHandle;
pub use crate::niche::ZeroOffset;
use crate::session_cache::SessionCacheHandle;
use crate::ticket_keys::TicketKeys;

/// Bumped whenever a message layout changes incompatibly, or a message is added that an
/// older worker cannot read.
///
/// 6: [`MasterMessage::FilterSegments`] (appended, its payload one vector: the archived size
/// and every earlier tag are protocol 5's). Before each `Start` and `Reconfigure` the master
/// hands the worker the shared-memory segments of the filters of that configuration (their
/// counters and the rate-limit tables every worker shares; `docs/design/filters.md`), the fds
/// riding with the message. An adopted worker of protocol 5 or older is never sent it (see
/// [`v5`]): its rate limits stay its own.
///
/// 5: [`MasterMessage::FinishDrain`] (appended, no payload: the archived size and every
/// earlier tag are protocol 4's). The master asks the oldest of too many draining generations
/// to close its idle connections at once (`max-draining-generations`). A worker of protocol 4
/// reads every other message of protocol 5 byte for byte as its own, so an adopted one is sent
/// them unchanged; it is never sent `FinishDrain` (it would refuse the tag), and keeps its
/// idle connections until its own drain deadline. The close-spread window travels in the
/// configuration (`SystemConfig::close_spread_time_ms`), behind `WorkerStart`'s pointer.
///
/// Without a bump: `WorkerMessage::Status` carries the HTTP/2 refusal counts in its padding
/// (see its `http2` field), which workers and masters of protocols 4 and 5 without it skip,
/// and which reads as `None` from them.
///
/// 4: `WorkerStart` carries the TLS session-ticket keys (boxed, so the archived message keeps
/// its size), and [`MasterMessage::TicketKeys`] (appended) carries the keys after each
/// rotation: every worker of every generation seals and opens tickets with the master's keys
/// (`docs/design/session-tickets.md`). A worker of protocol 3 or older is never sent them: it
/// keeps its own per-process sessions until it is replaced.
///
/// Also 4: `WorkerStart::session_cache`, the TLS session cache every worker shares (a memfd
/// riding after the listener fds; `docs/design/session-cache.md`), so that a client resuming by
/// session id (no ticket) resumes on any worker. Boxed and optional: the archived message keeps
/// its size.
///
/// Also 4: every request that expects an answer carries a request id, which the answer echoes
/// (`StatusRequest` -> `Status`, `Reconfigure` -> `Reconfigured`/`ReconfigureFailed`). Two
/// masters read the same channels during a binary upgrade, so an answer may reach a master
/// that never sent its request (a successor that asked and then failed leaves its answers to
/// the previous master): answers were matched to requests by order before, and such an answer
/// made a later request look answered with old counters. The master draws ids unique across
/// masters (`master/src/request_ids.rs`) and ignores answers to ids it is not waiting for. An
/// adopted protocol 3 worker is talked to in its own layout ([`v3::MasterMessageV3`], read
/// back as [`v3::WorkerMessageV3`]); its answers carry no id and are matched by order, as
/// before. `Drain` -> `Draining` stays without an id: `Draining` reports a state (the worker
/// stopped accepting), true whoever asked, and only the master in charge ever sends `Drain`.
///
/// 3: `WorkerStart::config` is boxed, so the archived `MasterMessage` no longer grows with the
/// configuration model (the config lives behind a relative pointer). An adopted protocol 2
/// worker still receives `Drain`, `Stop` and `StatusRequest` in the layout it reads
/// ([`v2::MasterMessageV2`]); it is never sent a configuration (a reload waits until it is
/// replaced).
///
/// 2: `UpstreamConfig` (inside `Start`/`Reconfigure`) gained `health_check` and
/// `passive_health`. The archived `ProxyConfig` kept its size, so `Drain`, `Stop` and
/// `StatusRequest` (all an adopted worker gets from a new master: adoption sends no Hello) are
/// byte-for-byte what version 1 sent; the Hello check only refuses a version 1 binary started
/// by a version 2 master (a rollback), which could not read its `Start` anyway.
pub const PROTOCOL_VERSION: u32 = 6;

/// The first protocol whose workers read [`MasterMessage::FilterSegments`].
pub const FIRST_PROTOCOL_WITH_FILTER_SEGMENTS: u32 = 6;

/// The first protocol whose workers read [`MasterMessage::FinishDrain`].
pub const FIRST_PROTOCOL_WITH_FINISH_DRAIN: u32 = 5;

/// The request id no master ever draws: what an answer read from a worker of protocol 3 or
/// older (whose answers carry no id) is given, to be matched to its request by order.
pub const NO_REQUEST_ID: u64 = 0;

pub mod v2;
pub mod v3;
pub mod v4;
pub mod v5;

/// The first message each way on a channel (and on a control connection): who speaks, and which
/// protocol.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Hello {
    /// The protocol version the sender speaks ([`PROTOCOL_VERSION`], or the control protocol's).
    pub protocol_version: u32,
    /// The sender's process id.
    pub pid: u32,
    /// The sender's build version (`CARGO_PKG_VERSION`), for status and logs.
    pub software_version: String,
}

/// Identity of one listening socket handed over with SCM_RIGHTS. The fds travel in the same
/// frame, in the same order as these entries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct ListenerHandle {
    /// The listener's name in the configuration.
    pub name: String,
    /// The address the master bound; the worker checks the fd's local address against it.
    pub address: String,
}

/// What a worker runs: its identity, the configuration and the listening sockets (fds in the same
/// frame).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WorkerStart {
    /// The worker's id (slot), kept by its successors.
    pub worker_id: u32,
    /// The TLS session cache every worker shares (`crate::session_cache`), when the master
    /// has one: its memfd is the frame's last fd, after the listeners'. A worker that has
    /// mapped one already keeps it and closes the fd of a later `Reconfigure`. Niched (a null
    /// pointer for `None`) and placed in the padding after `worker_id`: the archived message
    /// keeps its size.
    #[rkyv(with = rkyv::with::Niche)]
    pub session_cache: Option<Box<SessionCacheHandle>>,
    /// The master generation that starts it.
    pub generation: u64,
    /// Boxed: the message keeps one archived size whatever the configuration model holds.
    pub config: Box<ProxyConfig>,
    /// The listeners' identities, in the order of the fds.
    pub listeners: Vec<ListenerHandle>,
    /// The TLS session-ticket keys every TLS listener seals and opens tickets with (boxed,
    /// like the configuration). In a `Reconfigure`, the master's current keys again.
    pub ticket_keys: Box<TicketKeys>,
}

/// What the master sends a worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum MasterMessage {
    /// The first message: the master's protocol version.
    Hello(Hello),
    /// Configuration and listeners (fds attached). The worker answers `Ready` once it polls them.
    Start(WorkerStart),
    /// Stop accepting, finish in-flight work, close keep-alive connections gracefully, exit by
    /// the deadline (milliseconds from receipt) at the latest.
    Drain {
        /// How long the worker may take, in milliseconds from receipt.
        timeout_ms: u64,
    },
    /// Exit now, dropping connections.
    Stop,
    /// Ask for a `Status` reply carrying the same `request_id`.
    StatusRequest {
        /// Echoed in the answer (never [`NO_REQUEST_ID`]).
        request_id: u64,
    },
    /// Reload: switch to this configuration and exactly these listeners (fds attached, in
    /// order). New connections use the new config; sessions already open finish on the old one.
    /// Listeners no longer named are deregistered and their fd duplicates closed. The worker
    /// answers `Reconfigured`, or `ReconfigureFailed` and keeps running on its old config, with
    /// the same `request_id`.
    Reconfigure {
        /// Echoed in the answer (never [`NO_REQUEST_ID`]).
        request_id: u64,
        /// What the worker runs from now on, as `Start` carries it.
        start: WorkerStart,
    },
    /// The master rotated the TLS session-ticket keys: seal new tickets with the first, open
    /// tickets with any of them. Sent to every worker of protocol 4 or later once its `Start`
    /// is out.
    TicketKeys(TicketKeys),
    /// To a draining worker: close the idle keep-alive connections now (half-closed, as at
    /// the drain deadline), without spreading them; requests in flight and tunnels keep the
    /// drain deadline. Ignored by a worker that is not draining. Sent only to workers of
    /// [`FIRST_PROTOCOL_WITH_FINISH_DRAIN`] or later.
    FinishDrain,
    /// The shared segments of the filters of the `Start` or `Reconfigure` that follows (fds
    /// attached, in the order of the entries; `crate::filter_shm`). A configuration with more
    /// segments than a frame carries fds comes in several such messages: the worker adds them
    /// up, and the next `Start` or `Reconfigure` takes them all. A filter without a segment
    /// keeps its counters and rate-limit table in the worker alone. Sent only to workers of
    /// [`FIRST_PROTOCOL_WITH_FILTER_SEGMENTS`] or later.
    FilterSegments(Vec<FilterSegmentHandle>),
}

/// A worker's counters. All are totals since the worker started, except `active_connections`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct WorkerCounters {
    /// Client connections open now.
    pub active_connections: u64,
    /// Client connections accepted.
    pub accepted_total: u64,
    /// HTTP requests started (a head parsed, or refused as malformed).
    pub requests_total: u64,
    /// Responses sent with a 1xx status (interim ones included).
    pub responses_1xx: u64,
    /// Responses sent with a 2xx status.
    pub responses_2xx: u64,
    /// Responses sent with a 3xx status.
    pub responses_3xx: u64,
    /// Responses sent with a 4xx status.
    pub responses_4xx: u64,
    /// Responses sent with a 5xx status.
    pub responses_5xx: u64,
    /// Exchanges an upstream failed (connect, reset, timeout, invalid response), each failed target
    /// counted once.
    pub upstream_errors: u64,
    /// Exchanges the client failed (malformed request, timeout, connection lost).
    pub client_errors: u64,
    /// `accept(2)` failures.
    pub accept_errors: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
}

/// HTTP/2 client connections a worker closed for abuse, by kind (see `docs/design/http2.md`):
/// each count is a connection closed with GOAWAY. Totals since the worker started.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub struct Http2Refusals {
    /// Streams opened and reset by the client at once (CVE-2023-44487).
    pub rapid_reset: u64,
    /// A header block continued by CONTINUATION frames past any sensible count.
    pub continuation_flood: u64,
    /// A header block decoding to a header list far over the limit (an HPACK bomb).
    pub header_list_too_large: u64,
    /// SETTINGS frames past the rate any client needs.
    pub settings_flood: u64,
    /// PING frames past the rate any client needs.
    pub ping_flood: u64,
    /// Frames carrying nothing: zero-length DATA without END_STREAM, empty HEADERS or
    /// CONTINUATION, runs of tiny DATA frames.
    pub empty_frames: u64,
    /// PRIORITY frames past a budget per stream.
    pub priority_flood: u64,
    /// WINDOW_UPDATE frames past a budget per DATA frame sent.
    pub window_update_flood: u64,
    /// Framing bytes (every frame but the payload of DATA and header blocks) far beyond the
    /// payload: a flood of any other frame type.
    pub control_flood: u64,
    /// Streams the server had to refuse or reset (over the concurrency limit, malformed),
    /// past a count per connection.
    pub stream_errors: u64,
    /// A response that could not be sent for the request timeout: the client reads nothing
    /// or keeps its flow-control window shut.
    pub slow_read: u64,
    /// Any other connection error the peer caused (PROTOCOL_ERROR and friends).
    pub protocol_error: u64,
}

impl Http2Refusals {
    /// Every kind's name (as `/metrics` labels it) and value, in declaration order.
    pub fn kinds(&self) -> [(&'static str, u64); 12] {
        [
            ("rapid_reset", self.rapid_reset),
            ("continuation_flood", self.continuation_flood),
            ("header_list_too_large", self.header_list_too_large),
            ("settings_flood", self.settings_flood),
            ("ping_flood", self.ping_flood),
            ("empty_frames", self.empty_frames),
            ("priority_flood", self.priority_flood),
            ("window_update_flood", self.window_update_flood),
            ("control_flood", self.control_flood),
            ("stream_errors", self.stream_errors),
            ("slow_read", self.slow_read),
            ("protocol_error", self.protocol_error),
        ]
    }

    /// Add `other`'s counts (saturating).
    pub fn add(&mut self, other: &Http2Refusals) {
        let fields = [
            (&mut self.rapid_reset, other.rapid_reset),
            (&mut self.continuation_flood, other.continuation_flood),
            (&mut self.header_list_too_large, other.header_list_too_large),
            (&mut self.settings_flood, other.settings_flood),
            (&mut self.ping_flood, other.ping_flood),
            (&mut self.empty_frames, other.empty_frames),
            (&mut self.priority_flood, other.priority_flood),
            (&mut self.window_update_flood, other.window_update_flood),
            (&mut self.control_flood, other.control_flood),
            (&mut self.stream_errors, other.stream_errors),
            (&mut self.slow_read, other.slow_read),
            (&mut self.protocol_error, other.protocol_error),
        ];
        for (mine, theirs) in fields {
            *mine = mine.saturating_add(theirs);
        }
    }
}

/// What a worker sends its master.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum WorkerMessage {
    /// The first message: the worker's protocol version.
    Hello(Hello),
    /// The worker polls every listener it was given.
    Ready,
    /// The answer to [`MasterMessage::StatusRequest`]: the counters now.
    Status {
        /// The HTTP/2 connections refused, by kind (`None`: none refused yet, or a worker
        /// from before they were counted). Placed first, in the padding between the tag and
        /// `request_id`, as a relative pointer whose zero offset means `None`
        /// ([`ZeroOffset`]): the archived message keeps its size and layout, so a master from
        /// before reads this `Status` as it always did (it skips the padding), and this one
        /// reads an older worker's `Status` (zeroed padding) as `None`. No protocol bump:
        /// both sides keep reading each other.
        #[rkyv(with = rkyv::with::NicheInto<ZeroOffset>)]
        http2: Option<Box<Http2Refusals>>,
        /// The request's id.
        request_id: u64,
        /// The counters when the request was read.
        counters: WorkerCounters,
    },
    /// The worker stopped accepting; `active_connections` are still being finished.
    Draining {
        /// Connections open when it stopped accepting.
        active_connections: u64,
    },
    /// A fatal error, sent just before the worker exits (best effort).
    Fatal {
        /// Why the worker cannot go on.
        reason: String,
    },
    /// The worker now runs the configuration of the `Reconfigure` with this id.
    Reconfigured {
        /// The request's id.
        request_id: u64,
    },
    /// The `Reconfigure` with this id was refused; the worker runs its previous configuration
    /// unchanged.
    ReconfigureFailed {
        /// The request's id.
        request_id: u64,
        /// Why the configuration was refused (file, listener or upstream named).
        reason: String,
    },
}

impl MasterMessage {
    /// The variant's name, for logs and `ProtocolError::Unexpected`.
    pub fn kind(&self) -> &'static str {
        match self {
            MasterMessage::Hello(_) => "Hello",
            MasterMessage::Start(_) => "Start",
            MasterMessage::Drain { .. } => "Drain",
            MasterMessage::Stop => "Stop",
            MasterMessage::StatusRequest { .. } => "StatusRequest",
            MasterMessage::Reconfigure { .. } => "Reconfigure",
            MasterMessage::TicketKeys(_) => "TicketKeys",
            MasterMessage::FinishDrain => "FinishDrain",
            MasterMessage::FilterSegments(_) => "FilterSegments",
        }
    }
}

impl ArchivedMasterMessage {
    /// The variant's name, for logs and `ProtocolError::Unexpected`.
    pub fn kind(&self) -> &'static str {
        match self {
            ArchivedMasterMessage::Hello(_) => "Hello",
            ArchivedMasterMessage::Start(_) => "Start",
            ArchivedMasterMessage::Drain { .. } => "Drain",
            ArchivedMasterMessage::Stop => "Stop",
            ArchivedMasterMessage::StatusRequest { .. } => "StatusRequest",
            ArchivedMasterMessage::Reconfigure { .. } => "Reconfigure",
            ArchivedMasterMessage::TicketKeys(_) => "TicketKeys",
            ArchivedMasterMessage::FinishDrain => "FinishDrain",
            ArchivedMasterMessage::FilterSegments(_) => "FilterSegments",
        }
    }
}

impl WorkerMessage {
    /// The variant's name, for logs and `ProtocolError::Unexpected`.
    pub fn kind(&self) -> &'static str {
        match self {
            WorkerMessage::Hello(_) => "Hello",
            WorkerMessage::Ready => "Ready",
            WorkerMessage::Status { .. } => "Status",
            WorkerMessage::Draining { .. } => "Draining",
            WorkerMessage::Fatal { .. } => "Fatal",
            WorkerMessage::Reconfigured { .. } => "Reconfigured",
            WorkerMessage::ReconfigureFailed { .. } => "ReconfigureFailed",
        }
    }
}

impl ArchivedWorkerMessage {
    /// The variant's name, for logs and `ProtocolError::Unexpected`.
    pub fn kind(&self) -> &'static str {
        match self {
            ArchivedWorkerMessage::Hello(_) => "Hello",
            ArchivedWorkerMessage::Ready => "Ready",
            ArchivedWorkerMessage::Status { .. } => "Status",
            ArchivedWorkerMessage::Draining { .. } => "Draining",
            ArchivedWorkerMessage::Fatal { .. } => "Fatal",
            ArchivedWorkerMessage::Reconfigured { .. } => "Reconfigured",
            ArchivedWorkerMessage::ReconfigureFailed { .. } => "ReconfigureFailed",
        }
    }
}
