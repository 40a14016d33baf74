//! The shared cache: Redis when `CROSSWAY_REDIS_URL` is set, otherwise in-process.
//!
//! Invariant: the cache is never the source of truth; it may be flushed at any time
//! without losing anything.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Clone)]
pub struct Cache {
    redis: Option<ConnectionManager>,
}

impl Cache {
    pub fn in_process() -> Cache {
        Cache { redis: None }
    }

    /// Redis, connected lazily: the gateway starts while Redis is down and the
    /// connection manager reconnects by itself after a restart. Short timeouts, so a
    /// stalled Redis costs a lookup milliseconds before it falls back to the store.
    pub fn redis(url: &str) -> Result<Cache, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Cache {
            redis: Some(manager),
        })
    }

    /// The shared Redis connection, when configured.
    pub fn redis_manager(&self) -> Option<ConnectionManager> {
        self.redis.clone()
    }

    /// Which cache is in use, once it answers.
    pub async fn ping(&self) -> Result<&'static str, redis::RedisError> {
        match &self.redis {
            None => Ok("in-process"),
            Some(manager) => {
                let mut conn = manager.clone();
                redis::cmd("PING").query_async::<String>(&mut conn).await?;
                Ok("redis")
            }
        }
    }
}
