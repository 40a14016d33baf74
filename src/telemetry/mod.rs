//! Logging: `tracing` to stdout (the gateway) or stderr (operator commands, whose
//! stdout is their output), filtered by `CROSSWAY_LOG` (or the config's `log`).
//! `CROSSWAY_LOG_FORMAT=json` switches to one JSON object per line for log shippers.
//! Prometheus metrics are in [`metrics`]; [`Backlog`] is the store-wide figures the store
//! reads at each scrape (`Store::backlog`), defined here so the store names nothing
//! above it.

pub mod metrics;

use tracing_subscriber::EnvFilter;

pub fn init(filter: &str, to_stderr: bool) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("CROSSWAY_LOG_FORMAT").as_deref() == Ok("json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if to_stderr {
        let builder = builder
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
    } else {
        let builder = builder.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
        if json {
            builder.json().init();
        } else {
            builder.init();
        }
    }
}

/// Store-wide backlogs, read from the store at each scrape (`Store::backlog`).
#[derive(Debug, Default, Clone, Copy)]
pub struct Backlog {
    pub deliveries_pending: i64,
    /// How far the most overdue pending delivery is behind its due time.
    pub delivery_lag_micros: i64,
    /// Deliveries that exhausted their retries and wait for a redeliver.
    pub deliveries_failed: i64,
    pub endpoints_disabled: i64,
    pub dead_letters: i64,
    pub identity_conflicts: i64,
    /// EHR write-backs whose last attempt failed (`crossway ehr stuck`).
    pub ehr_writebacks_stuck: i64,
}

/// What `/metrics` shows of an in-memory cache.
#[derive(Debug, Clone, Copy, Default)]
pub struct CacheStats {
    pub bytes: usize,
    pub entries: usize,
    pub hits: u64,
    pub misses: u64,
    /// Entries dropped to stay within the budget.
    pub evicted: u64,
}
