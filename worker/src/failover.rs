//! Failing over between the targets of a pool within one exchange, and reporting what failed:
//! the sessions' side of the upstream pools. It lives above both [`Ctx`] and `upstream` (it
//! needs the pools, the counters and the clock together), so the pools never depend on the
//! session context.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use mio::Token;
use tracing::warn;

use crate::ctx::Ctx;
use crate::upstream::{blames_target, Pick, PickRequest, UpConn};

/// Why [`connect_next`] found no connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoConn {
    /// Every target failed for this exchange or cannot be connected at all.
    Exhausted,
    /// Every target left is at its connection cap or still being resolved: one may free up
    /// (see [`Upstreams::wait_for`](crate::upstream::Upstreams::wait_for)).
    Wait,
    /// Every target left has an open circuit breaker.
    CircuitOpen,
}

/// Connect to a target of `pool` for one exchange, failing over: targets in `failed` are
/// skipped, and a target whose connect fails at once is reported (see [`note_failure`]),
/// added to `failed`, and the balancer's next choice is tried.
///
/// Only for attempts where no request byte has been sent: then any method may go elsewhere.
pub fn connect_next(
    ctx: &mut Ctx<'_>,
    pool: usize,
    failed: &mut Vec<usize>,
    token: Token,
    peer: SocketAddr,
    req: &PickRequest<'_>,
) -> Result<UpConn, NoConn> {
    loop {
        match ctx.upstreams.pick(pool, failed, ctx.now, req) {
            Pick::Target(target) => {
                match ctx.upstreams.checkout(pool, target, ctx.registry, token) {
                    Ok(c) => return Ok(c),
                    Err(e) => note_failure(ctx, pool, target, failed, peer, &e),
                }
            }
            Pick::Wait => return Err(NoConn::Wait),
            Pick::CircuitOpen => return Err(NoConn::CircuitOpen),
            Pick::None => return Err(NoConn::Exhausted),
        }
    }
}

/// A connect that had started failed (refused, reset, timed out) before any request byte was
/// sent: close it and report it (see [`note_failure`]), so [`connect_next`] can go elsewhere.
pub fn connect_failed(
    ctx: &mut Ctx<'_>,
    conn: UpConn,
    failed: &mut Vec<usize>,
    peer: SocketAddr,
    error: &dyn fmt::Display,
) {
    let (pool, target) = (conn.pool, conn.target);
    ctx.discard_upstream(conn);
    note_target_failure(
        ctx,
        pool,
        target,
        failed,
        peer,
        error,
        "upstream connect failed",
    );
}

/// One failed connect attempt: its target is excluded for the rest of the exchange, the
/// failure is logged with the pool and target, counted once, and reported to passive health.
pub fn note_failure(
    ctx: &mut Ctx<'_>,
    pool: usize,
    target: usize,
    failed: &mut Vec<usize>,
    peer: SocketAddr,
    error: &io::Error,
) {
    if blames_target(error) {
        note_target_failure(
            ctx,
            pool,
            target,
            failed,
            peer,
            error,
            "upstream connect failed",
        );
        return;
    }
    if !failed.contains(&target) {
        failed.push(target);
    }
    ctx.counters.c.upstream_errors += 1;
    warn!(%peer, pool, target, error = %error, "cannot open an upstream connection: this worker is out of local resources (not held against the target)");
}

/// [`note_failure`] for any failure that blames the target (`what` is the log message).
pub fn note_target_failure(
    ctx: &mut Ctx<'_>,
    pool: usize,
    target: usize,
    failed: &mut Vec<usize>,
    peer: SocketAddr,
    error: &dyn fmt::Display,
    what: &'static str,
) {
    if !failed.contains(&target) {
        failed.push(target);
    }
    ctx.counters.c.upstream_errors += 1;
    ctx.upstreams.report_failure(pool, target, ctx.now, error);
    let p = ctx.upstreams.pool(pool);
    let name = p.map_or("?", |p| p.name.as_str());
    match p.and_then(|p| p.targets.get(target)) {
        Some(t) => warn!(%peer, upstream = name, target = %t.label, error = %error, "{what}"),
        None => warn!(%peer, upstream = name, target, error = %error, "{what}"),
    }
}
