//! [`PgStore`]: the [`EventStore`] on PostgreSQL.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkflow_core::{DedupeKey, Position, SessionId, Version};
use linkflow_store::check::{check_commit_unnumbered, Checked, StoredLog};
use linkflow_store::record::{
    decode_log_record, decode_snapshot_record, encode_compacted, encode_snapshot, CompactedEvent,
    LogRecord, COMPACTED,
};
use linkflow_store::{
    Commit, CommitError, DedupeHit, EventStore, Receipt, Snapshot, StoreError, StoredEvent,
    StreamRead, StreamStart, StreamsRead, VerifyReport,
};
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Config, GenericClient, NoTls, Row};

use crate::sequencer::{Numbering, Sequencer};

use crate::error::{backend, bad_column, col};
use crate::pool::{Bridge, Conn, Pool, Work};
use crate::{schema, NOTIFY_CHANNEL};

/// Rows fetched per round trip by the full walks.
pub(crate) const PAGE: i64 = 1_000;

// The reads' SQL skips compacted records by their first byte, written there as `64`.
const _: () = assert!(COMPACTED == 64);

/// How often a watcher polls the head when no notification came.
const WATCH_POLL: Duration = Duration::from_secs(1);

/// How [`PgStore`] connects.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key/value string: `postgres://user:pass@host:5432/db`.
    pub url: String,
    /// Give up connecting after this long.
    pub connect_timeout: Duration,
    /// The most connections this node opens for its calls (commits, reads, keys, delivery);
    /// a call waits for a free one. The `LISTEN`er and the sequencer have one each besides.
    pub pool_size: usize,
    /// How long a call waits for a free connection before it fails.
    pub pool_wait: Duration,
    /// How long [`EventStore::settle`] waits for the numbering to reach the events committed
    /// before it (a long transaction elsewhere on the server holds it back).
    pub settle_timeout: Duration,
}

impl PgOptions {
    /// Defaults for `url`: a 10 s connect timeout, [`PgOptions::DEFAULT_POOL_SIZE`]
    /// connections, waited for up to 30 s, and a 30 s settle timeout.
    pub fn new(url: impl Into<String>) -> Self {
        PgOptions {
            url: url.into(),
            connect_timeout: Duration::from_secs(10),
            pool_size: Self::DEFAULT_POOL_SIZE,
            pool_wait: Duration::from_secs(30),
            settle_timeout: Duration::from_secs(30),
        }
    }

    /// The pool size unless configured: enough for the engine's writer, its readers and the
    /// delivery workers at once.
    pub const DEFAULT_POOL_SIZE: usize = 16;
}

/// The PostgreSQL backend of [`EventStore`]; several processes may open the same database.
pub struct PgStore {
    pub(crate) pool: Arc<Pool>,
    /// Declared after `pool`'s users: dropping it stops the watcher and the connections.
    pub(crate) bridge: Bridge,
    watching: Mutex<bool>,
    /// Set by `close`: this handle takes no more writes (other nodes go on).
    closed: std::sync::atomic::AtomicBool,
    /// This node's part in numbering the log.
    sequencer: Arc<Sequencer>,
    settle_timeout: Duration,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("hosts", &self.pool.config().get_hosts())
            .field("dbname", &self.pool.config().get_dbname())
            .finish()
    }
}

fn to_i64(value: u64, what: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::OutOfRange { what, value })
}

fn to_u64(value: i64, record: impl FnOnce() -> String) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| bad_column(record(), format!("negative number {value}")))
}

fn session(text: String, record: impl FnOnce() -> String) -> Result<SessionId, StoreError> {
    SessionId::new(text)
        .map_err(|error| bad_column(record(), format!("invalid session id: {error}")))
}

fn dedupe_key(bytes: &[u8], record: impl FnOnce() -> String) -> Result<DedupeKey, StoreError> {
    let array: [u8; DedupeKey::LEN] = bytes
        .try_into()
        .map_err(|_| bad_column(record(), format!("dedupe key of {} bytes", bytes.len())))?;
    Ok(DedupeKey::from_bytes(array))
}

fn describe_event(stream: &str, version: i64) -> String {
    format!("event `{stream}`@{version}")
}

/// An event row (selecting stream, version, position, record), decoded and checked against
/// its row. The reads that call it leave compacted records out in their SQL, so one here is an
/// error.
pub(crate) fn decode_event_row(row: &Row) -> Result<StoredEvent, StoreError> {
    match decode_log_row(row)? {
        LogRecord::Event(event) => Ok(event),
        LogRecord::Compacted(stub) => Err(bad_column(
            describe_event(stub.stream.as_str(), stub.version.0 as i64),
            "a compacted record where a read expected an event",
        )),
    }
}

/// An event row, whole or compacted, decoded and checked against its row; its position is the
/// row's (`position`: from `linkflow_positions`, 0 while the event is not numbered), its record
/// holding none.
pub(crate) fn decode_log_row(row: &Row) -> Result<LogRecord, StoreError> {
    let stream: &str = col(row, "stream")?;
    let version: i64 = col(row, "version")?;
    let position: i64 = col(row, "position")?;
    let what = describe_event(stream, version);
    let mut record = decode_log_record(&what, col(row, "record")?)?;
    if record.stream().as_str() != stream
        || i64::try_from(record.version().0) != Ok(version)
        || !record.position().is_pending()
    {
        return Err(bad_column(
            what,
            format!(
                "the record says `{}`@{} at position {}, its row `{stream}`@{version} (a record on PostgreSQL holds no position)",
                record.stream(),
                record.version(),
                record.position()
            ),
        ));
    }
    let position = Position(to_u64(position, || describe_event(stream, version))?);
    match &mut record {
        LogRecord::Event(event) => event.position = position,
        LogRecord::Compacted(stub) => stub.position = position,
    }
    Ok(record)
}

impl PgStore {
    /// Connects to `url`, creating or migrating the schema.
    pub fn open(url: &str) -> Result<PgStore, StoreError> {
        PgStore::open_with(PgOptions::new(url))
    }

    /// Connects with `options`, creating or migrating the schema.
    pub fn open_with(options: PgOptions) -> Result<PgStore, StoreError> {
        let mut config: Config = options.url.parse().map_err(|error| {
            StoreError::InvalidConfig(format!("invalid PostgreSQL URL: {error}"))
        })?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.connect_timeout);
        }
        if config.get_application_name().is_none() {
            config.application_name("linkflow");
        }
        let store = PgStore {
            pool: Pool::new(config, options.pool_size, options.pool_wait)?,
            bridge: Bridge::new()?,
            watching: Mutex::new(false),
            closed: std::sync::atomic::AtomicBool::new(false),
            sequencer: Arc::new(Sequencer::default()),
            settle_timeout: options.settle_timeout,
        };
        store.run(Box::new(|client| Box::pin(schema::migrate(client))))?;
        store.bridge.handle().spawn(crate::sequencer::run(
            Arc::clone(&store.pool),
            Arc::clone(&store.sequencer),
        ));
        Ok(store)
    }

    /// This node's part in numbering the log: whether it holds the sequencer's lease, and for
    /// how long committed events have been held back by an older transaction (the lag a
    /// subscriber sees on top of the numbering's own few milliseconds).
    pub fn numbering(&self) -> Numbering {
        self.sequencer.numbering()
    }

    /// Runs `work` on a pooled connection and waits for it.
    pub(crate) fn run<T: Send + 'static>(&self, work: Work<T>) -> Result<T, StoreError> {
        let pool = Arc::clone(&self.pool);
        self.bridge.block_on(async move { pool.with(work).await })
    }

    /// Bytes the database uses for linkflow's tables and their indexes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.run(Box::new(|client| {
            Box::pin(async move {
                let row = client
                    .query_one(
                        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                           FROM pg_class c
                          WHERE c.relkind = 'r' AND c.relname LIKE 'linkflow\\_%'",
                        &[],
                    )
                    .await
                    .map_err(backend)?;
                to_u64(col(&row, 0)?, || "table sizes".into())
            })
        }))
    }

    /// Deletes every linkflow table (for tests and benchmarks that reuse a database).
    pub fn drop_schema(url: &str) -> Result<(), StoreError> {
        let store = PgStore::open(url)?;
        store.run(Box::new(|client| {
            Box::pin(async move {
                client
                    .batch_execute(
                        "DROP TABLE IF EXISTS linkflow_events, linkflow_positions, linkflow_parked, linkflow_snapshots, linkflow_meta,
                                              linkflow_index, linkflow_counters, linkflow_keys,
                                              linkflow_key_secret, linkflow_endpoints,
                                              linkflow_delivery_cursors, linkflow_delivery_attempts,
                                              linkflow_redeliveries, linkflow_head, linkflow_schema;
                         DROP FUNCTION IF EXISTS linkflow_refuse(text)",
                    )
                    .await
                    .map_err(backend)
            })
        }))
    }
}

/// Streams' versions, compaction marks and stored dedupe keys: what a commit relied on
/// ([`relied_on`]), or what the log holds now ([`read_logged`], after a lost race).
#[derive(Default)]
struct Prefetched {
    versions: HashMap<SessionId, Version>,
    compacted: HashMap<SessionId, Version>,
    dedupe: HashMap<(SessionId, DedupeKey), DedupeHit>,
}

impl StoredLog for Prefetched {
    fn stream_version(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        Ok(self.versions.get(stream).copied().unwrap_or(Version::EMPTY))
    }

    fn holds_key(&mut self, stream: &SessionId, key: &DedupeKey) -> Result<bool, StoreError> {
        Ok(self.dedupe.contains_key(&(stream.clone(), *key)))
    }

    fn stream_compacted(&mut self, stream: &SessionId) -> Result<Version, StoreError> {
        Ok(self
            .compacted
            .get(stream)
            .copied()
            .unwrap_or(Version::EMPTY))
    }
}

/// Each stream's version (its highest) and compaction mark.
const READ_VERSIONS: &str = "SELECT s.stream,
        (SELECT max(e.version) FROM linkflow_events e WHERE e.stream = s.stream),
        (SELECT n.compacted FROM linkflow_snapshots n WHERE n.stream = s.stream)
   FROM unnest($1::text[]) AS s(stream)";

/// Which of the (stream, dedupe key) pairs are stored, where (position 0: not numbered yet).
const READ_KEYS: &str = "SELECT e.stream, e.dedupe, e.version, e.position
   FROM unnest($1::text[], $2::bytea[]) AS k(stream, dedupe)
   CROSS JOIN LATERAL (
       SELECT e.stream, e.dedupe, e.version,
              coalesce((SELECT p.position FROM linkflow_positions p
                         WHERE p.txid = e.txid AND p.id = e.id), 0) AS position
         FROM linkflow_events e WHERE e.stream = k.stream AND e.dedupe = k.dedupe
       OFFSET 0) e";

// The reads of many streams at once look each stream up by its index, whatever the planner
// thinks of the tables' sizes: `LATERAL (... OFFSET 0)` keeps the lookup a subquery run per
// stream (a hash join over a table the statistics still call empty is a scan of the whole
// table per call, and a fresh database's statistics lag for its first minutes).

/// The versions, compaction marks and stored dedupe keys of `streams` and `keys`, with the
/// two statements that read them.
async fn read_logged(
    client: &impl GenericClient,
    (versions, accepted): (&tokio_postgres::Statement, &tokio_postgres::Statement),
    streams: &[&str],
    keys: &[(&str, &[u8])],
) -> Result<Prefetched, StoreError> {
    let key_streams: Vec<&str> = keys.iter().map(|(stream, _)| *stream).collect();
    let key_bytes: Vec<&[u8]> = keys.iter().map(|(_, key)| *key).collect();
    let version_params: [&(dyn ToSql + Sync); 1] = [&streams];
    let key_params: [&(dyn ToSql + Sync); 2] = [&key_streams, &key_bytes];
    let versions = client.query(versions, &version_params);
    let accepted = client.query(accepted, &key_params);
    let (versions, accepted) = futures_util::future::try_join(versions, accepted)
        .await
        .map_err(backend)?;

    let mut out = Prefetched::default();
    for row in versions {
        let stream: String = col(&row, 0)?;
        let what = || format!("version of `{stream}`");
        let version = Version(to_u64(col::<Option<i64>, _>(&row, 1)?.unwrap_or(0), what)?);
        let compacted: Option<i64> = col(&row, 2)?;
        let compacted = Version(to_u64(compacted.unwrap_or(0), || {
            format!("compaction of `{stream}`")
        })?);
        let id = session(stream.clone(), || stream.clone())?;
        out.compacted.insert(id.clone(), compacted);
        out.versions.insert(id, version);
    }
    for row in accepted {
        let stream: String = col(&row, 0)?;
        let what = || format!("dedupe entry of `{stream}`");
        let key = dedupe_key(col(&row, 1)?, what)?;
        let hit = DedupeHit {
            stream: session(stream.clone(), what)?,
            version: Version(to_u64(col(&row, 2)?, what)?),
            position: Position(to_u64(col(&row, 3)?, what)?),
        };
        out.dedupe
            .insert((session(stream.clone(), what)?, key), hit);
    }
    Ok(out)
}

/// A whole commit in one statement, run on its own (its own transaction, committed before it
/// answers): one round trip. Each part is one data-modifying `WITH` from arrays:
/// - the events, their ids drawn in the plan's order (so the sequencer numbers them in it:
///   stream by stream), each row's transaction id its default;
/// - the snapshots, a row replaced only if no compaction and no newer snapshot got there
///   since the engine read it (what its decision relied on); if one was not, the statement
///   fails (`linkflow_refuse`) and nothing of it is written;
/// - the index entries put and deleted;
/// - the counters: each added to this connection's shard (`pg_backend_pid()`; no other
///   transaction writes it, so no commit waits on another's counters) by an upsert, which
///   checks each row by its key: no join to plan. A shard may reach zero; reads sum the shards
///   and leave zero sums out, and the sequencer's fold deletes the zero shards of ended
///   connections.
///
/// The database checks what the commit relies on, in the statement's one snapshot of the log:
/// a version another commit took, or a dedupe key it stored, is a unique violation; the event
/// before each stream's first append missing (`$14`, `$15`: the commit expects a stream further
/// on than it is), a snapshot of a stream the commit does not append to at another version
/// than the stream's (`$16`, `$17`), or a snapshot moved, the refusal above: so a stream's
/// versions stay 1..=n without a gap, and nothing of a refused commit is written.
const COMMIT: &str = "WITH events AS (
         INSERT INTO linkflow_events (stream, version, dedupe, record)
         SELECT s, v, d, r
           FROM unnest($1::text[], $2::int8[], $3::bytea[], $4::bytea[])
                WITH ORDINALITY AS u(s, v, d, r, n)
          ORDER BY n),
     snapshots AS (
         INSERT INTO linkflow_snapshots (stream, version, record, compacted)
         SELECT * FROM unnest($5::text[], $6::int8[], $7::bytea[], $8::int8[])
         ON CONFLICT (stream) DO UPDATE SET version = excluded.version, record = excluded.record
          WHERE linkflow_snapshots.compacted = excluded.compacted
            AND linkflow_snapshots.version <= excluded.version
         RETURNING 1),
     puts AS (
         INSERT INTO linkflow_index (key) SELECT unnest($9::bytea[]) ON CONFLICT DO NOTHING),
     deletes AS (
         DELETE FROM linkflow_index WHERE key = ANY($10::bytea[])),
     counters AS (
         INSERT INTO linkflow_counters (cell, name, shard, value)
         SELECT k.cell, k.name, pg_backend_pid(), k.delta
           FROM unnest($11::bytea[], $12::bytea[], $13::int8[]) AS k(cell, name, delta)
         ON CONFLICT (cell, name, shard) DO UPDATE SET value = linkflow_counters.value + excluded.value)
SELECT linkflow_refuse('a stream or snapshot of this commit is not where the commit expects it')
 WHERE (SELECT count(*) FROM snapshots) <> cardinality($5::text[])
    OR EXISTS (SELECT 1 FROM unnest($14::text[], $15::int8[]) AS f(stream, previous)
                WHERE NOT EXISTS (SELECT 1 FROM linkflow_events e
                                   WHERE e.stream = f.stream AND e.version = f.previous))
    OR EXISTS (SELECT 1 FROM unnest($16::text[], $17::int8[]) AS o(stream, version)
                WHERE coalesce((SELECT max(e.version) FROM linkflow_events e
                                 WHERE e.stream = o.stream), 0) <> o.version)";

/// The SQLSTATE `linkflow_refuse` raises.
const REFUSED: &str = "LF001";

/// Writes a checked plan with [`COMMIT`]: durable when it returns.
async fn write_plan(client: &Conn, plan: &Checked, reads: &Prefetched) -> Result<(), StoreError> {
    let mut streams = Vec::with_capacity(plan.events.len());
    let mut versions = Vec::with_capacity(plan.events.len());
    let mut dedupes = Vec::with_capacity(plan.events.len());
    let mut records = Vec::with_capacity(plan.events.len());
    for event in &plan.events {
        streams.push(event.stream.as_str());
        versions.push(to_i64(event.version.0, "version")?);
        dedupes.push(&event.dedupe_key.as_bytes()[..]);
        records.push(&event.record[..]);
    }
    // The check keeps the last snapshot of each stream only.
    let snap_streams: Vec<&str> = plan.snapshots.iter().map(|s| s.stream.as_str()).collect();
    let snap_versions: Vec<i64> = plan
        .snapshots
        .iter()
        .map(|snapshot| to_i64(snapshot.version.0, "snapshot version"))
        .collect::<Result<_, _>>()?;
    let snap_records: Vec<&[u8]> = plan.snapshots.iter().map(|s| &s.record[..]).collect();
    let snap_compacted: Vec<i64> = plan
        .snapshots
        .iter()
        .map(|snapshot| {
            let compacted = reads
                .compacted
                .get(&snapshot.stream)
                .copied()
                .unwrap_or_default();
            to_i64(compacted.0, "compaction version")
        })
        .collect::<Result<_, _>>()?;
    let mut index_puts: Vec<&[u8]> = Vec::new();
    let mut index_deletes: Vec<&[u8]> = Vec::new();
    for (key, present) in &plan.index.entries {
        if *present {
            index_puts.push(key);
        } else {
            index_deletes.push(key);
        }
    }
    let mut counter_cells: Vec<&[u8]> = Vec::new();
    let mut counter_names: Vec<&[u8]> = Vec::new();
    let mut counter_deltas: Vec<i64> = Vec::new();
    for (cell, counters) in &plan.index.cells {
        for (name, delta) in counters {
            counter_cells.push(cell);
            counter_names.push(name);
            counter_deltas.push(*delta);
        }
    }
    // The event before each stream's first append, which must be stored already (the plan's
    // events come stream by stream, each stream's in one run).
    let mut first_streams: Vec<&str> = Vec::new();
    let mut previous: Vec<i64> = Vec::new();
    let mut appended: HashSet<&str> = HashSet::new();
    for event in &plan.events {
        if appended.insert(event.stream.as_str()) && event.version.0 > 1 {
            first_streams.push(event.stream.as_str());
            previous.push(to_i64(event.version.0 - 1, "version")?);
        }
    }
    // Snapshots of streams the commit does not append to: at the stream's version.
    let mut only_streams: Vec<&str> = Vec::new();
    let mut only_versions: Vec<i64> = Vec::new();
    for snapshot in &plan.snapshots {
        if !appended.contains(snapshot.stream.as_str()) {
            only_streams.push(snapshot.stream.as_str());
            only_versions.push(to_i64(snapshot.version.0, "snapshot version")?);
        }
    }
    let statement = client.prepare_cached(COMMIT).await.map_err(backend)?;
    client
        .execute(
            &statement,
            &[
                &streams,
                &versions,
                &dedupes,
                &records,
                &snap_streams,
                &snap_versions,
                &snap_records,
                &snap_compacted,
                &index_puts,
                &index_deletes,
                &counter_cells,
                &counter_names,
                &counter_deltas,
                &first_streams,
                &previous,
                &only_streams,
                &only_versions,
            ],
        )
        .await
        .map_err(backend)?;
    Ok(())
}

/// True for the failures a concurrent commit causes: a unique constraint another node's commit
/// got to first, a snapshot it moved (`linkflow_refuse`), a deadlock between two commits, a
/// serialization failure.
fn is_race(error: &StoreError) -> bool {
    match error {
        StoreError::Database(database) => {
            matches!(
                database.failure,
                linkflow_store::DatabaseFailure::UniqueViolation
                    | linkflow_store::DatabaseFailure::DeadlockDetected
                    | linkflow_store::DatabaseFailure::SerializationFailure
            ) || database.sqlstate.as_deref() == Some(REFUSED)
        }
        _ => false,
    }
}

/// What the engine's decision relied on, as the commit says it: each stream's version before
/// its first append (or its snapshot's version), each snapshot's compaction mark, no dedupe
/// key stored. Checking the commit against it checks the commit's own coherence; the database
/// checks it against the log ([`COMMIT`]).
fn relied_on(commit: &Commit) -> Prefetched {
    let mut reads = Prefetched::default();
    for append in &commit.appends {
        reads
            .versions
            .entry(append.stream.clone())
            .or_insert(append.expected);
    }
    for (stream, snapshot) in &commit.snapshots {
        reads
            .versions
            .entry(stream.clone())
            .or_insert(snapshot.version);
        reads
            .compacted
            .entry(stream.clone())
            .or_insert(snapshot.compacted);
    }
    reads
}

/// A commit in one statement (one round trip, no lock but the rows it writes): `Err` when the
/// database failed, `Ok(Err)` when the commit broke one of its constraints (nothing written).
/// A constraint another node's concurrent commit broke first (a version, a dedupe key, a
/// snapshot) is found by the database and answered as the same typed refusal a check before
/// writing gives, read again after the failure.
async fn write_commit(
    client: &mut Conn,
    commit: Commit,
) -> Result<Result<Receipt, CommitError>, StoreError> {
    let mut log = relied_on(&commit);
    let checked = match check_commit_unnumbered(commit, &mut log) {
        Ok(checked) => checked,
        Err(CommitError::Store(error)) => return Err(error),
        Err(refused) => return Ok(Err(refused)),
    };
    let mut attempt = 0;
    loop {
        match write_plan(client, &checked, &log).await {
            Ok(()) => return Ok(Ok(checked.receipt)),
            // Two commits waiting on each other's rows (an index key one inserted, a version
            // the other did): the server aborted this one, which writes it again.
            Err(error) if is_deadlock(&error) && attempt < DEADLOCK_RETRIES => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(2 * attempt)).await;
            }
            Err(error) if is_race(&error) => {
                return Ok(Err(explain_race(client, &checked, &log, error).await?));
            }
            Err(error) => return Err(error),
        }
    }
}

/// How often [`write_commit`] writes a commit again that the server aborted as a deadlock.
const DEADLOCK_RETRIES: u64 = 5;

fn is_deadlock(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Database(linkflow_store::DatabaseError {
            failure: linkflow_store::DatabaseFailure::DeadlockDetected
                | linkflow_store::DatabaseFailure::SerializationFailure,
            ..
        })
    )
}

/// After a commit lost a race (and was rolled back): what another commit changed, read again
/// as the typed refusal the engine retries ([`CommitError::DuplicateKey`],
/// [`CommitError::Conflict`], [`CommitError::CompactionConflict`]); a race whose winner the
/// reads do not show yet is a `Conflict` at the version the commit relied on (the engine
/// decides again either way); an error that is no race is returned as it is.
async fn explain_race(
    client: &Conn,
    checked: &Checked,
    before: &Prefetched,
    error: StoreError,
) -> Result<CommitError, StoreError> {
    let mut streams: BTreeSet<&SessionId> = BTreeSet::new();
    let mut keys: Vec<(&str, &[u8])> = Vec::with_capacity(checked.events.len());
    for event in &checked.events {
        streams.insert(&event.stream);
        keys.push((event.stream.as_str(), event.dedupe_key.as_bytes()));
    }
    for snapshot in &checked.snapshots {
        streams.insert(&snapshot.stream);
    }
    let names: Vec<&str> = streams.iter().map(|stream| stream.as_str()).collect();
    let versions = client
        .prepare_cached(READ_VERSIONS)
        .await
        .map_err(backend)?;
    let accepted = client.prepare_cached(READ_KEYS).await.map_err(backend)?;
    let now = read_logged(&***client, (&versions, &accepted), &names, &keys).await?;
    for event in &checked.events {
        if now
            .dedupe
            .contains_key(&(event.stream.clone(), event.dedupe_key))
        {
            return Ok(CommitError::DuplicateKey {
                stream: event.stream.clone(),
                key: event.dedupe_key,
            });
        }
    }
    for &stream in &streams {
        let (was, is) = (
            before.versions.get(stream).copied().unwrap_or_default(),
            now.versions.get(stream).copied().unwrap_or_default(),
        );
        if was != is {
            return Ok(CommitError::Conflict {
                stream: stream.clone(),
                expected: was,
                actual: is,
            });
        }
        let (was, is) = (
            before.compacted.get(stream).copied().unwrap_or_default(),
            now.compacted.get(stream).copied().unwrap_or_default(),
        );
        if was != is {
            return Ok(CommitError::CompactionConflict {
                stream: stream.clone(),
                expected: was,
                actual: is,
            });
        }
    }
    // A race the reads cannot see yet (the other commit not visible at this instant): the
    // engine reads again and decides again, as for any conflict.
    match (is_race(&error), streams.first()) {
        (true, Some(stream)) => {
            let version = before.versions.get(*stream).copied().unwrap_or_default();
            Ok(CommitError::Conflict {
                stream: (*stream).clone(),
                expected: version,
                actual: version,
            })
        }
        _ => Err(error),
    }
}

/// [`EventStore::compact`] in one transaction: the stream's version checked, its records that
/// are not compacted yet rewritten compacted (one `UPDATE` from arrays), its snapshot replaced
/// only if no commit moved it meanwhile (else a conflict: the transaction is rolled back).
/// `Ok(Err)`: refused, nothing written.
async fn write_compaction(
    client: &mut Conn,
    stream: SessionId,
    snapshot: Snapshot,
) -> Result<Result<u64, CommitError>, StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    let name = stream.to_string();
    let actual: Option<i64> = col(
        &tx.query_one(
            "SELECT max(version) FROM linkflow_events WHERE stream = $1",
            &[&name],
        )
        .await
        .map_err(backend)?,
        0,
    )?;
    let actual = Version(to_u64(actual.unwrap_or(0), || format!("stream `{name}`"))?);
    if actual != snapshot.version || actual == Version::EMPTY {
        return Ok(Err(CommitError::Conflict {
            stream,
            expected: snapshot.version,
            actual,
        }));
    }
    if snapshot.compacted != snapshot.version {
        return Ok(Err(CommitError::CompactionConflict {
            stream,
            expected: snapshot.compacted,
            actual: snapshot.version,
        }));
    }
    let record = encode_snapshot(&snapshot);
    if record.len() > linkflow_store::MAX_RECORD_BYTES {
        return Ok(Err(CommitError::TooLarge {
            stream,
            bytes: record.len(),
            limit: linkflow_store::MAX_RECORD_BYTES,
        }));
    }
    let rows = tx
        .query(
            "SELECT stream, version, 0::int8 AS position, record FROM linkflow_events
              WHERE stream = $1 AND get_byte(record, 0) <> $2 ORDER BY version",
            &[&name, &i32::from(COMPACTED)],
        )
        .await
        .map_err(backend)?;
    let mut versions = Vec::with_capacity(rows.len());
    let mut records = Vec::with_capacity(rows.len());
    for row in &rows {
        // Read with position 0: the compacted record holds no position either.
        let event = decode_event_row(row)?;
        versions.push(to_i64(event.version.0, "version")?);
        records.push(encode_compacted(&CompactedEvent::of(&event)));
    }
    if !versions.is_empty() {
        tx.execute(
            "UPDATE linkflow_events e SET record = c.record
               FROM unnest($2::int8[], $3::bytea[]) AS c(version, record)
              WHERE e.stream = $1 AND e.version = c.version",
            &[&name, &versions, &records],
        )
        .await
        .map_err(backend)?;
    }
    let version = to_i64(snapshot.version.0, "version")?;
    let replaced = tx
        .execute(
            "INSERT INTO linkflow_snapshots (stream, version, record, compacted) VALUES ($1, $2, $3, $2)
             ON CONFLICT (stream) DO UPDATE SET version = excluded.version, record = excluded.record,
                                                compacted = excluded.compacted
              WHERE linkflow_snapshots.version <= excluded.version",
            &[&name, &version, &record],
        )
        .await
        .map_err(backend)?;
    if replaced != 1 {
        // A commit appended and snapshotted the stream after this compaction read it.
        drop(tx);
        let actual: Option<i64> = col(
            &client
                .query_one(
                    "SELECT max(version) FROM linkflow_events WHERE stream = $1",
                    &[&name],
                )
                .await
                .map_err(backend)?,
            0,
        )?;
        return Ok(Err(CommitError::Conflict {
            stream,
            expected: snapshot.version,
            actual: Version(to_u64(actual.unwrap_or(0), || format!("stream `{name}`"))?),
        }));
    }
    match tx.commit().await.map_err(backend) {
        Ok(()) => Ok(Ok(versions.len() as u64)),
        Err(error) if is_race(&error) => Ok(Err(CommitError::CompactionConflict {
            stream,
            expected: snapshot.compacted,
            actual: snapshot.version,
        })),
        Err(error) => Err(error),
    }
}

/// The snapshots of the streams asked for.
const READ_SNAPSHOTS: &str = "SELECT n.stream, n.record
   FROM unnest($1::text[]) AS s(stream)
   CROSS JOIN LATERAL (SELECT * FROM linkflow_snapshots n WHERE n.stream = s.stream OFFSET 0) n";

/// The events of the streams asked for after their snapshots, compacted ones left out.
const READ_TAILS: &str = "SELECT e.stream, e.version, e.position, e.record
   FROM unnest($1::text[]) AS s(stream)
   CROSS JOIN LATERAL (
       SELECT e.stream, e.version, e.record,
              coalesce((SELECT p.position FROM linkflow_positions p
                         WHERE p.txid = e.txid AND p.id = e.id), 0) AS position
         FROM linkflow_events e
        WHERE e.stream = s.stream
          AND e.version > coalesce((SELECT n.version FROM linkflow_snapshots n
                                     WHERE n.stream = s.stream), 0)
          AND get_byte(e.record, 0) <> 64
       OFFSET 0) e
  ORDER BY e.stream, e.version";

/// The rows of [`EventStore::read_streams`]: snapshots, tails, dedupe hits.
type StreamsRows = (Vec<Row>, Vec<Row>, Vec<Row>);

/// Reads everything `read_streams` answers in one pipelined round trip, inside one
/// repeatable-read transaction so that every statement sees the same point in time.
async fn read_streams_rows(
    client: &mut Conn,
    streams: Vec<String>,
    key_streams: Vec<String>,
    keys: Vec<Vec<u8>>,
) -> Result<StreamsRows, StoreError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(backend)?;
    let stream_params: [&(dyn ToSql + Sync); 1] = [&streams];
    let key_params: [&(dyn ToSql + Sync); 2] = [&key_streams, &keys];
    let snapshots = tx.prepare_cached(READ_SNAPSHOTS).await.map_err(backend)?;
    let tails = tx.prepare_cached(READ_TAILS).await.map_err(backend)?;
    let accepted = tx.prepare_cached(READ_KEYS).await.map_err(backend)?;
    let snapshots = tx.query(&snapshots, &stream_params);
    let tails = tx.query(&tails, &stream_params);
    let accepted_keys = tx.query(&accepted, &key_params);
    let rows = futures_util::future::try_join3(snapshots, tails, accepted_keys)
        .await
        .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(rows)
}

/// Decodes [`read_streams_rows`]'s rows (on the caller's thread).
fn decode_streams_read(
    streams: &[SessionId],
    keys: &[(SessionId, DedupeKey)],
    (snapshots, tails, accepted_keys): StreamsRows,
) -> Result<StreamsRead, StoreError> {
    let mut read = StreamsRead::default();
    for stream in streams {
        read.streams.insert(stream.clone(), StreamRead::default());
    }
    read.keys = keys.iter().cloned().collect();
    let entry = |read: &mut StreamsRead, stream: &str, what: &str| {
        let id = session(stream.to_owned(), || format!("{what} of `{stream}`"))?;
        match read.streams.get_mut(&id) {
            Some(_) => Ok(id),
            None => Err(bad_column(
                format!("{what} of `{stream}`"),
                "a stream that was not asked for",
            )),
        }
    };
    for row in &snapshots {
        let stream: &str = col(row, 0)?;
        let id = entry(&mut read, stream, "snapshot")?;
        let snapshot = decode_snapshot_record(&format!("snapshot of `{stream}`"), col(row, 1)?)?;
        read.streams
            .get_mut(&id)
            .expect("checked by entry")
            .snapshot = Some(snapshot);
    }
    for row in &tails {
        let event = decode_event_row(row)?;
        let id = entry(&mut read, event.stream.as_str(), "event")?;
        read.streams
            .get_mut(&id)
            .expect("checked by entry")
            .tail
            .push(event);
    }
    for row in &accepted_keys {
        let stream: String = col(row, 0)?;
        let what = || format!("dedupe entry of `{stream}`");
        let key = dedupe_key(col(row, 1)?, what)?;
        let id = session(stream.clone(), what)?;
        let hit = DedupeHit {
            stream: id.clone(),
            version: Version(to_u64(col(row, 2)?, what)?),
            position: Position(to_u64(col(row, 3)?, what)?),
        };
        read.dedupe.insert((id, key), hit);
    }
    Ok(read)
}

/// The head, and whether every event of a transaction below `$1` (an xid8 as text) that is
/// visible is numbered.
const SETTLED: &str = "SELECT h.position,
        NOT EXISTS (SELECT 1 FROM linkflow_events e
                     WHERE (e.txid, e.id) > (h.txid, h.id) AND e.txid < $1::text::xid8)
   FROM linkflow_head h";

/// How often [`EventStore::settle`] looks at the numbering.
const SETTLE_POLL: Duration = Duration::from_millis(2);

/// The oldest transaction on the server that holds an id, in words: what holds the numbering
/// back when it does not move.
async fn held_back_by(client: &Client) -> String {
    let row = client
        .query_opt(
            "SELECT pid, datname, state, extract(epoch FROM now() - xact_start)::float8, left(query, 120)
               FROM pg_stat_activity
              WHERE backend_xid IS NOT NULL ORDER BY age(backend_xid) DESC LIMIT 1",
            &[],
        )
        .await;
    match row {
        Ok(Some(row)) => {
            let pid: i32 = row.try_get(0).unwrap_or_default();
            let database: Option<String> = row.try_get(1).unwrap_or_default();
            let state: Option<String> = row.try_get(2).unwrap_or_default();
            let seconds: Option<f64> = row.try_get(3).unwrap_or_default();
            let query: Option<String> = row.try_get(4).unwrap_or_default();
            format!(
                "the oldest transaction on the server (pid {pid}, database {}, {}, open {:.0} s, last statement `{}`) holds it back; end it, or set idle_in_transaction_session_timeout",
                database.unwrap_or_default(),
                state.unwrap_or_default(),
                seconds.unwrap_or_default(),
                query.unwrap_or_default()
            )
        }
        Ok(None) => {
            "no transaction holds it back: is a sequencer running (every PgStore runs one)?".into()
        }
        Err(error) => format!("cannot tell what holds it back: {error}"),
    }
}

async fn read_head(client: &Client) -> Result<Position, StoreError> {
    let head: i64 = col(
        &client
            .query_one("SELECT position FROM linkflow_head", &[])
            .await
            .map_err(backend)?,
        0,
    )?;
    Ok(Position(to_u64(head, || "linkflow_head".into())?))
}

/// Listens for other nodes' commits and calls `wake` with the head, reconnecting after errors,
/// until the store's runtime stops.
async fn watch(pool: Arc<Pool>, wake: Box<dyn Fn(Position) + Send + Sync>) {
    loop {
        if let Err(error) = watch_once(&pool, &*wake).await {
            tracing::warn!(%error, "PostgreSQL commit watcher failed; reconnecting");
        }
        tokio::time::sleep(WATCH_POLL).await;
    }
}

/// A connection of its own that `LISTEN`s on `channel`, and the payloads of its notifications
/// (the channel closes when the connection does).
pub(crate) async fn listen(
    pool: &Pool,
    channel: &str,
) -> Result<(Client, tokio::sync::mpsc::UnboundedReceiver<String>), StoreError> {
    let (client, mut connection) = pool.config().connect(NoTls).await.map_err(backend)?;
    let (notified, notifications) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = notified.send(note.payload().to_owned());
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .map_err(backend)?;
    Ok((client, notifications))
}

async fn watch_once(
    pool: &Pool,
    wake: &(dyn Fn(Position) + Send + Sync),
) -> Result<(), StoreError> {
    let (client, mut notifications) = listen(pool, NOTIFY_CHANNEL).await?;
    loop {
        match tokio::time::timeout(WATCH_POLL, notifications.recv()).await {
            Ok(Some(payload)) => {
                if let Ok(head) = payload.parse::<u64>() {
                    wake(Position(head));
                }
            }
            Ok(None) => return Err(crate::error::unreachable("the LISTEN connection closed")),
            Err(_) => wake(read_head(&client).await?),
        }
    }
}

impl EventStore for PgStore {
    /// The receipt's positions (and head) are [`Position::PENDING`]: the sequencer numbers
    /// the events a moment after the commit (this node's sequencer is woken at once).
    fn commit(&self, commit: Commit) -> Result<Receipt, CommitError> {
        self.health()?;
        let receipt = self.run(Box::new(move |client| {
            Box::pin(write_commit(client, commit))
        }))??;
        if !receipt.appended.is_empty() {
            self.sequencer.wake.notify_one();
        }
        Ok(receipt)
    }

    fn numbers_at_commit(&self) -> bool {
        false
    }

    fn numbering_held_back(&self) -> Option<Duration> {
        self.sequencer.numbering().held_back
    }

    /// Waits, up to [`PgOptions::settle_timeout`], until no event committed before the call is
    /// left unnumbered: every transaction that had started by then has ended and the sequencer
    /// has numbered past it.
    fn settle(&self) -> Result<Position, StoreError> {
        let sequencer = Arc::clone(&self.sequencer);
        let timeout = self.settle_timeout;
        self.run(Box::new(move |client| {
            Box::pin(async move {
                let started = tokio::time::Instant::now();
                // Every transaction that started before this call has an id below it.
                let target: String = col(
                    &client
                        .query_one("SELECT pg_snapshot_xmax(pg_current_snapshot())::text", &[])
                        .await
                        .map_err(backend)?,
                    0,
                )?;
                let check = client.prepare_cached(SETTLED).await.map_err(backend)?;
                loop {
                    sequencer.wake.notify_one();
                    let row = client.query_one(&check, &[&target]).await.map_err(backend)?;
                    let head: i64 = col(&row, 0)?;
                    let settled: bool = col(&row, 1)?;
                    if settled {
                        return Ok(Position(to_u64(head, || "linkflow_head".into())?));
                    }
                    if started.elapsed() >= timeout {
                        return Err(StoreError::Internal(format!(
                            "the PostgreSQL log's numbering did not reach the events committed before this call within {timeout:?}: {}",
                            held_back_by(client).await
                        )));
                    }
                    tokio::time::sleep(SETTLE_POLL).await;
                }
            })
        }))
    }

    fn compact(&self, stream: &SessionId, snapshot: Snapshot) -> Result<u64, CommitError> {
        self.health()?;
        let stream = stream.clone();
        self.run(Box::new(move |client| {
            Box::pin(write_compaction(client, stream, snapshot))
        }))?
    }

    fn sync(&self) -> Result<(), StoreError> {
        self.health()?;
        // Every commit returned after PostgreSQL flushed its WAL (synchronous_commit = on).
        Ok(())
    }

    /// Every commit is durable when it returns: closing only stops this handle's writes.
    fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn health(&self) -> Result<(), StoreError> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(StoreError::Closed);
        }
        Ok(())
    }

    fn head(&self) -> Result<Position, StoreError> {
        self.run(Box::new(|client| {
            Box::pin(async move { read_head(client).await })
        }))
    }

    fn read_stream(
        &self,
        stream: &SessionId,
        after: Version,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events(
            "SELECT e.stream, e.version, coalesce((SELECT p.position FROM linkflow_positions p WHERE p.txid = e.txid AND p.id = e.id), 0) AS position, e.record
               FROM linkflow_events e
              WHERE e.stream = $1 AND e.version > $2 AND get_byte(e.record, 0) <> 64
              ORDER BY e.version LIMIT $3",
            vec![
                Box::new(stream.to_string()),
                Box::new(to_i64(after.0, "version")?),
                Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )
    }

    fn read_all(&self, after: Position, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
        // Numbered events only: the log up to the sequencer's head.
        self.events(
            "SELECT e.stream, e.version, p.position, e.record
               FROM linkflow_positions p
               JOIN linkflow_events e ON e.txid = p.txid AND e.id = p.id
              WHERE p.position > $1 AND get_byte(e.record, 0) <> 64
              ORDER BY p.position LIMIT $2",
            vec![
                Box::new(to_i64(after.0, "position")?),
                Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
        )
    }

    fn find_dedupe(
        &self,
        stream: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, StoreError> {
        let (stream, key) = (stream.clone(), *key);
        self.run(Box::new(move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT e.version, coalesce((SELECT p.position FROM linkflow_positions p WHERE p.txid = e.txid AND p.id = e.id), 0)
                           FROM linkflow_events e
                          WHERE e.stream = $1 AND e.dedupe = $2",
                        &[&stream.as_str(), &&key.as_bytes()[..]],
                    )
                    .await
                    .map_err(backend)?;
                let what = || format!("dedupe entry {key} of `{stream}`");
                rows.first()
                    .map(|row| {
                        Ok(DedupeHit {
                            stream: stream.clone(),
                            version: Version(to_u64(col(row, 0)?, what)?),
                            position: Position(to_u64(col(row, 1)?, what)?),
                        })
                    })
                    .transpose()
            })
        }))
    }

    fn folded_with(&self) -> Result<Option<u32>, StoreError> {
        let rows = self.query_rows(
            "SELECT value FROM linkflow_meta WHERE name = 'folded_with'",
            Vec::new(),
        )?;
        rows.first()
            .map(|row| {
                let value: i64 = col(row, 0)?;
                u32::try_from(value)
                    .map_err(|_| bad_column("linkflow_meta folded_with", "not a rules version"))
            })
            .transpose()
    }

    fn set_folded_with(&self, rules: u32) -> Result<(), StoreError> {
        self.query_rows(
            "INSERT INTO linkflow_meta (name, value) VALUES ('folded_with', $1)
             ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            vec![Box::new(i64::from(rules))],
        )?;
        Ok(())
    }

    /// One query answers both: whether the stream has an event, and its snapshot.
    fn stream_start(&self, stream: &SessionId) -> Result<StreamStart, StoreError> {
        let rows = self.query_rows(
            "SELECT (SELECT max(version) FROM linkflow_events WHERE stream = $1),
                    (SELECT record FROM linkflow_snapshots WHERE stream = $1)",
            vec![Box::new(stream.to_string())],
        )?;
        let Some(row) = rows.first() else {
            return Err(StoreError::Internal(
                "a query of one row answered none".into(),
            ));
        };
        let version: Option<i64> = col(row, 0)?;
        let Some(version) = version else {
            return Ok(StreamStart::default());
        };
        let version = Version(to_u64(version, || format!("version of `{stream}`"))?);
        let record: Option<&[u8]> = col(row, 1)?;
        let snapshot = record
            .map(|record| decode_snapshot_record(&format!("snapshot of `{stream}`"), record))
            .transpose()?;
        Ok(StreamStart { version, snapshot })
    }

    fn for_each_snapshot(
        &self,
        after: Option<&SessionId>,
        visit: &mut dyn FnMut(SessionId, Snapshot) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        // Every id is longer than the empty string, which therefore starts at the first.
        let mut after = after.map_or_else(String::new, SessionId::to_string);
        loop {
            let rows = self.query_rows(
                "SELECT stream, record FROM linkflow_snapshots
                  WHERE stream > $1 ORDER BY stream LIMIT $2",
                vec![Box::new(after.clone()), Box::new(PAGE)],
            )?;
            for row in &rows {
                let stream: String = col(row, 0)?;
                let what = format!("snapshot of `{stream}`");
                let snapshot = decode_snapshot_record(&what, col(row, 1)?)?;
                after = stream.clone();
                if visit(session(stream, || what)?, snapshot).is_break() {
                    return Ok(());
                }
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn for_each_index_key(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut low = from.to_vec();
        let mut inclusive = true;
        loop {
            let rows = self.query_rows(
                "SELECT key FROM linkflow_index
                  WHERE (key > $1 OR ($3 AND key = $1)) AND key < $2 ORDER BY key LIMIT $4",
                vec![
                    Box::new(low.clone()),
                    Box::new(to.to_vec()),
                    Box::new(inclusive),
                    Box::new(PAGE),
                ],
            )?;
            for row in &rows {
                let key: Vec<u8> = col(row, 0)?;
                if visit(&key).is_break() {
                    return Ok(());
                }
                low = key;
                inclusive = false;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn for_each_index_key_descending(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        // Keyset pages downwards: each starts below the last key seen.
        let mut high = to.to_vec();
        loop {
            let rows = self.query_rows(
                "SELECT key FROM linkflow_index
                  WHERE key >= $1 AND key < $2 ORDER BY key DESC LIMIT $3",
                vec![
                    Box::new(from.to_vec()),
                    Box::new(high.clone()),
                    Box::new(PAGE),
                ],
            )?;
            for row in &rows {
                let key: Vec<u8> = col(row, 0)?;
                if visit(&key).is_break() {
                    return Ok(());
                }
                high = key;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn for_each_counter(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut linkflow_store::store::CounterVisitor<'_>,
    ) -> Result<(), StoreError> {
        // Keyset pages over (cell, name); the first page starts at `from`'s first name.
        let mut low: (Vec<u8>, Vec<u8>) = (from.to_vec(), Vec::new());
        let mut inclusive = true;
        loop {
            let rows = self.query_rows(
                "SELECT cell, name, sum(value)::int8 FROM linkflow_counters
                  WHERE ((cell, name) > ($1, $2) OR ($4 AND cell = $1 AND name = $2))
                    AND cell < $3
                  GROUP BY cell, name HAVING sum(value) <> 0
                  ORDER BY cell, name LIMIT $5",
                vec![
                    Box::new(low.0.clone()),
                    Box::new(low.1.clone()),
                    Box::new(to.to_vec()),
                    Box::new(inclusive),
                    Box::new(PAGE),
                ],
            )?;
            for row in &rows {
                let cell: Vec<u8> = col(row, 0)?;
                let name: Vec<u8> = col(row, 1)?;
                let value: i64 = col(row, 2)?;
                if visit(&cell, &name, value).is_break() {
                    return Ok(());
                }
                low = (cell, name);
                inclusive = false;
            }
            if (rows.len() as i64) < PAGE {
                return Ok(());
            }
        }
    }

    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(StoredEvent) -> ControlFlow<()>,
    ) -> Result<(), StoreError> {
        let mut after = (String::new(), 0i64);
        loop {
            let page = self.events(
                "SELECT e.stream, e.version, coalesce((SELECT p.position FROM linkflow_positions p WHERE p.txid = e.txid AND p.id = e.id), 0) AS position, e.record
                   FROM linkflow_events e
                  WHERE (e.stream, e.version) > ($1, $2) AND get_byte(e.record, 0) <> 64
                  ORDER BY e.stream, e.version LIMIT $3",
                vec![Box::new(after.0.clone()), Box::new(after.1), Box::new(PAGE)],
            )?;
            let full = page.len() as i64 == PAGE;
            for event in page {
                after = (
                    event.stream.to_string(),
                    to_i64(event.version.0, "version")?,
                );
                if visit(event).is_break() {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
        }
    }

    fn verify(&self) -> Result<VerifyReport, StoreError> {
        crate::verify::verify(self)
    }

    fn read_streams(
        &self,
        streams: &[SessionId],
        keys: &[(SessionId, DedupeKey)],
    ) -> Result<StreamsRead, StoreError> {
        let names: Vec<String> = streams.iter().map(SessionId::to_string).collect();
        let key_streams: Vec<String> = keys.iter().map(|(s, _)| s.to_string()).collect();
        let key_bytes: Vec<Vec<u8>> = keys.iter().map(|(_, k)| k.as_bytes().to_vec()).collect();
        let rows = self.run(Box::new(move |client| {
            Box::pin(read_streams_rows(client, names, key_streams, key_bytes))
        }))?;
        decode_streams_read(streams, keys, rows)
    }

    fn watch_remote_commits(
        &self,
        wake: Box<dyn Fn(Position) + Send + Sync>,
    ) -> Result<bool, StoreError> {
        let mut watching = self
            .watching
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if *watching {
            return Err(StoreError::Internal(
                "this store already has a commit watcher".into(),
            ));
        }
        *watching = true;
        self.bridge
            .handle()
            .spawn(watch(Arc::clone(&self.pool), wake));
        Ok(true)
    }
}

impl PgStore {
    /// Event rows of `sql` (selecting stream, version, position, record), decoded and checked.
    fn events(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.query_rows(sql, params)?
            .iter()
            .map(decode_event_row)
            .collect()
    }

    /// Runs one query (prepared once per connection) on a pooled connection; the rows are
    /// decoded on the calling thread.
    pub(crate) fn query_rows(
        &self,
        sql: &'static str,
        params: Vec<Box<dyn ToSql + Send + Sync>>,
    ) -> Result<Vec<Row>, StoreError> {
        self.run(Box::new(move |client| {
            Box::pin(async move {
                let refs: Vec<&(dyn ToSql + Sync)> =
                    params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
                // Every statement here is a constant: each connection prepares it once.
                let statement = client.prepare_cached(sql).await.map_err(backend)?;
                client.query(&statement, &refs).await.map_err(backend)
            })
        }))
    }
}
