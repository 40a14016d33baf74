//! Integration tests: the real binary over real HTTP, on SQLite or PostgreSQL.

mod helpers;

mod attacks;
mod cbo;
mod conformance;
mod connectors;
mod crud;
mod directory;
mod durability;
mod ehr;
mod errors;
mod faults;
mod feeds;
mod mappings;
mod measures;
mod memory;
mod metrics;
mod reports;
mod search;
mod security;
mod subscriptions;
mod transaction;
mod typed;
mod webhooks;
