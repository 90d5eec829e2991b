//! The schema, created and migrated on open.
//!
//! Migrations are numbered and applied in order inside one transaction that first takes a
//! transaction-level advisory lock, so two nodes starting at once apply each migration exactly
//! once (the second waits, then finds it applied). A database migrated by a newer linkflow is
//! refused rather than misread.

use tokio_postgres::Client;

use crate::error::{backend, schema_too_new};
use linkflow_store::StoreError;

/// The advisory lock key migrations hold (`'linkflow'` as bytes).
const MIGRATION_LOCK: i64 = 0x6c69_6e6b_666c_6f77;

/// Every migration, in order. Nothing has shipped yet: the schema starts at 5, the layout
/// without a global commit lock (a database at 1 to 4 is refused, not migrated). Once linkflow is
/// released, never edit one that has shipped: add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    FIRST,
    r#"
-- Commits from any number of nodes run concurrently: nothing below is locked by every commit.
--
-- Every event each stream received, in arrival order. A row is named by the transaction that
-- wrote it (`txid`) and an id drawn from a sequence (`id`); the stream's order and the
-- exactly-once dedupe are the unique constraints. `record` is linkflow's record encoding
-- (schema byte, CRC-32, body), its position field always 0: positions are handed out after
-- the commit, in `linkflow_positions`.
CREATE TABLE linkflow_events (
    txid xid8 NOT NULL DEFAULT pg_current_xact_id(),
    id bigint GENERATED ALWAYS AS IDENTITY (CACHE 64),
    stream text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    dedupe bytea NOT NULL,
    record bytea NOT NULL,
    PRIMARY KEY (txid, id),
    UNIQUE (stream, version),
    UNIQUE (stream, dedupe)
);

-- The global order. One sequencer at a time (the node holding the advisory lock
-- `SEQUENCER_LOCK` on a connection of its own) numbers, in (txid, id) order, the events whose
-- transaction is older than every transaction still running (`pg_snapshot_xmin`): no event
-- below that horizon can commit later, so positions are gap-free and a reader of
-- `position > checkpoint` never skips one. `linkflow_head` is the last position handed out
-- and the (txid, id) it was handed to; the sequencer alone writes it.
CREATE TABLE linkflow_positions (
    position bigint PRIMARY KEY CHECK (position > 0),
    txid xid8 NOT NULL,
    id bigint NOT NULL,
    UNIQUE (txid, id)
);
CREATE TABLE linkflow_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position bigint NOT NULL CHECK (position >= 0),
    txid xid8 NOT NULL,
    id bigint NOT NULL
);
INSERT INTO linkflow_head (position, txid, id) VALUES (0, '0', 0);

-- The newest folded state of each stream, and the version it was compacted at (0: never;
-- set by a compaction only, and checked against every commit's snapshot).
CREATE TABLE linkflow_snapshots (
    stream text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    record bytea NOT NULL,
    compacted bigint NOT NULL DEFAULT 0 CHECK (compacted >= 0 AND compacted <= version)
);

-- The engine's index entries (keys only, compared bytewise) and counters, written in the
-- commit of the events they derive from. A counter is a sum of shards: a commit adds to the
-- shard of its connection (`pg_backend_pid()`), so two commits never wait on one counter row;
-- the sequencer folds the shards of connections that have ended into shard 0. A shard
-- may be zero (the fold deletes those of ended connections); a counter is the sum of its
-- shards, and a counter summing to zero is not read.
CREATE TABLE linkflow_index (
    key bytea PRIMARY KEY
);
CREATE TABLE linkflow_counters (
    cell bytea NOT NULL,
    name bytea NOT NULL,
    shard integer NOT NULL,
    value bigint NOT NULL,
    PRIMARY KEY (cell, name, shard)
);

-- Fails the statement it is called from (a commit whose snapshot another commit moved): the
-- whole commit is one statement, and this makes it write nothing.
CREATE FUNCTION linkflow_refuse(message text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'LF001', MESSAGE = message;
END
$$;

-- Markers the engine keeps: `folded_with`, the rules every snapshot was folded with.
CREATE TABLE linkflow_meta (
    name text PRIMARY KEY,
    value bigint NOT NULL
);

-- Erasure keys (docs/privacy.md), with a master key: each data key wrapped under the master
-- key, named by a keyed hash of its id; a destroyed key's row is deleted (and the table
-- vacuumed), every node told by `NOTIFY linkflow_keys`. The index secret, wrapped, is the one
-- row of `linkflow_key_secret`.
CREATE TABLE linkflow_keys (
    slot bytea PRIMARY KEY,
    wrapped bytea NOT NULL
);
CREATE TABLE linkflow_key_secret (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    wrapped bytea NOT NULL
);

-- Outbound delivery (docs/notifications.md): the endpoints (each a JSON document, in the order
-- they were added), each endpoint's cursor and the lease of the node that delivers to it, the
-- attempts (the newest kept, trimmed as they are written) and the redeliveries asked for.
CREATE TABLE linkflow_endpoints (
    added bigserial PRIMARY KEY,
    id text NOT NULL UNIQUE,
    endpoint text NOT NULL
);
CREATE TABLE linkflow_delivery_cursors (
    endpoint text PRIMARY KEY,
    through text,
    holder text,
    lease_until timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE linkflow_delivery_attempts (
    id bigserial PRIMARY KEY,
    endpoint text NOT NULL,
    attempt text NOT NULL
);
CREATE INDEX linkflow_delivery_attempts_by_endpoint ON linkflow_delivery_attempts (endpoint, id);
CREATE TABLE linkflow_redeliveries (
    endpoint text NOT NULL,
    notification text NOT NULL,
    PRIMARY KEY (endpoint, notification)
);
"#,
)];

/// The first schema this build reads.
const FIRST: i32 = 5;

/// The schema version this build writes.
pub fn latest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Creates or migrates the schema; safe to run from several nodes at once.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(backend)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(backend)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS linkflow_schema (
             version integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(backend)?;
    let current: Option<i32> = crate::error::col(
        &tx.query_one("SELECT max(version) FROM linkflow_schema", &[])
            .await
            .map_err(backend)?,
        0,
    )?;
    let current = current.unwrap_or(0);
    if current > latest() {
        return Err(schema_too_new(current, latest()));
    }
    if current != 0 && current < FIRST {
        return Err(StoreError::UpgradeRequired {
            store: "the PostgreSQL database".into(),
            found: format!("schema {current}"),
            supported: FIRST as u32,
            detail: "schema 1 kept refused events apart in linkflow_parked; schema 2 had no compaction mark on linkflow_snapshots; schema 3 had no delivery tables; schema 4 keeps every event of a session in linkflow_events, each stream's compaction version beside its snapshot, and outbound delivery's endpoints, cursors, leases, attempts and redeliveries; schema 5 has no global commit lock: events are numbered after they commit by one sequencer (linkflow_positions) and counters are sharded per connection",
        });
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        tx.batch_execute(sql).await.map_err(backend)?;
        tx.execute(
            "INSERT INTO linkflow_schema (version) VALUES ($1)",
            &[version],
        )
        .await
        .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}
