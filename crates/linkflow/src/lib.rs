//! `linkflow`: the engine users embed. Link sessions as explicit state machines over a durable,
//! append-only event log.
//!
//! [`Engine`] takes decoded provider events ([`IncomingEvent`]) and stores every one in its
//! session's stream, in arrival order; duplicates are recognised by their dedupe key and
//! stored once. A session is the fold of its events in event-time order with the transition
//! table of `linkflow_core` (`linkflow_core::timeline`): each event accepted where the fold
//! places it, or rejected and shown with the reason, whatever order they arrived in. Every accepted event is durable when the call returns (under the
//! default [`Durability::Fsync`]); concurrent callers share one fsync.
//!
//! Modules:
//! - `engine`: the [`Engine`] handle: ingest, queries, subscriptions, verify.
//! - `writer`: the writer thread and its group commit.
//! - `query`: sessions from snapshot plus tail, histories, lists.
//! - `subscribe`: catch-up subscriptions over the global order.
//! - `cache`: the bounded session cache.
//! - `stats`: where the write path's time goes ([`WriteStats`]).
//! - `verify`: the consistency check.
//! - [`intake`]: provider payloads in ([`Engine::ingest_payload`], [`Intake`] for streams):
//!   split, decode, quarantine what names no stream, ingest.
//! - [`quarantine`]: payloads that named no stream: listed, counted, redriven.
//! - [`config`], [`error`], [`ingest`]: what goes in and comes out.
//! - [`chart`]: the SVG funnel chart.
//! - [`views`]: the JSON shapes of the CLI and HTTP contract.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod abandon;
mod cache;
pub mod chart;
pub mod compact;
pub mod config;
mod engine;
mod erase;
pub mod error;
pub mod folded;
mod funnel_read;
pub use funnel_read::Gauges;
pub mod delivery;
mod index;
pub mod ingest;
pub mod intake;
mod key_index;
pub mod notify;
#[cfg(feature = "postgres")]
pub mod pg_delivery;
#[cfg(feature = "postgres")]
mod pg_keys;
pub mod privacy;
pub mod quarantine;
mod query;
mod seal;
mod stats;
mod subscribe;
mod verify;
pub mod views;
mod writer;

pub use abandon::AbandonReport;
pub use cache::CacheStats;
pub use config::{Durability, EngineConfig, StoreChoice};
pub use engine::{Engine, SealedEvents};
pub use erase::ErasureReport;
pub use error::{EngineError, EventError};
pub use folded::Folded;
pub use ingest::{default_dedupe_key, AccountFollow, IncomingEvent, IngestOutcome};
pub use intake::{
    DeliveryError, DeliveryReport, Intake, IntakeCounts, PayloadContext, PayloadResult,
    INTAKE_BATCH,
};
pub use notify::{Notification, NotificationData, NotificationId, NotificationKind, Notifications};
pub use quarantine::{
    QuarantineCounts, QuarantineFilter, QuarantineList, QuarantineRedrive, QuarantineView,
    RedriveReport, Redrove,
};
pub use query::{
    AccountPage, AccountView, Cursor, HistoryEntry, HistoryPage, InvalidCursor, RebuildStats,
    RejectedEvent, RejectedList, SessionFilter, SessionPage, SessionView, MAX_PAGE_SCAN,
    MAX_PAGE_SESSIONS, MAX_REJECTED_LISTED,
};
pub use stats::WriteStats;
pub use subscribe::Subscription;
pub use writer::RefoldReport;

pub use linkflow_core as core;
pub use linkflow_providers as providers;
pub use linkflow_providers::{DecodeContext, Feed, Location, Warning};
pub use linkflow_store as store;
