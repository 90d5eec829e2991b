//! How an [`crate::Engine`] is opened.

use std::path::PathBuf;
use std::sync::Arc;

use linkflow_store::EventStore;

/// When an ingest call returns relative to the disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Durability {
    /// The call returns after its events are on stable storage (on sled: written to the
    /// store's write-ahead log and `fdatasync`ed). Concurrent calls share one sync (group
    /// commit). The default.
    #[default]
    Fsync,
    /// The call returns once its events are committed in memory; the store writes and syncs
    /// them within its background interval (500 ms on sled). A crash can lose the last
    /// acknowledged events.
    Buffered,
}

/// Where the engine keeps its log.
#[derive(Clone)]
pub enum StoreChoice {
    /// The embedded default: sled in this directory.
    Sled {
        /// The data directory.
        path: PathBuf,
        /// sled's page cache, in bytes: bounds the store's memory.
        cache_capacity_bytes: u64,
        /// Zero-fill the store's first write-ahead log segment at open (32 MiB, a fraction of
        /// a second), so that every durable sync is the short kind from the start (a sync of
        /// frames written over allocated blocks needs no metadata update; ~0.1 against ~0.2 ms
        /// on the reference disk). Otherwise the log's first 32 MiB go to growing files (the
        /// slower syncs) until a checkpoint gives back a segment to write over. `linkflow
        /// serve` turns it on; see `docs/storage.md`.
        preallocate_log: bool,
    },
    /// PostgreSQL, shared by every node that opens the same database (schema created or
    /// migrated on open). See `docs/deploy.md`. Needs the crate's `postgres` feature.
    #[cfg(feature = "postgres")]
    Postgres {
        /// A libpq-style URL: `postgres://user:pass@host:5432/db`.
        url: String,
        /// The most connections this node's calls use at once (the pool's size; the sequencer
        /// and the commit watcher hold one each besides).
        pool_size: usize,
    },
    /// A store the caller opened (another backend, or a store shared with other code).
    Custom(Arc<dyn EventStore>),
}

impl std::fmt::Debug for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Sled { path, .. } => write!(f, "Sled({})", path.display()),
            #[cfg(feature = "postgres")]
            StoreChoice::Postgres { url, pool_size } => {
                write!(f, "Postgres({}, pool of {pool_size})", redact(url))
            }
            StoreChoice::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// Everything [`crate::Engine::open_with`] needs. Start from [`EngineConfig::new`].
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The log.
    pub store: StoreChoice,
    /// When ingest calls return.
    pub durability: Durability,
    /// Session states kept in memory. A miss costs one snapshot read plus the events after it.
    pub cache_sessions: usize,
    /// The most events one group commit takes; callers beyond it wait for the next one.
    pub max_batch_events: usize,
    /// Threads making committed groups durable under [`Durability::Fsync`] (at least 1). A
    /// free one takes every group waiting and covers them with one sync. With one, a group
    /// committed while a sync runs waits for it to end; with two (the default), it starts its
    /// own sync on the other thread (the benchmark's 64 writers: the wait for a sync halves,
    /// ~5% more events/s). More than two mostly adds concurrent syncs of the same files; at
    /// most 16.
    pub sync_threads: usize,
    /// Writer threads: each takes a group of waiting requests, decides it and commits it, so
    /// that several groups commit at once. Used on a store whose commits run concurrently
    /// (PostgreSQL: [`linkflow_store::EventStore::numbers_at_commit`] is false); the embedded
    /// store serializes its commits, and gets one. Requests are routed by their first event's
    /// stream, so one session's requests keep their order; two writers that touch one stream
    /// anyway (a batch of many sessions, a linked account) find out by the store's version
    /// check, and the later decides again. At most 16.
    pub writers: usize,
    /// Events kept per session or linked-account stream, accepted and rejected alike. Past it,
    /// a further event for that stream is not stored in it: its ingest reports
    /// [`crate::EventError::StreamFull`] (the intake then quarantines the payload), so one
    /// broken sender cannot grow a stream without bound, and a late event's re-fold reads at
    /// most this many events.
    pub max_events_per_stream: u32,
    /// A session silent this long without reaching a terminal phase is abandoned (judged at
    /// read time; a late event makes it live again).
    pub inactivity_timeout: chrono::Duration,
    /// The operator's master key (`LINKFLOW_MASTER_KEY`): with one, personal fields and raw
    /// payloads are sealed before they are stored and users can be erased (`docs/privacy.md`);
    /// the data keys live in the key file `keys` in the sled store's directory. Without one,
    /// everything is stored as delivered and nothing can be erased.
    pub master_key: Option<Arc<crate::privacy::MasterKey>>,
    /// With a master key, how long raw payloads stay readable: each day's payloads are sealed
    /// under that day's key, which [`crate::Engine::expire_raw_payloads`] destroys once the
    /// whole day is older than this (`linkflow serve` runs it every hour). The canonical events
    /// stay. `None` (the default): raw payloads are kept for as long as the store.
    pub raw_retention: Option<chrono::Duration>,
    /// How old a session's last event must be, once it succeeded or exited, for
    /// [`crate::Engine::compact_old_sessions`] to compact it to its final state
    /// (`linkflow serve` runs it at start-up and once a day): its events' contents are deleted, its state, its
    /// funnel counts and its dedupe keys stay (`docs/privacy.md`). `None` (the default):
    /// sessions keep their whole history.
    pub compact_after: Option<chrono::Duration>,
}

/// Default for [`EngineConfig::cache_sessions`]: at ~300 bytes a state, about 30 MB.
pub const DEFAULT_CACHE_SESSIONS: usize = 100_000;

/// Default for [`EngineConfig::max_batch_events`]: large enough to amortize an fsync (~0.2 ms
/// on the reference disk) over thousands of events, small enough that one commit stays a few
/// milliseconds.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 4_096;

/// Default for [`EngineConfig::max_events_per_stream`]. A real session has a few dozen events
/// (Plaid's richest flows about a hundred); a thousand means a broken sender.
pub const DEFAULT_MAX_EVENTS_PER_STREAM: u32 = 1_024;

/// Default for [`EngineConfig::writers`] on PostgreSQL (on sled it is 1).
pub const DEFAULT_PG_WRITERS: usize = 2;

/// Default for [`EngineConfig::sync_threads`].
pub const DEFAULT_SYNC_THREADS: usize = 2;

/// [`EngineConfig::sized_for_ingest`]'s session cache: four of the intake's batches
/// ([`crate::INTAKE_BATCH`]).
pub const INGEST_CACHE_SESSIONS: usize = 4 * crate::intake::INTAKE_BATCH;

/// [`EngineConfig::sized_for_ingest`]'s sled page cache. Measured (`linkflow ingest` of a 10 MB
/// and a 1 GB MoneyKit file, peak RSS): 64 MiB of page cache and 100,000 cached states take
/// the 1 GB file to ~3.3x the 10 MB one (242-265 against 68-82 MB); 16 MiB and 4,000 states to
/// ~1.3-1.9x (103-105 against 53-79 MB), with the same ingest rate.
pub const INGEST_SLED_CACHE_BYTES: u64 = 16 * 1024 * 1024;

impl EngineConfig {
    /// Defaults on sled in `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        EngineConfig {
            store: StoreChoice::Sled {
                path: path.into(),
                cache_capacity_bytes: 64 * 1024 * 1024,
                preallocate_log: false,
            },
            durability: Durability::Fsync,
            cache_sessions: DEFAULT_CACHE_SESSIONS,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            sync_threads: DEFAULT_SYNC_THREADS,
            writers: 1,
            max_events_per_stream: DEFAULT_MAX_EVENTS_PER_STREAM,
            inactivity_timeout: chrono::Duration::minutes(
                linkflow_core::funnel::DEFAULT_INACTIVITY_TIMEOUT_MINUTES,
            ),
            master_key: None,
            raw_retention: None,
            compact_after: None,
        }
    }

    /// The same configuration with the sled store's first log segment zero-filled at open
    /// (see [`StoreChoice::Sled`]'s `preallocate_log`); other stores are unchanged.
    pub fn preallocating_log(mut self) -> Self {
        if let StoreChoice::Sled {
            preallocate_log, ..
        } = &mut self.store
        {
            *preallocate_log = true;
        }
        self
    }

    /// The same configuration sized for one pass over a stream of payloads (`linkflow
    /// ingest` of a file): [`INGEST_CACHE_SESSIONS`] cached states and a sled page cache of
    /// [`INGEST_SLED_CACHE_BYTES`], so that memory stays flat however large the input. A
    /// session's events sit close together in such a stream, and a group's sessions are held
    /// by the writer while it decides them, so a larger cache buys little there.
    pub fn sized_for_ingest(mut self) -> Self {
        self.cache_sessions = self.cache_sessions.min(INGEST_CACHE_SESSIONS);
        if let StoreChoice::Sled {
            cache_capacity_bytes,
            ..
        } = &mut self.store
        {
            *cache_capacity_bytes = (*cache_capacity_bytes).min(INGEST_SLED_CACHE_BYTES);
        }
        self
    }

    /// Defaults on PostgreSQL at `url` (the crate's `postgres` feature).
    #[cfg(feature = "postgres")]
    pub fn postgres(url: impl Into<String>) -> Self {
        EngineConfig {
            store: StoreChoice::Postgres {
                url: url.into(),
                pool_size: linkflow_postgres::PgOptions::DEFAULT_POOL_SIZE,
            },
            writers: DEFAULT_PG_WRITERS,
            ..EngineConfig::new(PathBuf::new())
        }
    }

    /// Defaults on a store the caller opened.
    pub fn with_store(store: Arc<dyn EventStore>) -> Self {
        EngineConfig {
            store: StoreChoice::Custom(store),
            ..EngineConfig::new(PathBuf::new())
        }
    }
}

/// `url` without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/linkflow"),
            "postgres://app:***@db:5432/linkflow"
        );
        assert_eq!(
            redact("postgres://app@db/linkflow"),
            "postgres://app@db/linkflow"
        );
        assert_eq!(redact("host=db user=app"), "host=db user=app");
    }
}
