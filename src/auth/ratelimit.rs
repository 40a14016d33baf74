//! Per-client request rate limit: a fixed one-second window. With Redis the counters
//! live there, so the limit holds across replicas; without it (or while Redis is
//! unreachable) each process counts alone.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;

use super::AuthError;

pub struct RateLimiter {
    per_second: u32,
    local: Mutex<HashMap<String, (u64, u32)>>,
    redis: Option<ConnectionManager>,
}

fn this_second() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl RateLimiter {
    /// `per_second == 0` turns the limit off.
    pub fn new(per_second: u32, redis: Option<ConnectionManager>) -> RateLimiter {
        RateLimiter {
            per_second,
            local: Mutex::default(),
            redis,
        }
    }

    pub async fn check(&self, client_id: &str) -> Result<(), AuthError> {
        if self.per_second == 0 {
            return Ok(());
        }
        let second = this_second();
        let count = match &self.redis {
            Some(manager) => match shared_count(manager.clone(), client_id, second).await {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(message = "Rate-limit counter in Redis unavailable; counting locally.", error = %e);
                    self.local_count(client_id, second)
                }
            },
            None => self.local_count(client_id, second),
        };
        if count > self.per_second {
            Err(AuthError::RateLimited { retry_after: 1 })
        } else {
            Ok(())
        }
    }

    fn local_count(&self, client_id: &str, second: u64) -> u32 {
        let mut local = self.local.lock().expect("poisoned");
        if local.len() > 100_000 {
            local.retain(|_, (s, _)| *s == second);
        }
        let entry = local.entry(client_id.to_string()).or_insert((second, 0));
        if entry.0 != second {
            *entry = (second, 0);
        }
        entry.1 += 1;
        entry.1
    }
}

async fn shared_count(
    mut manager: ConnectionManager,
    client_id: &str,
    second: u64,
) -> redis::RedisResult<u32> {
    let key = format!("crossway:ratelimit:{client_id}:{second}");
    let (count,): (u32,) = tokio::time::timeout(
        std::time::Duration::from_millis(200),
        redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, 2)
            .ignore()
            .query_async(&mut manager),
    )
    .await
    .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "timed out")))??;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_gets_its_own_window_and_a_new_second_restarts_it() {
        let limiter = RateLimiter::new(3, None);
        let counts: Vec<u32> = (0..4).map(|_| limiter.local_count("a", 100)).collect();
        assert_eq!(counts, [1, 2, 3, 4]);
        assert_eq!(limiter.local_count("b", 100), 1);
        assert_eq!(limiter.local_count("a", 101), 1);
    }

    #[tokio::test]
    async fn over_the_limit_is_refused_with_retry_after_and_zero_means_off() {
        let limiter = RateLimiter::new(2, None);
        let mut refused = Vec::new();
        for _ in 0..50 {
            if let Err(e) = limiter.check("a").await {
                refused.push(e);
            }
        }
        // 50 calls span at most two one-second windows: at most 4 pass.
        assert!(refused.len() >= 46, "{} refused", refused.len());
        assert!(
            refused
                .iter()
                .all(|e| matches!(e, AuthError::RateLimited { retry_after: 1 }))
        );
        for _ in 0..50 {
            RateLimiter::new(0, None).check("a").await.unwrap();
        }
    }
}
