//! The sequencer: hands out the log's gap-free positions after events commit.
//!
//! Commits from every node run concurrently and write no position. Every node runs this task;
//! the one holding the session-level advisory lock [`SEQUENCER_LOCK`] on a connection of its
//! own (the lease) numbers, the others wait to take over (a node that dies closes its
//! connection, and the server frees the lock at once).
//!
//! A round is one statement in one transaction: it takes the snapshot's horizon
//! (`pg_snapshot_xmin(pg_current_snapshot())`, the oldest transaction still running), and
//! numbers, in (txid, id) order, up to [`NUMBER_BATCH`] events after the last numbered one
//! whose transaction is older than the horizon. Every transaction below the horizon has ended,
//! and its rows are visible to the round: no event can later appear below it, so the positions
//! have no gap and a subscriber never skips one. An event whose transaction is above the
//! horizon waits, even if it committed: a long transaction anywhere on the server holds the
//! numbering back (it stalls subscribers, it never makes them skip); [`Numbering`] says for how
//! long. A round that numbered something notifies `linkflow_commits` with the new head (one
//! notifier, so the server's notification lock is never contended by commits).
//!
//! The round commits with `synchronous_commit = on`: a position a reader saw is on disk.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use linkflow_store::StoreError;
use tokio::sync::Notify;
use tokio_postgres::Client;

use crate::error::{backend, col};
use crate::pool::Pool;

/// The advisory lock whose holder numbers the log (`'lfsequen'` as bytes).
pub const SEQUENCER_LOCK: i64 = 0x6c66_7365_7175_656e;

/// The most events one round numbers.
pub const NUMBER_BATCH: i64 = 10_000;

/// How long the holder waits for a local commit's wake-up before it looks for other nodes'
/// commits: the most a remote commit waits to be numbered on an idle log.
pub const IDLE_POLL: Duration = Duration::from_millis(10);

/// How often a node without the lease tries to take it.
pub const FOLLOWER_RETRY: Duration = Duration::from_millis(250);

/// How often the holder folds the counter shards of ended connections into shard 0.
pub const FOLD_EVERY: Duration = Duration::from_secs(30);

/// The most counter rows one fold moves.
pub const FOLD_BATCH: i64 = 10_000;

/// One round: number what is below the horizon, move the head, notify; answer how many were
/// numbered, the head, and whether committed events wait above the horizon.
const ROUND: &str = "
WITH head AS (SELECT position, txid, id FROM linkflow_head),
     horizon AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin),
     todo AS (
         SELECT e.txid, e.id
           FROM linkflow_events e
          WHERE (e.txid, e.id) > ((SELECT txid FROM head), (SELECT id FROM head))
            AND e.txid < (SELECT xmin FROM horizon)
          ORDER BY e.txid, e.id
          LIMIT $1),
     placed AS (
         INSERT INTO linkflow_positions (position, txid, id)
         SELECT (SELECT position FROM head) + row_number() OVER (ORDER BY t.txid, t.id),
                t.txid, t.id
           FROM todo t
         RETURNING position, txid, id),
     moved AS (
         UPDATE linkflow_head h SET position = p.position, txid = p.txid, id = p.id
           FROM (SELECT position, txid, id FROM placed ORDER BY position DESC LIMIT 1) p
         RETURNING h.position)
SELECT (SELECT count(*) FROM placed) AS numbered,
       coalesce((SELECT position FROM moved), (SELECT position FROM head)) AS head,
       (SELECT e.txid FROM linkflow_events e WHERE e.txid >= (SELECT xmin FROM horizon)
         ORDER BY e.txid, e.id LIMIT 1) IS NOT NULL AS waiting,
       (SELECT count(*) FROM (SELECT pg_notify('linkflow_commits', position::text) FROM moved) n)
           AS notified";

/// Folds the shards of connections that have ended into shard 0 (the sequencer is the only
/// writer of shard 0; a live connection's shard is left alone, so no commit waits on it).
const FOLD: &str = "
WITH gone AS (
         SELECT cell, name, shard FROM linkflow_counters
          WHERE shard <> 0 AND shard NOT IN (SELECT pid FROM pg_stat_activity)
          LIMIT $1),
     moved AS (
         DELETE FROM linkflow_counters c USING gone g
          WHERE c.cell = g.cell AND c.name = g.name AND c.shard = g.shard
         RETURNING c.cell, c.name, c.value),
     summed AS (
         SELECT m.cell, m.name, coalesce(z.value, 0) + sum(m.value) AS value
           FROM moved m
           LEFT JOIN linkflow_counters z ON z.cell = m.cell AND z.name = m.name AND z.shard = 0
          GROUP BY m.cell, m.name, z.value)
MERGE INTO linkflow_counters c
USING summed s ON c.cell = s.cell AND c.name = s.name AND c.shard = 0
WHEN MATCHED AND s.value = 0 THEN DELETE
WHEN MATCHED THEN UPDATE SET value = s.value
WHEN NOT MATCHED AND s.value <> 0 THEN INSERT (cell, name, shard, value) VALUES (s.cell, s.name, 0, s.value)";

/// What this node knows of the numbering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Numbering {
    /// This node holds the lease and numbers the log.
    pub leader: bool,
    /// The last position this node's sequencer handed out (0 on a follower).
    pub head: u64,
    /// Events this node's sequencer numbered since the store opened.
    pub numbered: u64,
    /// How long committed events have been waiting above the horizon without any being
    /// numbered (a transaction older than them is still running); `None`: nothing waits.
    pub held_back: Option<Duration>,
}

/// State shared by the sequencer task and the store.
#[derive(Default)]
pub(crate) struct Sequencer {
    /// Woken by this node's commits: the holder numbers them without waiting for its poll.
    pub(crate) wake: Notify,
    leader: AtomicBool,
    head: AtomicU64,
    numbered: AtomicU64,
    /// Milliseconds since `epoch` when events started waiting above the horizon; -1: none.
    held_since: AtomicI64,
    epoch: std::sync::OnceLock<Instant>,
}

impl Sequencer {
    fn epoch(&self) -> Instant {
        *self.epoch.get_or_init(Instant::now)
    }

    pub(crate) fn numbering(&self) -> Numbering {
        let since = self.held_since.load(Ordering::Relaxed);
        Numbering {
            leader: self.leader.load(Ordering::Relaxed),
            head: self.head.load(Ordering::Relaxed),
            numbered: self.numbered.load(Ordering::Relaxed),
            held_back: (since >= 0 && self.leader.load(Ordering::Relaxed)).then(|| {
                self.epoch()
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since as u64))
            }),
        }
    }

    fn held(&self, waiting: bool, numbered: i64) {
        if !waiting || numbered > 0 {
            self.held_since.store(-1, Ordering::Relaxed);
        } else if self.held_since.load(Ordering::Relaxed) < 0 {
            let now = self.epoch().elapsed().as_millis() as i64;
            self.held_since.store(now, Ordering::Relaxed);
        }
    }
}

/// Runs for as long as the store's runtime: waits for the lease, numbers while it holds it,
/// and starts over when its connection breaks.
pub(crate) async fn run(pool: Arc<Pool>, sequencer: Arc<Sequencer>) {
    sequencer.held_since.store(-1, Ordering::Relaxed);
    loop {
        if let Err(error) = lead(&pool, &sequencer).await {
            tracing::warn!(%error, "PostgreSQL sequencer stopped; trying again");
        }
        sequencer.leader.store(false, Ordering::Relaxed);
        tokio::time::sleep(FOLLOWER_RETRY).await;
    }
}

async fn lead(pool: &Pool, sequencer: &Sequencer) -> Result<(), StoreError> {
    let client = pool.connect().await?;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&SEQUENCER_LOCK])
            .await
            .map_err(backend)?;
        if col::<bool, _>(&row, 0)? {
            break;
        }
        tokio::time::sleep(FOLLOWER_RETRY).await;
    }
    tracing::info!("this node numbers the PostgreSQL log (it holds the sequencer lease)");
    sequencer.leader.store(true, Ordering::Relaxed);
    let round = client.prepare(ROUND).await.map_err(backend)?;
    let fold = client.prepare(FOLD).await.map_err(backend)?;
    let mut folded = Instant::now();
    loop {
        let numbered = number(&client, &round, sequencer).await?;
        if numbered > 0 {
            // More may have committed meanwhile: look again before waiting.
            continue;
        }
        if folded.elapsed() >= FOLD_EVERY {
            client
                .execute(&fold, &[&FOLD_BATCH])
                .await
                .map_err(backend)?;
            folded = Instant::now();
        }
        let _ = tokio::time::timeout(IDLE_POLL, sequencer.wake.notified()).await;
    }
}

/// One round; returns how many events it numbered.
async fn number(
    client: &Client,
    round: &tokio_postgres::Statement,
    sequencer: &Sequencer,
) -> Result<i64, StoreError> {
    let row = client
        .query_one(round, &[&NUMBER_BATCH])
        .await
        .map_err(backend)?;
    let numbered: i64 = col(&row, "numbered")?;
    let head: i64 = col(&row, "head")?;
    let waiting: bool = col(&row, "waiting")?;
    sequencer.head.store(head.max(0) as u64, Ordering::Relaxed);
    sequencer
        .numbered
        .fetch_add(numbered.max(0) as u64, Ordering::Relaxed);
    sequencer.held(waiting, numbered);
    Ok(numbered)
}
