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

/// Every migration, in order. Nothing has shipped yet: the schema starts at 2, the layout
/// that keeps every event of a session in the log (schema 1 kept refused events apart in a
/// `linkflow_parked` table; a database at 1 is refused, not migrated). Once linkflow is
/// released, never edit one that has shipped: add the next.
pub const MIGRATIONS: &[(i32, &str)] = &[(
    FIRST,
    r#"
-- The last position handed out. Every commit locks this one row first, so commits (from any
-- node) are serialized: positions are gap-free and become visible in position order.
CREATE TABLE linkflow_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position bigint NOT NULL CHECK (position >= 0)
);
INSERT INTO linkflow_head (position) VALUES (0);

-- Every event each stream received, in arrival order. `record` is linkflow's record
-- encoding (schema byte, CRC-32, body).
CREATE TABLE linkflow_events (
    position bigint PRIMARY KEY CHECK (position > 0),
    stream text COLLATE "C" NOT NULL,
    version bigint NOT NULL CHECK (version > 0),
    dedupe bytea NOT NULL,
    record bytea NOT NULL,
    UNIQUE (stream, version),
    UNIQUE (stream, dedupe)
);

-- The newest folded state of each stream, and the version it was compacted at (0: never;
-- set by a compaction only, and checked against every commit's snapshot).
CREATE TABLE linkflow_snapshots (
    stream text COLLATE "C" PRIMARY KEY,
    version bigint NOT NULL,
    record bytea NOT NULL,
    compacted bigint NOT NULL DEFAULT 0 CHECK (compacted >= 0 AND compacted <= version)
);

-- The engine's index entries (keys only, compared bytewise) and counters, written in the
-- commit of the events they derive from. A counter at zero is deleted.
CREATE TABLE linkflow_index (
    key bytea PRIMARY KEY
);
CREATE TABLE linkflow_counters (
    cell bytea NOT NULL,
    name bytea NOT NULL,
    value bigint NOT NULL CHECK (value <> 0),
    PRIMARY KEY (cell, name)
);

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
const FIRST: i32 = 4;

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
            detail: "schema 1 kept refused events apart in linkflow_parked; schema 2 had no compaction mark on linkflow_snapshots; schema 3 had no delivery tables; schema 4 keeps every event of a session in linkflow_events, each stream's compaction version beside its snapshot, and outbound delivery's endpoints, cursors, leases, attempts and redeliveries",
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
