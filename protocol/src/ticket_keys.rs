//! TLS session-ticket keys, made by the master and shared by every worker of every generation:
//! a ticket one worker issued resumes on any other, before and after a binary upgrade.
//!
//! The secrets cross the master-worker channel and, during a hand-over, the 0600 state file;
//! nothing else writes them anywhere. Every copy is zeroed when dropped, and `Debug` shows
//! only the key names.

use std::fmt;

use rkyv::{Archive, Deserialize, Serialize};
use zeroize::Zeroize;

/// Length of a key's name, the first bytes of every ticket it encrypts (RFC 5077's key_name).
pub const TICKET_KEY_NAME_LEN: usize = 16;
/// Length of a key's secret (a ChaCha20-Poly1305 key).
pub const TICKET_KEY_SECRET_LEN: usize = 32;

/// One ticket key.
#[derive(Archive, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct TicketKey {
    /// Random; names the key inside each ticket, so decryption finds it without trying all.
    pub name: [u8; TICKET_KEY_NAME_LEN],
    /// The AEAD key.
    pub secret: [u8; TICKET_KEY_SECRET_LEN],
    /// When the master made it (seconds since the Unix epoch), for rotation across upgrades.
    pub created_unix_s: u64,
}

impl Drop for TicketKey {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

impl fmt::Debug for TicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketKey")
            .field("name", &hex(&self.name))
            .field("created_unix_s", &self.created_unix_s)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for ArchivedTicketKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArchivedTicketKey")
            .field("name", &hex(&self.name))
            .finish_non_exhaustive()
    }
}

/// The key name in hex, for logs.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The keys in use: the first encrypts new tickets, every one decrypts.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
#[rkyv(derive(Debug))]
pub struct TicketKeys {
    /// Newest first. Empty: tickets off (the worker keeps its per-process session cache).
    pub keys: Vec<TicketKey>,
    /// How long a client may keep a ticket (seconds), as told in the ticket's lifetime hint.
    pub lifetime_s: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret() {
        let key = TicketKey {
            name: [0xab; TICKET_KEY_NAME_LEN],
            secret: [0x42; TICKET_KEY_SECRET_LEN],
            created_unix_s: 7,
        };
        let keys = TicketKeys {
            keys: vec![key],
            lifetime_s: 3600,
        };
        let shown = format!("{keys:?}");
        assert!(shown.contains("abababab"), "{shown}");
        assert!(
            !shown.contains("42, 42") && !shown.contains("4242"),
            "{shown}"
        );
    }

    #[test]
    fn keys_round_trip_through_rkyv() {
        let keys = TicketKeys {
            keys: vec![TicketKey {
                name: [1; TICKET_KEY_NAME_LEN],
                secret: [2; TICKET_KEY_SECRET_LEN],
                created_unix_s: 3,
            }],
            lifetime_s: 60,
        };
        let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&keys).expect("serialize");
        let back = rkyv::from_bytes::<TicketKeys, rkyv::rancor::Error>(&bytes).expect("read");
        assert_eq!(back, keys);
    }
}
