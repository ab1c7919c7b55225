//! TLS session tickets sealed with the master's shared keys ([`TicketKeys`]): any worker, of
//! this generation or the next binary's, opens a ticket any other issued, so a client resumes
//! its session after a rolling upgrade instead of paying a full handshake.
//!
//! A ticket is `key name (16) | nonce (12) | ChaCha20-Poly1305(state) | tag (16)`. The newest
//! key seals; every key the master still lists opens (the previous one covers tickets issued
//! before a rotation). The master replaces the keys at rotation ([`SharedTicketer::replace`]);
//! the same ticketer is shared by every listener's `ServerConfig`, reload included.

use std::fmt;
use std::sync::{Arc, RwLock};

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::server::ProducesTickets;
use zentinel_protocol::ticket_keys::{hex, TicketKeys, TICKET_KEY_NAME_LEN};

/// One key ready to seal and open.
struct SealingKey {
    name: [u8; TICKET_KEY_NAME_LEN],
    key: LessSafeKey,
}

/// The keys in use, newest first.
#[derive(Default)]
struct KeyRing {
    keys: Vec<SealingKey>,
    lifetime_s: u32,
}

/// The worker's ticketer: shared keys, replaceable while sessions use them.
pub struct SharedTicketer {
    ring: RwLock<KeyRing>,
    random: SystemRandom,
}

impl fmt::Debug for SharedTicketer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .ring
            .read()
            .map(|ring| ring.keys.iter().map(|k| hex(&k.name)).collect())
            .unwrap_or_default();
        f.debug_struct("SharedTicketer")
            .field("keys", &names)
            .finish()
    }
}

impl SharedTicketer {
    /// A ticketer with `keys` (none: tickets off until keys arrive).
    pub fn new(keys: &TicketKeys) -> Arc<Self> {
        let ticketer = Arc::new(SharedTicketer {
            ring: RwLock::new(KeyRing::default()),
            random: SystemRandom::new(),
        });
        ticketer.replace(keys);
        ticketer
    }

    /// Use these keys from now on (the master rotated them, or a new master took over).
    pub fn replace(&self, keys: &TicketKeys) {
        let sealing = keys
            .keys
            .iter()
            .filter_map(|key| {
                let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key.secret).ok()?;
                Some(SealingKey {
                    name: key.name,
                    key: LessSafeKey::new(unbound),
                })
            })
            .collect();
        let mut ring = match self.ring.write() {
            Ok(ring) => ring,
            // A panic while holding the lock left nothing half-written: the ring is replaced
            // whole.
            Err(poisoned) => poisoned.into_inner(),
        };
        *ring = KeyRing {
            keys: sealing,
            lifetime_s: keys.lifetime_s,
        };
    }

    fn with_ring<T>(&self, f: impl FnOnce(&KeyRing) -> T) -> T {
        match self.ring.read() {
            Ok(ring) => f(&ring),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }
}

impl ProducesTickets for SharedTicketer {
    fn enabled(&self) -> bool {
        self.with_ring(|ring| !ring.keys.is_empty())
    }

    fn lifetime(&self) -> u32 {
        self.with_ring(|ring| ring.lifetime_s)
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.with_ring(|ring| {
            let key = ring.keys.first()?;
            let mut nonce = [0u8; NONCE_LEN];
            self.random.fill(&mut nonce).ok()?;
            let mut sealed = Vec::with_capacity(
                TICKET_KEY_NAME_LEN + NONCE_LEN + plain.len() + CHACHA20_POLY1305.tag_len(),
            );
            sealed.extend_from_slice(&key.name);
            sealed.extend_from_slice(&nonce);
            let mut body = plain.to_vec();
            // The key name is authenticated too: a ticket cannot be moved to another key.
            key.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(key.name),
                    &mut body,
                )
                .ok()?;
            sealed.extend_from_slice(&body);
            Some(sealed)
        })
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        let (name, rest) = cipher.split_at_checked(TICKET_KEY_NAME_LEN)?;
        let (nonce, body) = rest.split_at_checked(NONCE_LEN)?;
        self.with_ring(|ring| {
            let key = ring.keys.iter().find(|key| key.name == name)?;
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            let mut body = body.to_vec();
            let plain = key
                .key
                .open_in_place(nonce, Aad::from(key.name), &mut body)
                .ok()?;
            Some(plain.to_vec())
        })
    }
}

#[cfg(test)]
mod tests {
    use zentinel_protocol::ticket_keys::TicketKey;

    use super::*;

    fn key(n: u8) -> TicketKey {
        TicketKey {
            name: [n; TICKET_KEY_NAME_LEN],
            secret: [n.wrapping_mul(7); 32],
            created_unix_s: u64::from(n),
        }
    }

    fn keys(list: &[u8]) -> TicketKeys {
        TicketKeys {
            keys: list.iter().map(|&n| key(n)).collect(),
            lifetime_s: 7200,
        }
    }

    #[test]
    fn another_ticketer_with_the_same_keys_opens_the_ticket() {
        let issuing = SharedTicketer::new(&keys(&[1]));
        let other = SharedTicketer::new(&keys(&[1]));
        let ticket = issuing.encrypt(b"session state").expect("sealed");
        assert_eq!(&ticket[..TICKET_KEY_NAME_LEN], &[1; TICKET_KEY_NAME_LEN]);
        assert_eq!(
            other.decrypt(&ticket).as_deref(),
            Some(&b"session state"[..])
        );
        assert!(other.enabled());
        assert_eq!(other.lifetime(), 7200);
    }

    #[test]
    fn after_a_rotation_old_tickets_open_and_new_ones_use_the_new_key() {
        let ticketer = SharedTicketer::new(&keys(&[1]));
        let old_ticket = ticketer.encrypt(b"old").expect("sealed");
        ticketer.replace(&keys(&[2, 1]));
        assert_eq!(ticketer.decrypt(&old_ticket).as_deref(), Some(&b"old"[..]));
        let new_ticket = ticketer.encrypt(b"new").expect("sealed");
        assert_eq!(
            &new_ticket[..TICKET_KEY_NAME_LEN],
            &[2; TICKET_KEY_NAME_LEN]
        );
        // Once the old key is dropped, its tickets no longer open (a full handshake follows).
        ticketer.replace(&keys(&[3, 2]));
        assert_eq!(ticketer.decrypt(&old_ticket), None);
    }

    #[test]
    fn forged_truncated_or_foreign_tickets_do_not_open() {
        let ticketer = SharedTicketer::new(&keys(&[1]));
        let mut ticket = ticketer.encrypt(b"state").expect("sealed");
        assert_eq!(ticketer.decrypt(&ticket[..20]), None);
        assert_eq!(ticketer.decrypt(&[]), None);
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert_eq!(ticketer.decrypt(&ticket), None);
        let foreign = SharedTicketer::new(&keys(&[9]))
            .encrypt(b"x")
            .expect("sealed");
        assert_eq!(ticketer.decrypt(&foreign), None);
        // Same name, different secret: the tag fails.
        let mut impostor = keys(&[1]);
        impostor.keys[0].secret = [0xff; 32];
        let forged = SharedTicketer::new(&impostor)
            .encrypt(b"x")
            .expect("sealed");
        assert_eq!(ticketer.decrypt(&forged), None);
    }

    #[test]
    fn without_keys_tickets_are_off() {
        let ticketer = SharedTicketer::new(&TicketKeys::default());
        assert!(!ticketer.enabled());
        assert_eq!(ticketer.encrypt(b"x"), None);
    }
}
