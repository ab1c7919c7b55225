//! The access log's view of an exchange: whether the listener logs, the upstream that
//! answered, and the line written once the exchange ends.

use super::*;

/// The access log's view of the upstream that answered.
pub(super) fn note_upstream(
    a: &mut access_log::Entry,
    ctx: &Ctx<'_>,
    ids: Option<(usize, usize)>,
    addr: Option<SocketAddr>,
    reused: bool,
) {
    a.upstream = addr;
    a.connection_reused = reused;
    if let Some((pool, _)) = ids {
        pool_name(ctx, pool).clone_into(&mut a.upstream_name);
    }
}

impl HttpSession {
    pub(super) fn logs_access(&self) -> bool {
        self.generation
            .listeners
            .get(self.listener)
            .is_some_and(|l| l.access_log.is_some())
    }

    /// Write the current request's access-log line (once: the entry is taken).
    pub(super) fn log_access(&mut self, ctx: &Ctx<'_>) {
        let Some(mut entry) = self.access.take() else {
            return;
        };
        if let Some(l) = self.generation.listeners.get(self.listener) {
            if let Some(log) = &l.access_log {
                if entry.status == 0 {
                    entry.status = 499;
                }
                log.log(&entry, self.peer, &l.name, ctx.now);
            }
        }
    }
}
