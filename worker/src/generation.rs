//! Configuration generations: what `Start` and each `Reconfigure` install.
//!
//! A [`Candidate`] is a `WorkerStart` checked in full (every fd, every name) without touching
//! the running worker, so a bad reload changes nothing. Installed, it becomes a
//! [`Generation`]: routing, limits and per-listener settings with upstream references resolved
//! to pool keys. Sessions hold an `Rc` of the generation they run on, so a reload never changes
//! the settings under an exchange in flight; an HTTP session moves to the newest generation
//! between requests (see `HttpSession`), and pools only a retired generation refers to live
//! until that generation is gone (see `Worker::retire_pools`).

use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use zentinel_protocol::config::{
    BuiltinHandler, Limits, ListenerProtocol, RouteAction, TraceIdFormat,
};
use zentinel_protocol::messages::WorkerStart;

use crate::accept::{adopt_listener, Listener, ListenerSet};
use crate::access_log::AccessLog;
use crate::filters::Segments;
use crate::routing::Router;
use crate::tls_listener::Resumption;
use crate::upstream::Pool;

/// One listener of a generation, in the order of the listener set it was accepted from.
#[derive(Debug, Clone)]
pub struct ListenerEntry {
    pub name: String,
    pub protocol: ListenerProtocol,
    pub ctx: ListenerCtx,
    /// HTTP listeners with an access log configured.
    pub access_log: Option<Rc<AccessLog>>,
    /// TLS termination: the server configuration its sessions share.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// The per-listener settings a session needs (copied into each session, together with the
/// generation they belong to: `default_route` indexes that generation's router).
#[derive(Debug, Clone, Copy)]
pub struct ListenerCtx {
    pub local: SocketAddr,
    pub request_timeout: Duration,
    pub keepalive_timeout: Duration,
    /// Resolved index of the default route.
    pub default_route: Option<usize>,
    /// The routes it serves (`Router::scope_id` of `ListenerConfig::route_scope`).
    pub route_scope: u16,
    /// Requests a client connection may carry (0: no limit).
    pub keepalive_max_requests: u32,
    /// HTTP/2 streams a client may have open at once on one connection.
    pub max_concurrent_streams: u32,
    /// TCP listeners: resolved upstream pool key.
    pub upstream: Option<usize>,
}

/// An installed configuration. Immutable: a reload builds a new one.
#[derive(Debug)]
pub struct Generation {
    /// Routes whose upstream actions hold pool keys.
    pub router: Router,
    pub limits: Limits,
    /// `system { trace-id-format }`.
    pub trace_id_format: TraceIdFormat,
    /// `limits` with the body limit raised to the largest any route's `policies` allows:
    /// request heads are parsed against it before the route (and its own limit) is known.
    pub head_limits: Limits,
    /// Same order as the listener set; `ctx.upstream` holds a pool key.
    pub listeners: Vec<ListenerEntry>,
    /// Pool keys, in the configuration's upstream order.
    pub pools: Vec<usize>,
    /// What a `builtin-handler "config"` route shows; only built when one exists.
    pub config_view: Option<serde_json::Value>,
}

impl Generation {
    /// The listener of this generation that takes over `entry` (of an older generation): same
    /// name, protocol and socket address.
    pub fn successor_of(&self, entry: &ListenerEntry) -> Option<usize> {
        self.listeners.iter().position(|l| {
            l.name == entry.name && l.protocol == entry.protocol && l.ctx.local == entry.ctx.local
        })
    }
}

/// A validated `Start`/`Reconfigure`, not yet installed. Dropping it closes the received fds.
pub struct Candidate {
    pub listeners: ListenerSet,
    /// `ctx.upstream` still holds an index into `pools`.
    pub entries: Vec<ListenerEntry>,
    /// Upstream actions still hold indices into `pools`.
    pub router: Router,
    pub pools: Vec<Pool>,
    pub limits: Limits,
    pub trace_id_format: TraceIdFormat,
    pub max_connections: usize,
    pub drain: DrainSettings,
    pub config_view: Option<serde_json::Value>,
}

/// How this worker drains when its master is gone (the master says how long otherwise), and
/// over which window it spreads its closes whoever started the drain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainSettings {
    /// `graceful-shutdown-timeout-secs`: the drain when the master channel closes.
    pub timeout: Duration,
    /// `close-spread-time-secs`; `None`: the default for the drain's length.
    pub close_spread: Option<Duration>,
}

impl Candidate {
    /// Check `ws` and the fds that came with it (in the order of `ws.listeners`): each one a
    /// listening stream socket bound to its handle's address, every name resolvable. `what`
    /// names the message in errors ("Start", "Reconfigure"). The filters keep their counters
    /// and rate-limit tables in `segments` (the master's, handed just before). Every TLS listener's
    /// `ServerConfig` resumes sessions with `resumption`, the worker's only ticketer and cache.
    pub fn validate(
        ws: &WorkerStart,
        fds: Vec<OwnedFd>,
        what: &str,
        resumption: &Resumption,
        segments: &Segments,
    ) -> Result<Self, String> {
        let config = &ws.config;
        if fds.len() != ws.listeners.len() {
            return Err(format!(
                "{what} announces {} listeners but {} fds arrived",
                ws.listeners.len(),
                fds.len()
            ));
        }
        let router = Router::with_segments(config, segments).map_err(|e| e.to_string())?;
        // TLS files are read now, like listener certificates below; the system trust store
        // at most once for every upstream that uses it.
        let mut roots = crate::upstream::tls::SystemRoots::default();
        let pools = config
            .upstreams
            .iter()
            .map(|u| Pool::from_config_with(u, &mut roots))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let mut listeners = Vec::with_capacity(fds.len());
        let mut entries = Vec::with_capacity(fds.len());
        for (handle, fd) in ws.listeners.iter().zip(fds) {
            if entries
                .iter()
                .any(|e: &ListenerEntry| e.name == handle.name)
            {
                return Err(format!("{what} names listener `{}` twice", handle.name));
            }
            let lc = config
                .listeners
                .iter()
                .find(|l| l.name == handle.name)
                .ok_or_else(|| {
                    format!(
                        "listener handle `{}` names no configured listener",
                        handle.name
                    )
                })?;
            let adopted = adopt_listener(fd, &handle.name, &handle.address)?;
            let local = adopted.local;
            let default_route = match &lc.default_route {
                Some(r) => Some(router.index_of(r).ok_or_else(|| {
                    format!("listener `{}`: unknown default route `{r}`", lc.name)
                })?),
                None => None,
            };
            let upstream = match (&lc.protocol, &lc.upstream) {
                (ListenerProtocol::Tcp, Some(u)) => Some(
                    config
                        .upstreams
                        .iter()
                        .position(|x| &x.name == u)
                        .ok_or_else(|| format!("listener `{}`: unknown upstream `{u}`", lc.name))?,
                ),
                (ListenerProtocol::Tcp, None) => {
                    return Err(format!("tcp listener `{}` has no upstream", lc.name))
                }
                (ListenerProtocol::Http, _) => None,
            };
            let access_log = match (&lc.protocol, &lc.access_log) {
                (ListenerProtocol::Http, Some(al)) => Some(Rc::new(
                    AccessLog::new(al).map_err(|e| format!("listener `{}`: {e}", lc.name))?,
                )),
                _ => None,
            };
            // Read from disk now, on every Start and Reconfigure: replaced certificates are
            // picked up by a reload, and a file that became unreadable fails the reload
            // (the running generation stays) instead of the connections.
            let tls = match (&lc.protocol, &lc.tls) {
                (_, None) => None,
                (ListenerProtocol::Http, Some(tls)) => Some(
                    crate::tls::server_config(tls, resumption)
                        .map_err(|e| format!("listener `{}`: {e}", lc.name))?,
                ),
                (ListenerProtocol::Tcp, Some(_)) => {
                    return Err(format!(
                        "tcp listener `{}`: tls is only supported on http listeners",
                        lc.name
                    ))
                }
            };
            entries.push(ListenerEntry {
                name: handle.name.clone(),
                protocol: lc.protocol,
                access_log,
                tls,
                ctx: ListenerCtx {
                    local,
                    request_timeout: Duration::from_secs(lc.request_timeout_secs.max(1)),
                    keepalive_timeout: Duration::from_secs(lc.keepalive_timeout_secs.max(1)),
                    default_route,
                    route_scope: router.scope_id(lc.route_scope.as_deref()),
                    keepalive_max_requests: lc.keepalive_max_requests,
                    max_concurrent_streams: lc.max_concurrent_streams,
                    upstream,
                },
            });
            listeners.push(Listener {
                name: handle.name.clone(),
                socket: adopted.socket,
                nodelay_inherited: adopted.nodelay_inherited,
            });
        }
        let listeners = ListenerSet::new(listeners, config.system.worker_count() > 1)
            .map_err(|e| e.to_string())?;
        Ok(Candidate {
            listeners,
            entries,
            router,
            pools,
            limits: config.limits.clone(),
            trace_id_format: config.system.trace_id_format,
            max_connections: config.system.max_connections as usize,
            drain: DrainSettings {
                timeout: config.system.stop_drain(),
                close_spread: config.system.close_spread(),
            },
            config_view: config
                .routes
                .iter()
                .any(|r| r.action == RouteAction::Builtin(BuiltinHandler::Config))
                .then(|| crate::http::builtin::config_view(config)),
        })
    }
}
