//! Read-through cache of identifier → person: Redis when configured (shared by every
//! gateway process), in process on the embedded store, none on PostgreSQL without Redis
//! (a per-process cache there could serve a mapping another process has merged away).
//!
//! No process serves a stale mapping after a merge has committed: the writer drops the
//! merged identifiers' keys *after* COMMIT, and a fill only lands if no invalidation
//! happened since the reader started (a generation counter checked by a Lua script), so
//! a reader that read the store before the merge cannot put the old answer back.
//! When Redis fails, lookups go to the store and the failure is counted; the
//! connection manager reconnects by itself. An invalidation that could not reach Redis
//! is made good once it answers again by bumping the key epoch, which retires every
//! entry at once.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Identifier, Person};
use crate::store::{Result, Store};

/// A safety net: an entry lives at most this long even if an invalidation were lost.
const TTL_SECONDS: u64 = 3600;
/// Largest in-process cache; cleared when full (the store is the truth).
const MAX_LOCAL: usize = 2_000_000;

enum Backend {
    None,
    Local(RwLock<LocalMap>),
    Redis {
        manager: ConnectionManager,
        /// Key prefix: one per store, so deployments (or test databases) sharing a
        /// Redis never read each other's persons.
        prefix: String,
    },
}

pub struct IdentityCache {
    backend: Backend,
    redis_ok: AtomicBool,
    redis_errors: AtomicU64,
    /// The key epoch last seen in Redis.
    epoch: AtomicU64,
    /// An invalidation failed: bump the epoch as soon as Redis answers.
    lost_invalidation: AtomicBool,
    fill: redis::Script,
    drop: redis::Script,
}

/// The in-process cache: system → value → person, so a lookup borrows the
/// identifier's own strings instead of building a key for each.
#[derive(Default)]
struct LocalMap {
    by_system: HashMap<String, HashMap<String, Person>>,
    len: usize,
}

impl LocalMap {
    fn get(&self, id: &Identifier) -> Option<&Person> {
        self.by_system.get(&id.system)?.get(&id.value)
    }

    fn insert(&mut self, id: &Identifier, person: Person) {
        if self.len >= MAX_LOCAL {
            self.clear();
        }
        let values = self.by_system.entry(id.system.clone()).or_default();
        if values.insert(id.value.clone(), person).is_none() {
            self.len += 1;
        }
    }

    fn remove(&mut self, id: &Identifier) {
        if let Some(values) = self.by_system.get_mut(&id.system)
            && values.remove(&id.value).is_some()
        {
            self.len -= 1;
        }
    }

    fn clear(&mut self) {
        crate::reclaim::drop_elsewhere(std::mem::take(&mut self.by_system));
        self.len = 0;
    }
}

fn key(prefix: &str, epoch: u64, id: &Identifier) -> String {
    format!("{prefix}{epoch}:{}", id.token())
}

fn encode(p: &Person) -> String {
    format!("{} {}", p.id, p.client_ref)
}

fn decode(s: &str) -> Option<Person> {
    let (id, client_ref) = s.split_once(' ')?;
    Some(Person {
        id: id.to_string(),
        client_ref: client_ref.to_string(),
    })
}

impl IdentityCache {
    /// No cache: every lookup reads the store.
    pub fn none() -> IdentityCache {
        IdentityCache::with(Backend::None)
    }

    pub fn in_process() -> IdentityCache {
        IdentityCache::with(Backend::Local(RwLock::default()))
    }

    /// `store_key` names the store (its URL): processes sharing a store share entries.
    pub fn redis(manager: ConnectionManager, store_key: &str) -> IdentityCache {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(store_key.as_bytes());
        let tag = crate::hex(&digest[..6]);
        IdentityCache::with(Backend::Redis {
            manager,
            prefix: format!("crossway:{tag}:identity:"),
        })
    }

    fn with(backend: Backend) -> IdentityCache {
        IdentityCache {
            backend,
            redis_ok: AtomicBool::new(true),
            redis_errors: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            lost_invalidation: AtomicBool::new(false),
            // Sets the entry only if the generation is still the one read before the
            // store was.
            fill: redis::Script::new(
                "if (redis.call('GET', KEYS[1]) or '0') == ARGV[1] then \
                   redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3]) end return 1",
            ),
            // Bumps the generation (so fills in flight are dropped) and deletes the
            // keys under the epoch Redis holds now, whatever this process last saw.
            drop: redis::Script::new(
                "local e = redis.call('GET', KEYS[1]) or '0' \
                 redis.call('INCR', KEYS[2]) \
                 for i = 2, #ARGV do redis.call('DEL', ARGV[1] .. e .. ':' .. ARGV[i]) end \
                 return 1",
            ),
        }
    }

    /// `none`, `in-process` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::None => "none",
            Backend::Local(_) => "in-process",
            Backend::Redis { .. } => "redis",
        }
    }

    /// False after a Redis call failed, until one succeeds again.
    pub fn healthy(&self) -> bool {
        self.redis_ok.load(Ordering::Relaxed)
    }

    pub fn redis_errors(&self) -> u64 {
        self.redis_errors.load(Ordering::Relaxed)
    }

    fn redis_failed(&self, e: &redis::RedisError) {
        self.redis_errors.fetch_add(1, Ordering::Relaxed);
        if self.redis_ok.swap(false, Ordering::Relaxed) {
            tracing::warn!(message = "Redis failed; identity lookups read the store until it is back.", error = %e);
        }
    }

    fn redis_worked(&self) {
        if !self.redis_ok.swap(true, Ordering::Relaxed) {
            tracing::info!(message = "Redis is back; identity lookups use the cache again.");
        }
    }

    /// The live person each identifier names, in order (`None`: unknown).
    pub async fn lookup(&self, store: &Store, ids: &[Identifier]) -> Result<Vec<Option<Person>>> {
        match &self.backend {
            Backend::None => read_store(store, ids).await,
            Backend::Local(map) => {
                let mut found: Vec<Option<Person>> = {
                    let map = map.read().expect("identity cache lock");
                    ids.iter().map(|i| map.get(i).cloned()).collect()
                };
                for (n, id) in ids.iter().enumerate() {
                    if found[n].is_none()
                        && let Some(p) = store.identifier_owner(id).await?
                    {
                        map.write()
                            .expect("identity cache lock")
                            .insert(id, p.clone());
                        found[n] = Some(p);
                    }
                }
                Ok(found)
            }
            Backend::Redis { manager, prefix } => {
                match self.lookup_redis(manager, prefix, store, ids).await {
                    Ok(found) => {
                        self.redis_worked();
                        Ok(found)
                    }
                    Err(Fallback::Redis(e)) => {
                        self.redis_failed(&e);
                        read_store(store, ids).await
                    }
                    Err(Fallback::Store(e)) => Err(e),
                }
            }
        }
    }

    async fn lookup_redis(
        &self,
        manager: &ConnectionManager,
        prefix: &str,
        store: &Store,
        ids: &[Identifier],
    ) -> std::result::Result<Vec<Option<Person>>, Fallback> {
        let (epoch_key, generation_key) = (format!("{prefix}epoch"), format!("{prefix}generation"));
        let mut conn = manager.clone();
        if self.lost_invalidation.load(Ordering::Relaxed) {
            let _: u64 = redis::cmd("INCR")
                .arg(&epoch_key)
                .query_async(&mut conn)
                .await
                .map_err(Fallback::Redis)?;
            self.lost_invalidation.store(false, Ordering::Relaxed);
        }
        let epoch = self.epoch.load(Ordering::Relaxed);
        let mut keys: Vec<String> = ids.iter().map(|i| key(prefix, epoch, i)).collect();
        // One round trip: the epoch and generation (for fills), then every key.
        let (current, generation, mut cached): (Option<u64>, Option<String>, Vec<Option<String>>) =
            redis::pipe()
                .get(&epoch_key)
                .get(&generation_key)
                .mget(&keys)
                .query_async(&mut conn)
                .await
                .map_err(Fallback::Redis)?;
        let current = current.unwrap_or(0);
        if current != epoch {
            // Entries under the old epoch are retired: treat all as misses.
            self.epoch.store(current, Ordering::Relaxed);
            keys = ids.iter().map(|i| key(prefix, current, i)).collect();
            cached = vec![None; ids.len()];
        }
        let generation = generation.unwrap_or_else(|| "0".into());
        let mut found = Vec::with_capacity(ids.len());
        for (n, id) in ids.iter().enumerate() {
            match cached.get(n).cloned().flatten().as_deref().and_then(decode) {
                Some(p) => found.push(Some(p)),
                None => {
                    let p = store.identifier_owner(id).await.map_err(Fallback::Store)?;
                    if let Some(p) = &p {
                        self.fill
                            .key(&generation_key)
                            .key(&keys[n])
                            .arg(&generation)
                            .arg(encode(p))
                            .arg(TTL_SECONDS)
                            .invoke_async::<i64>(&mut conn)
                            .await
                            .map_err(Fallback::Redis)?;
                    }
                    found.push(p);
                }
            }
        }
        Ok(found)
    }

    /// Keeps cached answers honest about merges that did not pass through a caller that
    /// invalidates (an operator command beside the embedded gateway, another process,
    /// the EHR-server coordinator's Bundles): whenever the store's identity generation
    /// moves, every entry is dropped — the in-process map, or on Redis by a new key
    /// epoch — and so is what the embedded store keeps in memory (the merge re-pointed
    /// Tasks). Runs forever.
    pub async fn watch(self: std::sync::Arc<Self>, store: Store, every: Duration) {
        let mut seen = None;
        loop {
            if let Ok(generation) = store.identity_generation().await {
                if seen.is_some_and(|s| s != generation) {
                    self.forget_all().await;
                    if let Err(e) = store.reload_after_foreign_write().await {
                        tracing::warn!(message = "Cannot re-read referrals after another process's merge.", error = %e);
                    }
                }
                seen = Some(generation);
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Drops every entry (a merge whose moved identifiers the caller does not know);
    /// on Redis by moving to a new key epoch, which retires all entries at once.
    pub async fn forget_all(&self) {
        match &self.backend {
            Backend::None => {}
            Backend::Local(map) => map.write().expect("identity cache lock").clear(),
            Backend::Redis { manager, prefix } => {
                let mut conn = manager.clone();
                let bumped: redis::RedisResult<u64> = redis::cmd("INCR")
                    .arg(format!("{prefix}epoch"))
                    .query_async(&mut conn)
                    .await;
                if let Err(e) = bumped {
                    self.redis_failed(&e);
                    self.lost_invalidation.store(true, Ordering::Relaxed);
                }
            }
        }
    }

    /// Drops these identifiers' entries; called after the COMMIT that changed them.
    /// A Redis failure here is logged and retried a few times: the TTL bounds the
    /// damage of one that never lands.
    pub async fn invalidate(&self, ids: &[Identifier]) {
        if ids.is_empty() {
            return;
        }
        match &self.backend {
            Backend::None => {}
            Backend::Local(map) => {
                let mut map = map.write().expect("identity cache lock");
                for id in ids {
                    map.remove(id);
                }
            }
            Backend::Redis { manager, prefix } => {
                let tokens: Vec<String> = ids.iter().map(Identifier::token).collect();
                for attempt in 0..5u32 {
                    let mut conn = manager.clone();
                    let mut call = self.drop.key(format!("{prefix}epoch"));
                    call.key(format!("{prefix}generation"));
                    call.arg(prefix);
                    for t in &tokens {
                        call.arg(t);
                    }
                    let done: redis::RedisResult<i64> = call.invoke_async(&mut conn).await;
                    match done {
                        Ok(_) => {
                            self.redis_worked();
                            return;
                        }
                        Err(e) => {
                            self.redis_failed(&e);
                            tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                        }
                    }
                }
                self.lost_invalidation.store(true, Ordering::Relaxed);
                tracing::error!(
                    message = "Could not drop merged identifiers from Redis; every entry is retired once it answers again."
                );
            }
        }
    }
}

enum Fallback {
    Redis(redis::RedisError),
    Store(crate::store::StoreError),
}

async fn read_store(store: &Store, ids: &[Identifier]) -> Result<Vec<Option<Person>>> {
    let mut found = Vec::with_capacity(ids.len());
    for id in ids {
        found.push(store.identifier_owner(id).await?);
    }
    Ok(found)
}
