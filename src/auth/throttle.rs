//! The token endpoint's guard for client secrets. A wrong secret costs an argon2 hash
//! (tens of milliseconds of CPU), so guessing is metered *before* the hash: per peer
//! address (secret requests per second), per claimed client id (after a few consecutive
//! failures, a lock-out that doubles with each further one) and per peer (the same, with
//! more slack, since a NAT may hide many clients); and only as many hashes run at once as
//! there are cores, so a flood of wrong secrets cannot starve every other request on the
//! box. Signed assertions cost no hash and cannot be guessed; they are not metered here.
//!
//! Counters live in this process: a replica behind a load balancer meters what reaches
//! it (N replicas allow N times the rate; the lock-out still doubles on each).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::AuthError;

/// Secret-based token requests one peer may make per second, whatever their outcome.
const PEER_PER_SECOND: u32 = 20;
/// Consecutive failures allowed for one client id before its lock-out starts …
const FREE_FAILURES: u32 = 5;
/// … and for one peer address.
const PEER_FREE_FAILURES: u32 = 20;
/// The longest lock-out.
const MAX_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// Entries kept before stale ones are dropped.
const CAPACITY: usize = 100_000;

#[derive(Default)]
struct Failures {
    count: u32,
    locked_until: Option<Instant>,
}

pub struct Throttle {
    peers: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    failures: Mutex<HashMap<String, Failures>>,
    hashing: Semaphore,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new()
    }
}

impl Throttle {
    pub fn new() -> Throttle {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Throttle {
            peers: Mutex::default(),
            failures: Mutex::default(),
            hashing: Semaphore::new(cores),
        }
    }

    /// Before anything else is looked at: the peer's rate, then whether the client id or
    /// the peer is locked out.
    pub fn admit(&self, peer: Option<IpAddr>, client_id: Option<&str>) -> Result<(), AuthError> {
        let now = Instant::now();
        if let Some(ip) = peer {
            let mut peers = self.peers.lock().expect("poisoned");
            if peers.len() > CAPACITY {
                peers.retain(|_, (since, _)| now.duration_since(*since) < Duration::from_secs(1));
            }
            let (since, count) = peers.entry(ip).or_insert((now, 0));
            if now.duration_since(*since) >= Duration::from_secs(1) {
                *since = now;
                *count = 0;
            }
            *count += 1;
            if *count > PEER_PER_SECOND {
                return Err(AuthError::RateLimited { retry_after: 1 });
            }
        }
        let failures = self.failures.lock().expect("poisoned");
        for key in keys(peer, client_id) {
            if let Some(until) = failures.get(&key).and_then(|f| f.locked_until)
                && until > now
            {
                let wait = until.duration_since(now).as_secs().max(1);
                return Err(AuthError::RateLimited { retry_after: wait });
            }
        }
        Ok(())
    }

    /// A refused secret: past the free failures, each further one doubles the lock-out
    /// of the client id, and of the peer.
    pub fn failed(&self, peer: Option<IpAddr>, client_id: Option<&str>) {
        let now = Instant::now();
        let mut failures = self.failures.lock().expect("poisoned");
        if failures.len() > CAPACITY {
            failures.retain(|_, f| f.locked_until.is_some_and(|u| u > now));
        }
        for key in keys(peer, client_id) {
            let free = if key.starts_with("peer:") {
                PEER_FREE_FAILURES
            } else {
                FREE_FAILURES
            };
            let f = failures.entry(key).or_default();
            f.count += 1;
            if f.count > free {
                let doublings = (f.count - free - 1).min(20);
                let lock = Duration::from_secs(1u64 << doublings).min(MAX_LOCKOUT);
                f.locked_until = Some(now + lock);
            }
        }
    }

    /// A credential that verified: the client's and the peer's count start again.
    pub fn succeeded(&self, peer: Option<IpAddr>, client_id: Option<&str>) {
        let mut failures = self.failures.lock().expect("poisoned");
        for key in keys(peer, client_id) {
            failures.remove(&key);
        }
    }

    /// A permit to run one password hash; at most one per core at a time.
    pub async fn hashing(&self) -> tokio::sync::SemaphorePermit<'_> {
        self.hashing
            .acquire()
            .await
            .expect("the hashing semaphore is never closed")
    }
}

fn keys(peer: Option<IpAddr>, client_id: Option<&str>) -> impl Iterator<Item = String> {
    let peer = peer.map(|ip| format!("peer:{ip}"));
    let client = client_id.map(|id| format!("client:{id}"));
    peer.into_iter().chain(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_out_the_client_and_the_peer_with_a_growing_wait() {
        let t = Throttle::new();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..FREE_FAILURES {
            assert!(t.admit(Some(a), Some("c1")).is_ok());
            t.failed(Some(a), Some("c1"));
        }
        assert!(
            t.admit(Some(a), Some("c1")).is_ok(),
            "free failures used up"
        );
        t.failed(Some(a), Some("c1"));
        // The client id is locked from any peer; the peer not yet for other ids.
        assert!(t.admit(Some(b), Some("c1")).is_err());
        assert!(t.admit(Some(a), Some("c2")).is_ok());
        // A peer guessing across many ids is locked out too.
        let c = "198.51.100.7".parse().unwrap();
        for i in 0..PEER_FREE_FAILURES + 1 {
            t.failed(Some(c), Some(&format!("id{i}")));
        }
        assert!(t.admit(Some(c), Some("fresh")).is_err());
        assert!(t.admit(Some(b), Some("c2")).is_ok());
        // A success from elsewhere clears the client's count.
        t.succeeded(Some(b), Some("c1"));
        assert!(t.admit(Some(b), Some("c1")).is_ok());
    }

    #[test]
    fn a_peer_over_its_rate_is_refused_before_anything_else() {
        let t = Throttle::new();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        for _ in 0..PEER_PER_SECOND {
            assert!(t.admit(Some(ip), None).is_ok());
        }
        assert!(matches!(
            t.admit(Some(ip), None),
            Err(AuthError::RateLimited { .. })
        ));
    }
}
