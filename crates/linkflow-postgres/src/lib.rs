//! `linkflow-postgres`: linkflow's event log on PostgreSQL, so that several linkflow nodes can
//! share one store.
//!
//! [`PgStore`] implements [`linkflow_store::EventStore`] and passes the same conformance suite
//! as the embedded sled store. What makes several nodes safe (see `docs/deploy.md`):
//! - every commit runs in one transaction that first locks the single row of `linkflow_head`,
//!   then decides its operations with the shared planner ([`linkflow_store::plan`]) against
//!   what is committed, writes, and commits: commits from all nodes are serialized by the
//!   database, positions are gap-free and become visible in position order, so a reader of
//!   `position > checkpoint` never skips a late-committing event;
//! - version conflicts are found inside that transaction (and the unique
//!   constraints on `(stream, version)` and `(stream, dedupe)` back it up), so a dedupe key is
//!   stored once across nodes;
//! - `LISTEN linkflow_commits` wakes subscribers when another node commits, with a poll of the
//!   head every second in case a notification is lost.
//!
//! Commits use `synchronous_commit = on` (set on every connection), so a commit that returned is
//! on disk and [`linkflow_store::EventStore::sync`] has nothing left to do.
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
