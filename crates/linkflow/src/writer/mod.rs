//! The write path: one writer thread takes every waiting request, decides each event against
//! its session's state, writes the whole group in one atomic commit, makes it durable with one
//! fsync, then answers every caller (group commit).
//!
//! Each stream's events are stored in arrival order: requests are taken from one queue in the
//! order they were sent. What the stream's state is, and which of its events are accepted, is
//! the fold of all of them in event-time order (`linkflow_core::timeline`): an arrival that
//! sorts last is folded in place, a late one folds its stream again.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};
use linkflow_core::{
    AccountEvent, AccountEventKind, AccountKey, DedupeKey, EventBody, LinkType, Phase, Position,
    Provider, SessionId, Version, RULES_VERSION,
};
use linkflow_store::{
    record::check_event_size, Append as NewAppend, Commit, CommitError, CounterDelta, DedupeHit,
    EventStore, IndexChange, NewEvent, Placed, Snapshot, StoreError, StreamsRead,
};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::cache::{PackedState, SessionCache, SessionState};
use crate::config::Durability;
use crate::error::{EngineError, EventError};
use crate::folded::{
    decode_state_any_rules, encode_snapshot_state, read_snapshot_state, Append, Folded,
    SnapshotState,
};
use crate::index::{self, Projection};
use crate::ingest::{default_dedupe_key, AccountFollow, IncomingEvent, IngestOutcome};
use crate::query::{load_state, read_bodies, state_from_read};
use crate::stats::{CommittedGroup, WriteCounters};

mod plan;
mod refold;

use plan::{Plan, Planned, PlannedAccount};
pub(crate) use refold::refold_stale;
pub use refold::RefoldReport;

/// How often a batch is planned again after a version conflict (another writer on a shared
/// store got there first) before its callers get the error.
const MAX_CONFLICT_RETRIES: usize = 3;

/// The same on a store shared with other processes, where conflicts are the normal way two
/// nodes writing one session find out about each other.
const MAX_SHARED_CONFLICT_RETRIES: usize = 64;

/// State shared by the engine handle, the writer thread and the readers.
pub(crate) struct Shared {
    pub store: Arc<dyn EventStore>,
    /// The engine opened the store itself, and closes it on shutdown (a store given to it is
    /// its owner's to close).
    pub owns_store: bool,
    /// Other processes may write to the store's log (`EventStore::watch_remote_commits`).
    pub store_is_shared: bool,
    pub cache: Mutex<SessionCache>,
    /// The last position subscribers may see: durable under `Fsync`, committed under `Buffered`.
    pub visible: watch::Sender<Position>,
    /// Log reads of catching-up subscribers in flight at once ([`crate::subscribe`]).
    pub catch_up: Arc<tokio::sync::Semaphore>,
    pub durability: Durability,
    pub max_batch_events: usize,
    pub max_events_per_stream: u32,
    pub inactivity_timeout: chrono::Duration,
    /// Sealing of personal fields, when a master key is configured.
    pub privacy: Option<Arc<crate::privacy::Privacy>>,
    /// Outbound delivery's state kept in the store's database (PostgreSQL), shared by every
    /// node; `None` for a store without one.
    pub delivery: Option<Arc<dyn crate::delivery::DeliveryState>>,
    pub raw_retention: Option<chrono::Duration>,
    /// How old a terminal session's last event must be for it to be compacted.
    pub compact_after: Option<chrono::Duration>,
    /// Where the write path's time goes (`Engine::write_stats`).
    pub stats: WriteCounters,
    /// The first failure to make writes durable: the engine then takes no more writes
    /// (fail-stop; reads keep working).
    pub failure: Mutex<Option<String>>,
}

impl Shared {
    /// Records the first failure to make writes durable.
    pub fn fail(&self, reason: String) {
        self.failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get_or_insert(reason);
    }

    /// Why the engine takes no more writes, if it does not.
    pub fn failed(&self) -> Option<EngineError> {
        let failure = self
            .failure
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()?;
        Some(EngineError::from(StoreError::Failed { reason: failure }))
    }

    pub fn cache(&self) -> MutexGuard<'_, SessionCache> {
        // The cache holds clones of committed states only; a panic elsewhere cannot leave it
        // half-updated.
        self.cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// Work for the writer thread.
pub(crate) enum Request {
    Ingest {
        events: Vec<IncomingEvent>,
        reply: Reply<Vec<IngestOutcome>>,
        /// When the caller sent it.
        sent: Instant,
    },
    /// Finish the queue, sync, and stop; `close`: then close the store (the last writer's).
    Shutdown { reply: Reply<()>, close: bool },
    /// Compact these sessions if they are terminal with their last event before `cutoff`
    /// (`crate::compact`). Never part of a group: the writer runs it between groups.
    Compact {
        sessions: Vec<SessionId>,
        cutoff: DateTime<Utc>,
        reply: Reply<crate::compact::CompactReport>,
    },
}

impl Request {
    fn event_count(&self) -> usize {
        match self {
            Request::Ingest { events, .. } => events.len(),
            Request::Shutdown { .. } => 1,
            Request::Compact { sessions, .. } => sessions.len(),
        }
    }

    fn sent(&self) -> Option<Instant> {
        match self {
            Request::Ingest { sent, .. } => Some(*sent),
            Request::Shutdown { .. } | Request::Compact { .. } => None,
        }
    }
}

/// The writer thread's loop. Ends when every sender is gone or on `Shutdown`, after its sync
/// threads have made the last groups durable and answered them, and one last sync.
///
/// Under `Durability::Fsync` the writer does not wait for a group's sync: it hands the
/// committed group to a sync thread and goes on to decide the next one, so deciding and
/// applying group `n + 1` overlaps the disk wait of group `n`. A free sync thread takes every
/// group waiting and covers them with one sync; with two or more (`sync_threads`), a group
/// committed while one sync runs starts its own on another thread instead of waiting for it.
/// No caller is answered before a sync that covers its group.
pub(crate) fn run_writer(
    shared: Arc<Shared>,
    mut requests: mpsc::Receiver<Request>,
    sync_threads: usize,
) {
    let (jobs, pending) = std::sync::mpsc::channel();
    let pending = Arc::new(Mutex::new(pending));
    let mut syncers = Vec::with_capacity(sync_threads);
    for index in 0..sync_threads.max(1) {
        let syncer_shared = Arc::clone(&shared);
        let syncer_jobs = Arc::clone(&pending);
        match std::thread::Builder::new()
            .name(format!("linkflow-sync-{index}"))
            .spawn(move || run_syncer(&syncer_shared, &syncer_jobs))
        {
            Ok(syncer) => syncers.push(syncer),
            // Fewer sync threads only make syncs wait longer; none makes nothing durable.
            Err(error) if syncers.is_empty() => {
                let error = EngineError::from(StoreError::Internal(format!(
                    "cannot start the sync thread: {error}"
                )));
                while let Some(request) = requests.blocking_recv() {
                    fail_group(vec![request], &error);
                }
                return;
            }
            Err(_) => break,
        }
    }
    // Only the sync threads hold the queue's receiving end: if they all stopped (a panic), a
    // send fails instead of leaving the group unanswered.
    drop(pending);
    let mut shutdown = None;
    while let Some(first) = requests.blocking_recv() {
        let taken = Instant::now();
        let mut group = Vec::new();
        let mut events = 0;
        let mut next = Some(first);
        let mut compact = None;
        while let Some(request) = next.take() {
            if let Request::Shutdown { reply, close } = request {
                shutdown = Some((reply, close));
                break;
            }
            if let Request::Compact { .. } = request {
                compact = Some(request);
                break;
            }
            if let Some(sent) = request.sent() {
                shared.stats.queued(sent, taken);
            }
            events += request.event_count();
            group.push(request);
            if events < shared.max_batch_events {
                next = requests.try_recv().ok();
            }
        }
        if !group.is_empty() {
            process_group(&shared, group, taken, &jobs);
        }
        if let Some(Request::Compact {
            sessions,
            cutoff,
            reply,
        }) = compact
        {
            let _ = reply.send(crate::compact::compact_in_writer(
                &shared, &sessions, cutoff,
            ));
        }
        if shutdown.is_some() {
            break;
        }
    }
    // The sync threads answer every group handed to them, then see the channel closed.
    drop(jobs);
    for syncer in syncers {
        let _ = syncer.join();
    }
    let result = shared.store.sync().map_err(EngineError::from);
    if result.is_ok() {
        publish_head(shared.as_ref());
    }
    let result = match result {
        Ok(()) if shared.owns_store && matches!(shutdown, Some((_, true))) => {
            shared.store.close().map_err(EngineError::from)
        }
        other => other,
    };
    if let Some((reply, _)) = shutdown {
        let _ = reply.send(result);
    }
}

/// A committed group waiting for its sync: its callers with their answers, and the head its
/// commit left.
struct SyncJob {
    replies: Vec<Waiting>,
    head: Option<Position>,
    group: CommittedGroup,
}

/// A sync thread's loop: takes every committed group waiting, makes them durable with one
/// sync, publishes the head they reached, then answers their callers. Ends when the writer is
/// gone and no group waits.
///
/// The threads share one queue; the one holding its lock waits for the next group while the
/// others sync. A head published by any of them is durable: every group up to it was
/// committed before that thread's sync began.
fn run_syncer(shared: &Shared, jobs: &Mutex<std::sync::mpsc::Receiver<SyncJob>>) {
    loop {
        let (replies, groups, head) = {
            let jobs = jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let Ok(first) = jobs.recv() else {
                return;
            };
            let mut replies = Vec::new();
            let mut groups = Vec::new();
            let mut head = None;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                replies.extend(job.replies);
                groups.push(job.group);
                head = head.max(job.head);
                next = jobs.try_recv().ok();
            }
            (replies, groups, head)
        };
        let started = Instant::now();
        let result = shared.store.sync().map_err(EngineError::from);
        if let Err(error) = &result {
            // Fail-stop: what the disk holds after a failed sync is unknown, so nothing more
            // is acknowledged until the store is reopened.
            shared.fail(error.to_string());
        }
        shared.stats.synced(&groups, started, Instant::now());
        if result.is_ok() {
            if let Some(head) = head {
                publish(shared, head);
            }
        }
        answer(replies, &result);
        if result.is_ok() {
            // Off the callers' path. A failure leaves the work to the store's next commit,
            // which reports it.
            let _ = shared.store.after_sync();
        }
    }
}

/// A caller of a committed group with its answer, until the group is durable.
struct Waiting(Reply<Vec<IngestOutcome>>, Vec<IngestOutcome>);

/// Sends each caller its answer, or the error that kept its group from being durable.
fn answer(replies: Vec<Waiting>, result: &Result<(), EngineError>) {
    for Waiting(reply, outcomes) in replies {
        let _ = reply.send(result.clone().map(|()| outcomes));
    }
}

fn publish_head(shared: &Shared) {
    if let Ok(head) = shared.store.head() {
        publish(shared, head);
    }
}

/// Lets subscribers see the log up to `head`.
fn publish(shared: &Shared, head: Position) {
    shared.visible.send_if_modified(|visible| {
        let moved = head > *visible;
        if moved {
            *visible = head;
        }
        moved
    });
}

/// Decides, commits and hands on one group, which the writer took at `taken`.
fn process_group(
    shared: &Shared,
    group: Vec<Request>,
    taken: Instant,
    jobs: &std::sync::mpsc::Sender<SyncJob>,
) {
    let retries = if shared.store_is_shared {
        MAX_SHARED_CONFLICT_RETRIES
    } else {
        MAX_CONFLICT_RETRIES
    };
    if let Some(failure) = shared.failed() {
        return fail_group(group, &failure);
    }
    let events: usize = group
        .iter()
        .map(|request| match request {
            Request::Ingest { events, .. } => events.len(),
            Request::Shutdown { .. } | Request::Compact { .. } => 0,
        })
        .sum();
    let span = tracing::debug_span!(
        "commit_group",
        requests = group.len(),
        events,
        attempts = tracing::field::Empty,
        appended = tracing::field::Empty,
        streams = tracing::field::Empty,
        rejected = tracing::field::Empty,
        duplicates = tracing::field::Empty,
        quarantined = tracing::field::Empty,
        refused = tracing::field::Empty,
    );
    let _entered = span.enter();
    let mut attempt = 0;
    loop {
        attempt += 1;
        span.record("attempts", attempt);
        let read_ahead = match read_ahead(shared, &group) {
            Ok(read) => read,
            Err(error) => return fail_group(group, &error),
        };
        let mut plan = Plan::new(shared, read_ahead);
        let planned: Result<Vec<Vec<Planned>>, EngineError> = group
            .iter()
            .map(|request| match request {
                Request::Ingest { events, .. } => events
                    .iter()
                    .map(|event| plan.plan_event(event))
                    .collect::<Result<Vec<_>, _>>(),
                Request::Shutdown { .. } | Request::Compact { .. } => {
                    unreachable!("shutdown and compaction are never part of a group")
                }
            })
            .collect();
        let planned = match planned {
            Ok(planned) => planned,
            Err(error) => return fail_group(group, &error),
        };
        let commit = plan.finish();
        let appends = commit.appends.len();
        record_outcomes(&span, &planned, &commit);
        let streams: Vec<SessionId> = commit
            .appends
            .iter()
            .map(|append| append.stream.clone())
            .collect();
        let receipt = if commit.is_empty() {
            Ok(Vec::new())
        } else {
            shared.store.commit(commit).map(|receipt| receipt.appended)
        };
        match receipt {
            Ok(appended) if appended.len() != appends => {
                evict(shared, plan.sessions.keys());
                let error = StoreError::Internal(format!(
                    "the store placed {} events of a commit of {appends}",
                    appended.len()
                ));
                return fail_group(group, &EngineError::from(error));
            }
            Ok(appended) => {
                let placed = Receipted { streams, appended };
                return complete_group(shared, plan, group, planned, &placed, taken, jobs);
            }
            Err(error) if is_race(&error) && attempt < retries => {
                evict(shared, plan.sessions.keys());
                back_off(attempt, plan.now);
            }
            Err(error) => {
                evict(shared, plan.sessions.keys());
                return fail_group(group, &EngineError::from(error));
            }
        }
    }
}

/// Records a group's outcomes on its span, and logs each event that was not simply accepted
/// (debug level: ids and reasons, never payloads).
fn record_outcomes(span: &tracing::Span, planned: &[Vec<Planned>], commit: &Commit) {
    if span.is_disabled() {
        return;
    }
    let (mut rejected, mut duplicates, mut quarantined, mut refused) = (0, 0, 0, 0);
    for planned in planned.iter().flatten() {
        match planned {
            Planned::Stored {
                session,
                verdict,
                quarantined: in_quarantine,
                ..
            } => {
                if let Err(reason) = verdict {
                    rejected += 1;
                    tracing::debug!(session = %session, %reason, "event parked: its stream's fold rejects it");
                }
                if let Some(reason) = in_quarantine {
                    quarantined += 1;
                    tracing::debug!(entry = %session, %reason, "payload quarantined");
                }
            }
            Planned::DuplicateOfOp { session, .. } | Planned::Duplicate { session, .. } => {
                duplicates += 1;
                tracing::debug!(session = %session, "duplicate event: already stored");
            }
            Planned::Refused(error) => {
                refused += 1;
                tracing::debug!(%error, "event refused");
            }
        }
    }
    let streams: HashSet<&SessionId> = commit.appends.iter().map(|append| &append.stream).collect();
    span.record("appended", commit.appends.len());
    span.record("streams", streams.len());
    span.record("rejected", rejected);
    span.record("duplicates", duplicates);
    span.record("quarantined", quarantined);
    span.record("refused", refused);
}

/// On a shared store, reads every session the group's events name and every dedupe key they
/// carry in one [`EventStore::read_streams`] call (one round trip on PostgreSQL) instead of
/// several reads per session and one per event while planning. `None` on a store only this
/// process writes: the cache is the truth there.
fn read_ahead(shared: &Shared, group: &[Request]) -> Result<Option<StreamsRead>, EngineError> {
    if !shared.store_is_shared {
        return Ok(None);
    }
    let mut streams = Vec::new();
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for request in group {
        if let Request::Ingest { events, .. } = request {
            for event in events {
                if seen.insert(&event.session) {
                    streams.push(event.session.clone());
                }
                let key = event
                    .dedupe_key
                    .unwrap_or_else(|| default_dedupe_key(event));
                keys.push((event.session.clone(), key));
            }
        }
    }
    Ok(Some(shared.store.read_streams(&streams, &keys)?))
}

/// Whether a refused commit lost a race the writer wins by deciding again: another process
/// appended to one of its streams, or stored one of its dedupe keys, after the writer read it.
/// On a store only this process writes, neither happens unless a cached state was wrong, and
/// deciding again from the store is the cure too.
fn is_race(error: &CommitError) -> bool {
    matches!(
        error,
        CommitError::Conflict { .. }
            | CommitError::DuplicateKey { .. }
            | CommitError::CompactionConflict { .. }
    )
}

/// Where each append of a commit went, with its stream.
struct Receipted {
    streams: Vec<SessionId>,
    appended: Vec<Placed>,
}

impl Receipted {
    fn appended(&self, op: usize) -> Option<(Version, Position)> {
        let placed = self.appended.get(op)?;
        Some((placed.version, placed.position))
    }

    fn hit(&self, op: usize) -> Option<DedupeHit> {
        let (version, position) = self.appended(op)?;
        Some(DedupeHit {
            stream: self.streams.get(op)?.clone(),
            version,
            position,
        })
    }
}

/// Waits a little before planning again after a conflict, longer after each one and by an
/// amount that differs between nodes, so that two nodes racing for one session stop colliding.
fn back_off(attempt: usize, now: DateTime<Utc>) {
    if attempt < 2 {
        return;
    }
    let spread = u64::from(now.timestamp_subsec_nanos() % 1_000) + 1;
    let micros = spread * (attempt.min(10) as u64) * 2;
    std::thread::sleep(std::time::Duration::from_micros(micros));
}

pub(crate) fn evict<'s>(shared: &Shared, sessions: impl Iterator<Item = &'s SessionId>) {
    let mut cache = shared.cache();
    for session in sessions {
        cache.remove(session);
    }
}

fn fail_group(group: Vec<Request>, error: &EngineError) {
    for request in group {
        match request {
            Request::Ingest { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Request::Shutdown { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
            Request::Compact { reply, .. } => {
                let _ = reply.send(Err(error.clone()));
            }
        }
    }
}

/// Turns commit outcomes into answers and updates the cache; then answers at once
/// (`Durability::Buffered`) or hands the group to the sync thread.
fn complete_group(
    shared: &Shared,
    plan: Plan<'_>,
    group: Vec<Request>,
    planned: Vec<Vec<Planned>>,
    placed: &Receipted,
    taken: Instant,
    jobs: &std::sync::mpsc::Sender<SyncJob>,
) {
    let committed = CommittedGroup {
        committed_at: Instant::now(),
        requests: group.len() as u64,
    };
    let events = group
        .iter()
        .map(|request| match request {
            Request::Ingest { events, .. } => events.len() as u64,
            Request::Shutdown { .. } | Request::Compact { .. } => 0,
        })
        .sum();
    shared
        .stats
        .committed(committed.requests, events, taken, committed.committed_at);
    // Each caller's reply channel with its answer; the requests' events are dropped here, so
    // only the channels wait for the sync.
    let mut replies = Vec::with_capacity(planned.len());
    for (request, planned) in group.into_iter().zip(planned) {
        let Request::Ingest { reply, .. } = request else {
            unreachable!("shutdown is never part of a group")
        };
        let resolved = planned
            .into_iter()
            .map(|planned| resolve(planned, placed))
            .collect();
        replies.push(Waiting(reply, resolved));
    }

    {
        // Packed before the lock: readers wait on it.
        let packed: Vec<(SessionId, PackedState)> = plan
            .sessions
            .into_iter()
            .map(|(session, working)| (session, PackedState::pack(&working.state)))
            .collect();
        let mut cache = shared.cache();
        for (session, packed) in packed {
            // Another writer may have committed a later version of the stream meanwhile.
            cache.insert_unless_newer(session, packed);
        }
    }

    match shared.durability {
        Durability::Fsync => {
            // A store that numbers after commit publishes its head itself (its watcher wakes
            // the engine when the numbering moves): nothing to read here.
            let head = if shared.store.numbers_at_commit() {
                shared.store.head().ok()
            } else {
                None
            };
            shared.stats.writer_done(taken);
            if let Err(std::sync::mpsc::SendError(SyncJob { replies, .. })) = jobs.send(SyncJob {
                replies,
                head,
                group: committed,
            }) {
                // Every sync thread is gone (they panicked): nothing can be made durable.
                let error =
                    EngineError::from(StoreError::Internal("the sync thread has stopped".into()));
                answer(replies, &Err(error));
            }
        }
        Durability::Buffered => {
            if shared.store.numbers_at_commit() {
                publish_head(shared);
            }
            shared.stats.writer_done(taken);
            answer(replies, &Ok(()));
        }
    }
}

/// The answer to one planned event, once its commit is written. Every append of the commit
/// is in `placed` (its length was checked against the commit's).
fn resolve(planned: Planned, placed: &Receipted) -> IngestOutcome {
    const PLACED: &str = "the receipt's length was checked against the commit's";
    match planned {
        Planned::Stored {
            op,
            session,
            phase_before,
            phase_after,
            verdict,
            late,
            rejected,
            accounts,
            quarantined,
        } => {
            let (version, position) = placed.appended(op).expect(PLACED);
            match (quarantined, verdict) {
                (Some(reason), _) => IngestOutcome::Quarantined {
                    entry: session,
                    reason,
                    position,
                },
                (None, Ok(())) => IngestOutcome::Accepted {
                    session,
                    version,
                    position,
                    phase_before,
                    phase_after,
                    late,
                    rejected,
                    accounts: accounts
                        .into_iter()
                        .map(|account| follow(account, placed))
                        .collect(),
                },
                (None, Err(reason)) => IngestOutcome::Rejected {
                    session,
                    version,
                    position,
                    reason,
                    late,
                    rejected,
                },
            }
        }
        Planned::DuplicateOfOp { op, session } => IngestOutcome::Duplicate {
            session,
            original: placed.hit(op).expect(PLACED),
        },
        Planned::Duplicate { session, original } => IngestOutcome::Duplicate { session, original },
        Planned::Refused(error) => IngestOutcome::Refused { error },
    }
}

/// What a session event did to its linked account, with where the account's event went.
fn follow(account: PlannedAccount, placed: &Receipted) -> AccountFollow {
    const PLACED: &str = "the receipt's length was checked against the commit's";
    match account {
        PlannedAccount::Linked { op, stream } => {
            let (version, position) = placed.appended(op).expect(PLACED);
            AccountFollow::Linked {
                stream,
                version,
                position,
            }
        }
        PlannedAccount::Withdrawn { op, stream } => {
            let (version, position) = placed.appended(op).expect(PLACED);
            AccountFollow::Withdrawn {
                stream,
                version,
                position,
            }
        }
        PlannedAccount::NotLinked(reason) => AccountFollow::NotLinked { reason },
    }
}
