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

/// Why a commit ([`crate::EventStore::commit`]) was refused or failed; nothing of it was
/// written. The first three are the commit's own constraints (see [`crate::Commit`]); the rest
/// is what any operation of the store can meet.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
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
    /// A commit's snapshot of a stream says it was compacted at another version than the
    /// store's ([`crate::EventStore::compact`]): it was decided on a state read before the
    /// compaction (another process compacted the stream meanwhile). Nothing of the commit was
    /// written; the engine reads the stream again and decides again.
    #[error("session `{stream}` was compacted at version {actual}, the commit's snapshot says {expected}; nothing was written")]
    CompactionConflict {
        /// The stream.
        stream: SessionId,
        /// The compaction version the snapshot names ([`Version::EMPTY`]: none).
        expected: Version,
        /// The store's ([`Version::EMPTY`]: never compacted).
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
    /// An index or counter key is empty or longer than [`crate::MAX_INDEX_KEY_BYTES`].
    /// Nothing was written.
    #[error("an index or counter key of {bytes} bytes (starting {start:?}); keys are 1 to {limit} bytes; nothing was written")]
    InvalidIndexKey {
        /// The key's length.
        bytes: usize,
        /// Its first bytes (at most 16).
        start: Vec<u8>,
        /// The limit.
        limit: usize,
    },
    /// The store could not take the commit (its disk failed, it was closed, a record it had
    /// to read is damaged, the database failed).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<CorruptRecord> for CommitError {
    fn from(error: CorruptRecord) -> Self {
        CommitError::Store(StoreError::Corrupt(error))
    }
}

impl From<sled::Error> for CommitError {
    fn from(error: sled::Error) -> Self {
        CommitError::Store(StoreError::from(error))
    }
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
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
    /// The database server (PostgreSQL) refused or failed an operation, or could not be
    /// reached.
    #[error(transparent)]
    Database(#[from] DatabaseError),
    /// The database holds a linkflow schema newer than this build knows: nothing was changed.
    #[error("the database's linkflow schema is at version {found}; this build knows up to {known}: upgrade linkflow before opening it")]
    SchemaTooNew {
        /// The database's schema version.
        found: i32,
        /// The newest this build knows.
        known: i32,
    },
    /// The store's configuration cannot be used (a PostgreSQL URL that does not parse).
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    /// A number does not fit where the store keeps it (a position past PostgreSQL's bigint).
    #[error("{what} {value} does not fit the store")]
    OutOfRange {
        /// What the number is.
        what: &'static str,
        /// The number.
        value: u64,
    },
    /// sled failed without naming damage (an unsupported operation, a bug it reports).
    #[error("sled failed: {0}")]
    Sled(String),
    /// A thread or runtime the store or the engine needs has stopped, or broke a rule it
    /// keeps (answered the wrong number of results, a second commit watcher).
    #[error("internal failure: {0}")]
    Internal(String),
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
            other => StoreError::Sled(other.to_string()),
        }
    }
}

/// What kind of database failure a [`DatabaseError`] is: PostgreSQL's SQLSTATE codes that
/// call for different handling, as variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DatabaseFailure {
    /// The server could not be reached or the connection broke (no SQLSTATE, or class 08).
    Unreachable,
    /// 40001: the transaction could not be serialized; retrying it may succeed.
    SerializationFailure,
    /// 40P01: a deadlock was detected; retrying may succeed.
    DeadlockDetected,
    /// 23505: a unique constraint was violated.
    UniqueViolation,
    /// 53100: the server's disk is full.
    DiskFull,
    /// 53200: the server is out of memory.
    OutOfMemory,
    /// 53300: the server takes no more connections.
    TooManyConnections,
    /// 57014: the statement was canceled (a timeout).
    QueryCanceled,
    /// 57P01, 57P02, 57P03: the server is shutting down or not accepting connections yet.
    ShuttingDown,
    /// 25006: the server is read-only (a standby).
    ReadOnly,
    /// Any other SQLSTATE.
    Other,
}

impl DatabaseFailure {
    /// The kind of failure a SQLSTATE code names (`None`: no code, a connection failure).
    pub fn of_sqlstate(code: Option<&str>) -> DatabaseFailure {
        match code {
            None => DatabaseFailure::Unreachable,
            Some(code) if code.starts_with("08") => DatabaseFailure::Unreachable,
            Some("40001") => DatabaseFailure::SerializationFailure,
            Some("40P01") => DatabaseFailure::DeadlockDetected,
            Some("23505") => DatabaseFailure::UniqueViolation,
            Some("53100") => DatabaseFailure::DiskFull,
            Some("53200") => DatabaseFailure::OutOfMemory,
            Some("53300") => DatabaseFailure::TooManyConnections,
            Some("57014") => DatabaseFailure::QueryCanceled,
            Some("57P01" | "57P02" | "57P03") => DatabaseFailure::ShuttingDown,
            Some("25006") => DatabaseFailure::ReadOnly,
            Some(_) => DatabaseFailure::Other,
        }
    }
}

/// A failure of the database server, typed by its SQLSTATE, with the server's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PostgreSQL{}: {message}", match sqlstate { Some(code) => format!(" {code}"), None => String::new() })]
pub struct DatabaseError {
    /// What kind of failure it is.
    pub failure: DatabaseFailure,
    /// The SQLSTATE code, when the server answered one.
    pub sqlstate: Option<String>,
    /// The server's message (with its detail and constraint), or the driver's.
    pub message: String,
}
