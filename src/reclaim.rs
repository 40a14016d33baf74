//! Freeing a full in-memory cache (`store::recent`, `cbo::views`, the identity cache)
//! means dropping a map of hundreds of thousands of strings: 7.5 ms for 256 MB in
//! 138,000 entries, measured alone on this machine, longer with a cold cache. Done
//! under the cache's lock, that stalls every reader and the writer at once; so the
//! lock holder swaps in an empty map and the old one is dropped here, on a thread of
//! its own.

/// Drops `value` on another thread.
pub fn drop_elsewhere<T: Send + 'static>(value: T) {
    let spawned = std::thread::Builder::new()
        .name("crossway-reclaim".into())
        .spawn(move || drop(value));
    if let Err(e) = spawned {
        tracing::warn!(message = "Cannot start a thread to free memory; freeing it here.", error = %e);
    }
}
