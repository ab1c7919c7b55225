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
/// After a failed rotation (no randomness), when the next attempt is made: the keys in use
/// stay valid meanwhile, and the loop must not spin on a deadline in the past.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(60);

/// Test builds only (the `fault-injection` feature, like the faults of
/// `zentinel_worker::fault_injection`): the end-to-end tests shorten the rotation to watch it
/// happen. A default build has no such knob: [`ROTATION`] it is.
pub const ROTATION_ENV_VAR: &str = "ZENTINEL_TEST_TICKET_KEY_ROTATION_MS";

/// How often this master rotates: [`ROTATION`], or in a test build what
/// [`ROTATION_ENV_VAR`] says (at least 1 s).
pub fn rotation_interval() -> Duration {
    if !zentinel_worker::fault_injection::AVAILABLE {
        return ROTATION;
    }
    std::env::var(ROTATION_ENV_VAR)
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .map_or(ROTATION, |ms| Duration::from_millis(ms.max(1000)))
}

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
        Self::inherited_with_rotation(keys, ROTATION, now)
    }

    /// [`TicketKeyRotation::inherited`], rotating every `rotation` (tests shorten it).
    pub fn inherited_with_rotation(
        keys: TicketKeys,
        rotation: Duration,
        now: Instant,
    ) -> io::Result<Self> {
        let Some(newest) = keys.keys.first() else {
            return Self::with_rotation(rotation, now);
        };
        let age = Duration::from_secs(unix_now().saturating_sub(newest.created_unix_s));
        Ok(TicketKeyRotation {
            next_rotation: now + rotation.saturating_sub(age),
            rotation,
            keys,
        })
    }

    /// How often the keys rotate.
    pub fn rotation(&self) -> Duration {
        self.rotation
    }

    pub fn keys(&self) -> &TicketKeys {
        &self.keys
    }

    pub fn next_rotation(&self) -> Instant {
        self.next_rotation
    }

    /// Make a new sealing key if it is time; true if the keys changed (the workers must get
    /// them). On failure the keys stay as they are and the next attempt is a minute away.
    pub fn rotate_if_due(&mut self, now: Instant) -> io::Result<bool> {
        if now < self.next_rotation {
            return Ok(false);
        }
        let key = new_key(unix_now()).inspect_err(|_| {
            self.next_rotation = now + RETRY_AFTER_FAILURE;
        })?;
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

    /// A predecessor that wrote state format 5 (or older) handed on no keys: the successor
    /// makes a fresh one on the normal schedule, its lifetime told as usual.
    #[test]
    fn a_format_5_state_yields_fresh_keys() {
        static FIXTURE: &[u8] = include_bytes!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/state-v5.bin"
        ));
        let state = zentinel_protocol::state::decode_state(FIXTURE, "state-v5.bin")
            .expect("the format 5 fixture decodes");
        assert_eq!(state.ticket_keys, TicketKeys::default());
        let now = Instant::now();
        let rotation = TicketKeyRotation::inherited(state.ticket_keys, now).expect("keys");
        let keys = rotation.keys();
        assert_eq!(keys.keys.len(), 1);
        assert_ne!(keys.keys[0].secret, [0; 32]);
        assert!(keys.keys[0].created_unix_s + 5 >= unix_now());
        assert_eq!(keys.lifetime_s, 12 * 3600);
        assert_eq!(rotation.next_rotation(), now + ROTATION);
    }

    #[test]
    fn a_successor_with_a_shorter_rotation_keeps_the_age_of_the_keys() {
        let now = Instant::now();
        let rotation = Duration::from_secs(10);
        let mut keys = TicketKeyRotation::with_rotation(rotation, now)
            .expect("keys")
            .keys()
            .clone();
        keys.keys[0].created_unix_s = unix_now() - 4;
        let inherited =
            TicketKeyRotation::inherited_with_rotation(keys.clone(), rotation, now).expect("keys");
        assert_eq!(inherited.keys(), &keys);
        let due = inherited.next_rotation().duration_since(now);
        assert!(
            due <= Duration::from_secs(6) && due >= Duration::from_secs(4),
            "{due:?}"
        );
        // A key older than the rotation is due at once.
        keys.keys[0].created_unix_s = unix_now() - 60;
        let overdue =
            TicketKeyRotation::inherited_with_rotation(keys, rotation, now).expect("keys");
        assert_eq!(overdue.next_rotation(), now);
    }
}
