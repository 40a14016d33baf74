//! The shared cache: Redis when `CROSSWAY_REDIS_URL` is set, otherwise in-process.
//!
//! Invariant: the cache is never the source of truth; it may be flushed at any time
//! without losing anything.

use redis::aio::ConnectionManager;

#[derive(Clone)]
pub struct Cache {
    redis: Option<ConnectionManager>,
}

impl Cache {
    pub fn in_process() -> Cache {
        Cache { redis: None }
    }

    /// Connects to Redis. The connection manager reconnects by itself after a restart.
    pub async fn redis(url: &str) -> Result<Cache, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let manager = ConnectionManager::new(client).await?;
        Ok(Cache {
            redis: Some(manager),
        })
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
