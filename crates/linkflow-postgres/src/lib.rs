//! `linkflow-postgres`: linkflow's event log on PostgreSQL, so that several linkflow nodes can
//! share one store.
//!
//! [`PgStore`] implements [`linkflow_store::EventStore`] and passes the same conformance suite
//! as the embedded sled store. What makes several nodes safe (see `docs/deploy.md`):
//! - no global lock: a commit is one statement in its own transaction, and the database checks
//!   what it relies on (unique `(stream, version)` and `(stream, dedupe)`, the event before each
//!   stream's first append, snapshots not moved), so per-stream order and exactly-once dedupe
//!   hold across nodes while their commits run concurrently;
//! - positions are handed out after commit by one sequencer (the node holding an advisory-lock
//!   lease), only to events below the transaction-id horizon, so they are gap-free and a reader
//!   of `position > checkpoint` never skips or repeats an event; a long transaction holds the
//!   numbering back, it never reorders it;
//! - `LISTEN linkflow_commits` (notified by the sequencer) wakes subscribers on every node,
//!   with a poll of the head every second in case a notification is lost.
//!
//! Connections use `synchronous_commit = on`, so a commit that returned is on disk and
//! [`linkflow_store::EventStore::sync`] has nothing left to do.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod delivery;
mod error;
mod keys;
mod pool;
pub mod schema;
mod sequencer;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod verify;

pub use delivery::PgDelivery;
pub use keys::PgKeys;
pub use sequencer::Numbering;
pub use store::{PgOptions, PgStore};

/// The channel commits notify on, with the new head as payload.
pub const NOTIFY_CHANNEL: &str = "linkflow_commits";
