//! `limits { max-connections-per-client N }`: how many connections one client IP may hold open
//! at once in this worker. Counted per worker (workers share no memory), so across `W` workers
//! a client may hold up to `W × N`; the kernel spreads a client's connections over the
//! workers, so in practice it gets close to `N` per worker only when it opens many.

use std::collections::HashMap;
use std::net::IpAddr;

/// Open client connections by IP, and which IP each session counts against.
#[derive(Debug, Default)]
pub struct ClientConnections {
    per_ip: HashMap<IpAddr, u32>,
    by_session: HashMap<usize, IpAddr>,
}

impl ClientConnections {
    /// Counts a new connection of `ip` as session `key`, unless `ip` already holds `limit`
    /// (0: no limit). Returns whether it was admitted.
    pub fn admit(&mut self, key: usize, ip: IpAddr, limit: u32) -> bool {
        if limit == 0 {
            return true;
        }
        let count = self.per_ip.entry(ip).or_insert(0);
        if *count >= limit {
            return false;
        }
        *count += 1;
        self.by_session.insert(key, ip);
        true
    }

    /// Session `key` closed: its IP holds one connection less.
    pub fn release(&mut self, key: usize) {
        let Some(ip) = self.by_session.remove(&key) else {
            return;
        };
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_per_ip_and_frees_on_release() {
        let mut c = ClientConnections::default();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(c.admit(1, a, 2));
        assert!(c.admit(2, a, 2));
        assert!(!c.admit(3, a, 2), "third connection of the same IP");
        assert!(c.admit(4, b, 2), "another IP has its own count");
        c.release(1);
        assert!(c.admit(5, a, 2), "a slot freed up");
        c.release(99); // unknown session: nothing happens
        assert!(c.admit(6, a, 0), "0 means no limit");
        c.release(2);
        c.release(5);
        assert!(
            !c.per_ip.contains_key(&a),
            "no entry left for an IP without connections"
        );
    }
}
