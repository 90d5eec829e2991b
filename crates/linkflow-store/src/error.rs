//! The store's errors.

use linkflow_core::{SessionId, Version};

/// A record that cannot be read: its checksum, header or body is wrong. Names the record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt record {key}: {reason}")]
pub struct CorruptRecord {
    /// The record, described for a person (kind, session, version or position).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl CorruptRecord {
    pub(crate) fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        CorruptRecord {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Optimistic concurrency: the stream is not at the version the writer expected. Nothing of
    /// the commit was written.
    #[error("version conflict on session `{stream}`: expected version {expected}, the stream is at {actual}; nothing was written")]
    Conflict {
        /// The stream.
        stream: SessionId,
        /// The version the writer expected.
        expected: Version,
        /// The stream's actual version.
        actual: Version,
    },
    /// A commit appends a dedupe key its stream already holds (or appends it twice). Nothing
    /// of the commit was written: the engine decides duplicates before committing, so this is
    /// another process's write that landed in between (the engine retries) or a writer's bug.
    #[error("session `{stream}` already holds dedupe key {key}; nothing was written")]
    DuplicateKey {
        /// The stream.
        stream: SessionId,
        /// The key.
        key: linkflow_core::DedupeKey,
    },
    /// An event's encoded record is larger than the store accepts. Nothing was written.
    #[error("event for session `{stream}` encodes to {bytes} bytes; the limit is {limit}; nothing was written")]
    TooLarge {
        /// The stream.
        stream: SessionId,
        /// The encoded size.
        bytes: usize,
        /// The limit ([`crate::MAX_RECORD_BYTES`]).
        limit: usize,
    },
    /// A stored record cannot be read.
    #[error(transparent)]
    Corrupt(#[from] CorruptRecord),
    /// The store was written in a layout this linkflow does not read (an older linkflow's, or
    /// a newer one's). Nothing was read or changed; nothing has been released, so no layout is
    /// migrated.
    #[error("{store} holds the log in layout {found}; this linkflow reads layout {supported} only ({detail})")]
    UpgradeRequired {
        /// The store (its directory, or its database).
        store: String,
        /// Its layout.
        found: String,
        /// The one this build reads.
        supported: u32,
        /// What the layouts differ in.
        detail: &'static str,
    },
    /// The store's write-ahead log is damaged: a frame it needs is missing or unreadable while
    /// a later one is intact, so what follows it cannot be applied. The store is not opened and
    /// nothing is deleted; `linkflow repair` keeps a copy and says what it cannot recover.
    #[error("the write-ahead log is damaged: frame {frame} is missing or unreadable ({}) while later frames are intact; the store was not opened and nothing was deleted (`linkflow repair` keeps a copy of the log and recovers what precedes the damage)", match offset { Some(offset) => format!("bad bytes at offset {offset} of {segment}"), None => format!("in {segment}") })]
    CorruptLog {
        /// The segment file (or the log's directory, when no bad bytes were found).
        segment: String,
        /// Where the bad bytes start in it.
        offset: Option<u64>,
        /// The first frame the log does not hold whole.
        frame: u64,
    },
    /// The store stopped taking writes after its disk failed (a write or fsync of its log, a
    /// checkpoint, an apply to sled): nothing more is acknowledged, reads keep working. Reopen
    /// the store once the cause is fixed: recovery replays what reached the disk.
    #[error("the store stopped taking writes after a failure of its disk ({reason}); reads keep working; reopen it once the cause is fixed")]
    Failed {
        /// The first failure.
        reason: String,
    },
    /// The store was closed ([`crate::EventStore::close`]): it takes no more writes.
    #[error("the store was closed; it takes no more writes")]
    Closed,
    /// The data directory is in use by another process.
    #[error("the data directory {path} is locked by another linkflow process")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The storage backend failed.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// A file operation failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// For `map_err`: an I/O error on `path`.
pub(crate) fn io_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.display().to_string(),
        source,
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        match error {
            sled::Error::Corruption { at, .. } => StoreError::Corrupt(CorruptRecord::new(
                format!("sled page at {at:?}"),
                "sled reported corruption",
            )),
            other => StoreError::Backend(other.to_string()),
        }
    }
}
