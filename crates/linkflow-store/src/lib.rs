//! `linkflow-store`: linkflow's append-only event log.
//!
//! Per-session streams with gap-free versions, a gap-free global position over all streams,
//! idempotent appends by dedupe key (every event a stream receives, whether its fold accepts
//! it or not), and per-session snapshots, behind the [`EventStore`] trait. [`SledStore`] is the embedded default; the
//! [`conformance`] suite (feature `conformance`) is written once and run against every backend.
//!
//! Modules:
//! - [`store`]: the trait, what an atomic commit writes ([`Commit`]) and what it answers
//!   ([`Receipt`]).
//! - [`check`]: the backend-independent half of a commit (checking its constraints, handing
//!   out positions), shared by every backend so that they refuse the same commits.
//! - [`record`]: what is stored (events, snapshots) and its checksummed, versioned encoding.
//! - `keys`: the sled key layout (see `docs/storage.md`); `dedupe_list`: a stream's dedupe
//!   entries in one value.
//! - [`sled_store`]: the sled backend; `verify`: its consistency walk.
//! - [`error`]: [`StoreError`] (typed variants, none a bare string of another layer's error),
//!   [`CorruptRecord`], and [`DatabaseError`] with its [`DatabaseFailure`] (PostgreSQL's
//!   SQLSTATE codes as variants).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod binary;
pub mod check;
mod dedupe_list;
pub mod error;
mod keys;
pub mod record;
mod repair;
pub mod sled_store;
mod staged;
pub mod store;
mod verify;
mod wal;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use error::{CommitError, CorruptRecord, DatabaseError, DatabaseFailure, StoreError};
pub use record::{
    CompactedEvent, DedupeKey, LogRecord, NewEvent, RawJson, Snapshot, StoredEvent,
    MAX_RECORD_BYTES, SCHEMA_VERSION, SEALED_PREFIX,
};
pub use repair::{LostEvent, LostFrame, RepairReport};
pub use sled_store::{SledOptions, SledStore};
pub use store::{
    Append, Commit, CounterDelta, DedupeHit, EventStore, IndexChange, Placed, Problem, Receipt,
    StreamRead, StreamStart, StreamsRead, VerifyReport, MAX_INDEX_KEY_BYTES,
};
