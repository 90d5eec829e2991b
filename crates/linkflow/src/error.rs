//! The engine's errors.

use std::sync::Arc;

use linkflow_core::{Provider, SessionId};
use linkflow_store::{CommitError, StoreError};

/// Why an engine call failed as a whole.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum EngineError {
    /// The erasure keys (`docs/privacy.md`) could not be made, kept or read: nothing of the
    /// call was stored.
    #[error("erasure keys: {0}")]
    Keys(String),
    /// Erasure needs a master key (`LINKFLOW_MASTER_KEY`), and none is configured: nothing was
    /// erased.
    #[error("erasure is unavailable: no master key is configured (LINKFLOW_MASTER_KEY or LINKFLOW_MASTER_KEY_FILE); see docs/privacy.md")]
    ErasureUnavailable,
    /// The log failed (I/O, corruption, a lock held by another process).
    #[error(transparent)]
    Store(Arc<StoreError>),
    /// The store refused a commit the engine decided (a race with another process lost more
    /// often than the engine retries, or a writer's bug): nothing of it was written.
    #[error(transparent)]
    Commit(Arc<CommitError>),
    /// A stored stream no longer folds: an event the log accepted is refused on replay. The log
    /// is inconsistent with the transition table (see `verify`).
    #[error(
        "stream `{session}` does not fold from its log: version {version} is refused: {reason}"
    )]
    Replay {
        /// The stream.
        session: SessionId,
        /// The refused version.
        version: linkflow_core::Version,
        /// Why the state refuses it.
        reason: String,
    },
    /// A version past the session's last one was asked for.
    #[error("session `{session}` has {current} events; version {requested} does not exist")]
    VersionOutOfRange {
        /// The session.
        session: SessionId,
        /// The version asked for.
        requested: linkflow_core::Version,
        /// The session's last version.
        current: linkflow_core::Version,
    },
    /// A state of a session before the version it was compacted at was asked for: the events
    /// that made it are no longer stored.
    #[error("session `{session}` was compacted at version {compacted}: its states before that version are no longer stored")]
    Compacted {
        /// The session.
        session: SessionId,
        /// The version it was compacted at.
        compacted: linkflow_core::Version,
    },
    /// A redrive named a stream that is not a quarantine entry.
    #[error("`{entry}` is not a quarantine entry")]
    NotQuarantined {
        /// The stream named.
        entry: SessionId,
    },
    /// The engine was shut down (or its writer stopped) before the call completed. Whether the
    /// call's events were stored is unknown: retry them (appends are idempotent).
    #[error("the engine is shut down")]
    Closed,
    /// The configuration cannot work.
    #[error("invalid engine configuration: {0}")]
    InvalidConfig(String),
    /// A page was asked for with a cursor another listing handed out (a list in id order and
    /// one read from an index, after the filter changed).
    #[error("cursor `{cursor}` belongs to another listing: pass the next_cursor of the same listing, with the same filter")]
    WrongCursor {
        /// The cursor.
        cursor: String,
    },
}

impl EngineError {
    /// True when the error says stored data is damaged (a record, the write-ahead log), not
    /// that something else failed: what `linkflow verify` reports as an inconsistency.
    pub fn is_damage(&self) -> bool {
        match self {
            EngineError::Store(store) => matches!(
                **store,
                StoreError::Corrupt(_) | StoreError::CorruptLog { .. }
            ),
            EngineError::Replay { .. } => true,
            _ => false,
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        EngineError::Store(Arc::new(error))
    }
}

impl From<CommitError> for EngineError {
    fn from(error: CommitError) -> Self {
        match error {
            CommitError::Store(error) => EngineError::from(error),
            refused => EngineError::Commit(Arc::new(refused)),
        }
    }
}

/// Why one event of an ingest was not stored. The rest of the batch is unaffected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventError {
    /// The payload is not JSON, or breaks a size or count limit of its input.
    #[error("{detail}")]
    Invalid {
        /// What is wrong with it.
        detail: linkflow_providers::DecodeError,
    },
    /// The event encodes to a record larger than the log accepts.
    #[error("event for session `{session}` encodes to {bytes} bytes; the limit is {limit}")]
    TooLarge {
        /// The session.
        session: SessionId,
        /// Its encoded size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The stream's stored data cannot be read (a damaged record, a log that no longer folds):
    /// its events are refused until it is repaired; other streams are unaffected
    /// (`linkflow verify` names the damage).
    #[error("stream `{session}` cannot be read, so this event was not stored in it: {reason}")]
    StreamUnreadable {
        /// The stream.
        session: SessionId,
        /// What is wrong with it.
        reason: String,
    },
    /// The stream already holds the most events allowed.
    #[error("stream `{session}` already holds {limit} events, the most a stream keeps; this event was not stored in it")]
    StreamFull {
        /// The session (or account stream).
        session: SessionId,
        /// The limit ([`crate::EngineConfig::max_events_per_stream`]).
        limit: u32,
    },
    /// A quarantine entry refuses the event (quarantine streams are written by linkflow alone:
    /// a second payload for one entry, a release of what is not there or was released).
    #[error("quarantine entry `{session}` refuses this event: {reason}")]
    QuarantineRule {
        /// The entry's stream.
        session: SessionId,
        /// Why.
        reason: String,
    },
    /// The stream holds events of another kind (a session id used as an account stream id).
    #[error("stream `{session}` is a {stream} stream; a {event} event cannot go into it")]
    StreamKindMismatch {
        /// The stream.
        session: SessionId,
        /// Its kind (`session`, `account`, `merchant`).
        stream: &'static str,
        /// The refused event's name.
        event: &'static str,
    },
    /// The session belongs to another provider.
    #[error("session `{session}` belongs to provider {stored}, not {incoming}")]
    ProviderMismatch {
        /// The session.
        session: SessionId,
        /// The provider its first event came from.
        stored: Provider,
        /// The provider of this event.
        incoming: Provider,
    },
}
