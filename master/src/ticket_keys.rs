//! The TLS session-ticket keys the master makes and every worker uses (see
//! `zentinel_worker::tls_tickets`): one key seals new tickets, the previous one still opens
//! the tickets it sealed. The keys rotate every [`ROTATION`]; they travel to workers over the
//! channel and to the next master in the hand-over state file, so a ticket issued before a
//! rolling upgrade resumes after it.
//!
//! A ticket stays valid at least [`ROTATION`] (it is opened until the key that sealed it is two
//! rotations old), so that is the lifetime clients are told.

use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use zentinel_protocol::ticket_keys::{TicketKey, TicketKeys};

/// How often a new sealing key is made.
pub const ROTATION: Duration = Duration::from_secs(12 * 3600);
/// Keys kept: the sealing one and the one before it.
const KEPT: usize = 2;

/// The keys and when they next rotate.
#[derive(Debug)]
pub struct TicketKeyRotation {
    keys: TicketKeys,
    rotation: Duration,
    next_rotation: Instant,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn new_key(now_unix_s: u64) -> io::Result<TicketKey> {
    let mut key = TicketKey {
        name: [0; zentinel_protocol::ticket_keys::TICKET_KEY_NAME_LEN],
        secret: [0; zentinel_protocol::ticket_keys::TICKET_KEY_SECRET_LEN],
        created_unix_s: now_unix_s,
    };
    getrandom::getrandom(&mut key.name).map_err(|err| io::Error::other(err.to_string()))?;
    getrandom::getrandom(&mut key.secret).map_err(|err| io::Error::other(err.to_string()))?;
    Ok(key)
}

impl TicketKeyRotation {
    /// A fresh start: one new key.
    pub fn fresh(now: Instant) -> io::Result<Self> {
        Self::with_rotation(ROTATION, now)
    }

    /// A fresh start rotating every `rotation` (tests shorten it).
    pub fn with_rotation(rotation: Duration, now: Instant) -> io::Result<Self> {
        Ok(TicketKeyRotation {
            keys: TicketKeys {
                keys: vec![new_key(unix_now())?],
                lifetime_s: u32::try_from(rotation.as_secs()).unwrap_or(u32::MAX),
            },
            rotation,
            next_rotation: now + rotation,
        })
    }

    /// A successor master: the predecessor's keys, rotating when the newest is `ROTATION`
    /// old (not `ROTATION` after the hand-over: upgrades must not keep a key alive forever).
    /// No keys (a predecessor without tickets): a fresh key.
    pub fn inherited(keys: TicketKeys, now: Instant) -> io::Result<Self> {
        let Some(newest) = keys.keys.first() else {
            return Self::fresh(now);
        };
        let age = Duration::from_secs(unix_now().saturating_sub(newest.created_unix_s));
        Ok(TicketKeyRotation {
            next_rotation: now + ROTATION.saturating_sub(age),
            rotation: ROTATION,
            keys,
        })
    }

    pub fn keys(&self) -> &TicketKeys {
        &self.keys
    }

    pub fn next_rotation(&self) -> Instant {
        self.next_rotation
    }

    /// Make a new sealing key if it is time; true if the keys changed (the workers must get
    /// them).
    pub fn rotate_if_due(&mut self, now: Instant) -> io::Result<bool> {
        if now < self.next_rotation {
            return Ok(false);
        }
        let key = new_key(unix_now())?;
        self.keys.keys.insert(0, key);
        self.keys.keys.truncate(KEPT);
        self.next_rotation = now + self.rotation;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_adds_a_sealing_key_and_keeps_the_previous_one() {
        let start = Instant::now();
        let mut rotation =
            TicketKeyRotation::with_rotation(Duration::from_secs(60), start).expect("random keys");
        let first = rotation.keys().keys[0].name;
        assert!(!rotation.rotate_if_due(start).expect("no rotation"));
        assert!(rotation
            .rotate_if_due(start + Duration::from_secs(60))
            .expect("rotated"));
        let names: Vec<_> = rotation.keys().keys.iter().map(|k| k.name).collect();
        assert_eq!(names.len(), 2);
        assert_eq!(names[1], first);
        assert_ne!(names[0], first);
        assert_ne!(
            rotation.keys().keys[0].secret,
            rotation.keys().keys[1].secret
        );
        rotation
            .rotate_if_due(start + Duration::from_secs(120))
            .expect("rotated");
        assert_eq!(rotation.keys().keys.len(), 2, "the oldest is dropped");
        assert!(!rotation.keys().keys.iter().any(|k| k.name == first));
        assert_eq!(rotation.keys().lifetime_s, 60);
    }

    #[test]
    fn a_successor_keeps_the_keys_and_the_schedule() {
        let now = Instant::now();
        let mut keys = TicketKeyRotation::fresh(now).expect("keys").keys().clone();
        keys.keys[0].created_unix_s = unix_now() - 3600;
        let inherited = TicketKeyRotation::inherited(keys.clone(), now).expect("keys");
        assert_eq!(inherited.keys(), &keys);
        let due = inherited.next_rotation().duration_since(now);
        assert!(
            due <= ROTATION - Duration::from_secs(3599)
                && due >= ROTATION - Duration::from_secs(3700),
            "{due:?}"
        );
        let none = TicketKeyRotation::inherited(TicketKeys::default(), now).expect("keys");
        assert_eq!(none.keys().keys.len(), 1);
    }
}
