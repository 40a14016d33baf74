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

    #[tokio::test]
    async fn the_limit_counts_per_client() {
        let limiter = RateLimiter::new(3, None);
        for _ in 0..3 {
            limiter.check("a").await.unwrap();
        }
        let over = limiter.check("a").await;
        // A second boundary may fall between the calls; then the window restarted.
        if this_second() == limiter.local.lock().unwrap()["a"].0 {
            assert!(matches!(
                over,
                Err(AuthError::RateLimited { retry_after: 1 })
            ));
        }
        limiter.check("b").await.unwrap();
        RateLimiter::new(0, None).check("a").await.unwrap();
    }
}
