//! Tentative, then confirmed ownership of what a successor master adopts (new-master side of a
//! binary upgrade; `docs/design/takeover-ownership.md` has the table).
//!
//! A new master inherits the control socket (with its file), the listeners, the worker
//! channels and the workers themselves while the previous master still runs and still owns
//! them: until the new master has confirmed readiness on the readiness pipe, the previous one
//! takes everything back the moment the new one fails. So until then the new master must not
//! destroy anything the two share by name or by identity: no unlink of the control socket
//! file, no signal to an adopted worker, no accept on an inherited listening socket, no
//! shutdown of an inherited connection. (Closing its own copies of the inherited fds is
//! harmless: the previous master holds its own.)
//!
//! Every adopted resource carries an [`Ownership`]; they all share the new master's one
//! claim, so [`Ownership::confirm`] flips them together, right after `READY` was written.
//! Until then their destructors and the supervisor's kill paths do nothing destructive, and a
//! failure at any point (an error returned, a panic unwinding) leaves the previous master
//! exactly as it was. A fresh master's own resources are [`Ownership::confirmed`] from the
//! start.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Where a claim stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnershipState {
    /// Adopted, readiness not confirmed yet: the previous master still owns it.
    Tentative,
    /// Ours: created by this master, or adopted and readiness confirmed.
    Confirmed,
}

/// A (shared) claim on resources. Clones share the state: confirming one confirms all of them,
/// and a confirmed claim never goes back to tentative.
#[derive(Debug, Clone)]
pub struct Ownership(Arc<AtomicBool>);

impl Ownership {
    /// Resources this master created itself.
    pub fn confirmed() -> Self {
        Ownership(Arc::new(AtomicBool::new(true)))
    }

    /// A new master's claim on what it adopts, until it has confirmed readiness.
    pub fn tentative() -> Self {
        Ownership(Arc::new(AtomicBool::new(false)))
    }

    pub fn state(&self) -> OwnershipState {
        if self.0.load(Ordering::Acquire) {
            OwnershipState::Confirmed
        } else {
            OwnershipState::Tentative
        }
    }

    pub fn is_confirmed(&self) -> bool {
        self.state() == OwnershipState::Confirmed
    }

    /// Readiness was confirmed to the previous master: everything under this claim is ours.
    pub fn confirm(&self) {
        self.0.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirming_one_clone_confirms_every_resource_under_the_claim() {
        let claim = Ownership::tentative();
        let socket = claim.clone();
        let worker = claim.clone();
        assert_eq!(socket.state(), OwnershipState::Tentative);
        assert!(!worker.is_confirmed());
        claim.confirm();
        assert_eq!(socket.state(), OwnershipState::Confirmed);
        assert!(worker.is_confirmed());
        // Another claim is not affected.
        assert!(!Ownership::tentative().is_confirmed());
        assert!(Ownership::confirmed().is_confirmed());
    }
}
