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
    record::check_event_size, Append as NewAppend, Commit, DedupeHit, EventStore, NewEvent, Placed,
    Snapshot, StoreError, StreamsRead,
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
use crate::ingest::{default_dedupe_key, AccountFollow, IncomingEvent, IngestOutcome};
use crate::query::{load_state, read_bodies, state_from_read};
use crate::stats::{CommittedGroup, WriteCounters};

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
    pub cache: Mutex<SessionCache>,
    /// The last position subscribers may see: durable under `Fsync`, committed under `Buffered`.
    pub visible: watch::Sender<Position>,
    pub durability: Durability,
    pub max_batch_events: usize,
    pub max_events_per_stream: u32,
    pub inactivity_timeout: chrono::Duration,
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
    Shutdown {
        reply: Reply<()>,
    },
}

impl Request {
    fn event_count(&self) -> usize {
        match self {
            Request::Ingest { events, .. } => events.len(),
            Request::Shutdown { .. } => 1,
        }
    }

    fn sent(&self) -> Option<Instant> {
        match self {
            Request::Ingest { sent, .. } => Some(*sent),
            Request::Shutdown { .. } => None,
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
                let error = EngineError::from(StoreError::Backend(format!(
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
        while let Some(request) = next.take() {
            if let Request::Shutdown { reply } = request {
                shutdown = Some(reply);
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
        Ok(()) if shared.owns_store && shutdown.is_some() => {
            shared.store.close().map_err(EngineError::from)
        }
        other => other,
    };
    if let Some(reply) = shutdown {
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

/// An event's fate, before the commit fills in versions and positions.
enum Planned {
    /// Appended to its stream by op `op`.
    Stored {
        op: usize,
        session: SessionId,
        phase_before: Option<Phase>,
        phase_after: Option<Phase>,
        /// Accepted, or rejected with why, as the stream's fold stands with it.
        verdict: Result<(), String>,
        late: bool,
        /// The stream's rejected events with it.
        rejected: u32,
        accounts: Vec<PlannedAccount>,
        /// Why the payload is in quarantine, when the event is a quarantine entry's payload.
        quarantined: Option<String>,
    },
    /// The same dedupe key came earlier in this group.
    DuplicateOfOp {
        op: usize,
        session: SessionId,
    },
    Duplicate {
        session: SessionId,
        original: DedupeHit,
    },
    Refused(EventError),
}

/// What a session event did to its linked account, before the commit says where it went.
enum PlannedAccount {
    Linked { op: usize, stream: SessionId },
    Withdrawn { op: usize, stream: SessionId },
    NotLinked(String),
}

/// Whether a session's fold links an account.
#[derive(Debug, Clone, PartialEq)]
enum Link {
    /// It has no accepted success (or is not a session).
    None,
    /// It succeeded but cannot link one, for the reason given.
    Missing(&'static str),
    /// It links this account, with its success's time and link type.
    Account {
        key: AccountKey,
        at: Option<DateTime<Utc>>,
        link_type: Option<LinkType>,
    },
}

impl Link {
    /// The link of a session's fold: an accepted success with a known user and institution.
    fn of(state: &SessionState) -> Link {
        let Some(session) = state.folded.as_session() else {
            return Link::None;
        };
        if session.phase() != Phase::Succeeded {
            return Link::None;
        }
        let Some(user) = session.external_user_id() else {
            return Link::Missing("the session names no external user id");
        };
        let Some(institution) = session.institution() else {
            return Link::Missing("the session names no institution");
        };
        Link::Account {
            key: AccountKey {
                provider: state.provider,
                external_user_id: user.to_owned(),
                institution_id: institution.id.clone(),
            },
            at: session.journey().entered_at[usize::from(Phase::Succeeded.rank())],
            link_type: session.link_type(),
        }
    }

    fn key(&self) -> Option<&AccountKey> {
        match self {
            Link::Account { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A stream being changed by this group: a copy of its state and whether its snapshot must be
/// rewritten, with what a re-fold of it needs.
struct Working {
    state: SessionState,
    dirty: bool,
    /// The stream had no event when the group began, so the store holds no dedupe entry for
    /// it: only this group's own keys can match (`Plan::keys`).
    fresh: bool,
    /// Its version when the group began.
    start: Version,
    /// The bodies of its events stored before the group, loaded by its first re-fold.
    stored: Option<Vec<EventBody>>,
    /// This group's appends to it (indexes in `Plan::commit.appends`), in order.
    appended: Vec<usize>,
}

/// One group's plan: the operations to commit and the copies of the states they lead to.
struct Plan<'a> {
    shared: &'a Shared,
    now: DateTime<Utc>,
    sessions: HashMap<SessionId, Working>,
    /// What the group writes, as decided so far.
    commit: Commit,
    /// Dedupe keys appended in this group, and the append that did it.
    keys: HashMap<DedupeKey, usize>,
    /// On a shared store: the group's sessions and dedupe keys, read in one go before planning.
    read_ahead: Option<StreamsRead>,
}

impl<'a> Plan<'a> {
    fn new(shared: &'a Shared, read_ahead: Option<StreamsRead>) -> Self {
        Plan {
            shared,
            now: Utc::now(),
            sessions: HashMap::new(),
            commit: Commit::default(),
            keys: HashMap::new(),
            read_ahead,
        }
    }

    /// Where a dedupe key's first delivery went: from the read-ahead when it asked about the
    /// key, else from the store.
    fn find_dedupe(
        &self,
        session: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, EngineError> {
        if let Some(known) = self
            .read_ahead
            .as_ref()
            .and_then(|read| read.dedupe(session, key))
        {
            return Ok(known.cloned());
        }
        Ok(self.shared.store.find_dedupe(session, key)?)
    }

    /// Adds an append to the commit; returns its index there.
    fn push(&mut self, append: NewAppend) -> usize {
        let index = self.commit.appends.len();
        self.keys.insert(append.event.dedupe_key, index);
        self.commit.appends.push(append);
        index
    }

    /// The working copy of a session, loaded from the cache or the store on first use.
    fn working(
        &mut self,
        session: &SessionId,
        provider: Provider,
        body: &EventBody,
    ) -> Result<&mut Working, EngineError> {
        if !self.sessions.contains_key(session) {
            // On a store other processes write, a remembered state may be stale: re-read it.
            // The commit's expected versions (and its snapshot's) make it fail if the stream
            // changes before it lands.
            let shared_store = self.shared.store.is_shared();
            let cached = if shared_store {
                None
            } else {
                self.shared.cache().get(session)
            };
            let read = self
                .read_ahead
                .as_mut()
                .and_then(|read| read.streams.remove(session));
            let loaded = match (cached, read) {
                (Some(state), _) => Some(state),
                (None, Some(read)) => state_from_read(self.shared.store.as_ref(), session, read)?,
                (None, None) => load_state(self.shared.store.as_ref(), session)?,
            };
            let state = loaded.unwrap_or_else(|| SessionState {
                provider,
                folded: Folded::initial_for(body),
            });
            let start = state.folded.version();
            self.sessions.insert(
                session.clone(),
                Working {
                    state,
                    dirty: false,
                    fresh: start == Version::EMPTY,
                    start,
                    stored: None,
                    appended: Vec::new(),
                },
            );
        }
        Ok(self
            .sessions
            .get_mut(session)
            .expect("the session was inserted just above"))
    }

    /// Plans one event. A stream whose stored data cannot be read (a damaged record or head, a
    /// log that no longer folds) refuses only its own events: the rest of the group commits.
    fn plan_event(&mut self, incoming: &IncomingEvent) -> Result<Planned, EngineError> {
        match self.plan_event_in_stream(incoming) {
            Err(error) if error.is_damage() => Ok(Planned::Refused(EventError::StreamUnreadable {
                session: incoming.session.clone(),
                reason: error.to_string(),
            })),
            planned => planned,
        }
    }

    fn plan_event_in_stream(&mut self, incoming: &IncomingEvent) -> Result<Planned, EngineError> {
        let session = &incoming.session;
        let key = incoming
            .dedupe_key
            .unwrap_or_else(|| default_dedupe_key(incoming));
        if let Some(&op) = self.keys.get(&key) {
            return Ok(Planned::DuplicateOfOp {
                op,
                session: session.clone(),
            });
        }
        // Load the session before the dedupe check. On a shared store this also guards it:
        // another node storing this key after the check then moves the version the commit
        // expects. A stream that was empty when the group began has no stored dedupe entry,
        // so its events skip the store lookup (most events of new sessions in a batch).
        let fresh = self
            .working(session, incoming.provider, &incoming.body)?
            .fresh;
        if !fresh {
            if let Some(original) = self.find_dedupe(session, &key)? {
                return Ok(Planned::Duplicate {
                    session: session.clone(),
                    original,
                });
            }
        }
        let new = NewEvent {
            event_id: incoming.event_id.unwrap_or_else(Uuid::now_v7),
            dedupe_key: key,
            provider: incoming.provider,
            body: incoming.body.clone(),
            raw_name: incoming.raw_name.clone(),
            raw: incoming.raw.clone(),
            received_at: incoming.received_at.unwrap_or(self.now),
        };
        if let Err(StoreError::TooLarge { bytes, limit, .. }) = check_event_size(session, &new) {
            return Ok(Planned::Refused(EventError::TooLarge {
                session: session.clone(),
                bytes,
                limit,
            }));
        }
        let limit = self.shared.max_events_per_stream;
        let working = self.working(session, incoming.provider, &new.body)?;
        if working.state.provider != incoming.provider {
            return Ok(Planned::Refused(EventError::ProviderMismatch {
                session: session.clone(),
                stored: working.state.provider,
                incoming: incoming.provider,
            }));
        }
        let folded = &mut working.state.folded;
        if !folded.holds(&new.body) {
            return Ok(Planned::Refused(EventError::StreamKindMismatch {
                session: session.clone(),
                stream: folded.kind_name(),
                event: new.body.name(),
            }));
        }
        let before = folded.version();
        if folded.is_timeline() && before.0 >= u64::from(limit) {
            return Ok(Planned::Refused(EventError::StreamFull {
                session: session.clone(),
                limit,
            }));
        }
        let phase_before = folded.as_session().map(|state| state.phase());
        let link_before = Link::of(&working.state);
        let (verdict, late) = match working.state.folded.append(&new.body) {
            Ok(Append::Accepted(_)) => (Ok(()), false),
            Ok(Append::Rejected(reason)) => (Err(reason), false),
            Ok(Append::Refold) => self.refold(session, &new.body)?,
            Err(reason) => {
                return Ok(Planned::Refused(EventError::QuarantineRule {
                    session: session.clone(),
                    reason,
                }))
            }
        };
        let quarantined = match &new.body {
            EventBody::Quarantined(entry) => Some(entry.reason.clone()),
            _ => None,
        };
        let received_at = new.received_at;
        let op = self.push(NewAppend {
            stream: session.clone(),
            expected: before,
            stored_at: self.now,
            rejected: verdict.is_err(),
            event: new,
        });
        let working = self
            .sessions
            .get_mut(session)
            .expect("the session is being planned");
        working.dirty = true;
        working.appended.push(op);
        let phase_after = working.state.folded.as_session().map(|state| state.phase());
        let rejected = working.state.folded.rejected();
        let link_after = Link::of(&working.state);
        let provider = working.state.provider;
        let version = before.next();
        let accounts = self.follow(
            session,
            provider,
            &version.0.to_be_bytes(),
            received_at,
            link_before,
            link_after,
        )?;
        Ok(Planned::Stored {
            op,
            session: session.clone(),
            phase_before,
            phase_after,
            verdict,
            late,
            rejected,
            accounts,
            quarantined,
        })
    }

    /// Folds `session` again with its new arrival `body`, which does not sort last: every
    /// event it stored before this group, this group's, then `body`. Returns the new arrival's
    /// verdict and whether it is late.
    fn refold(
        &mut self,
        session: &SessionId,
        body: &EventBody,
    ) -> Result<(Result<(), String>, bool), EngineError> {
        let store = Arc::clone(&self.shared.store);
        let working = self
            .sessions
            .get_mut(session)
            .expect("refold is called for a working session");
        if working.stored.is_none() {
            working.stored = Some(read_bodies(store.as_ref(), session, working.start)?);
        }
        let working = &self.sessions[session];
        let mut bodies: Vec<&EventBody> = working
            .stored
            .as_ref()
            .expect("loaded just above")
            .iter()
            .collect();
        for &op in &working.appended {
            bodies.push(&self.commit.appends[op].event.body);
        }
        bodies.push(body);
        let arrival = bodies.len() as u64;
        let stream = Folded::fold_all(&bodies)
            .map_err(|(version, reason)| EngineError::Replay {
                session: session.clone(),
                version: Version(version),
                reason,
            })?
            .expect("the stream holds at least the new event");
        let placed = stream
            .placements
            .iter()
            .find(|placed| placed.arrival == arrival)
            .expect("every event of a fold is placed");
        let verdict = placed.verdict.clone().map(|_| ());
        let late = placed.late;
        self.sessions
            .get_mut(session)
            .expect("refold is called for a working session")
            .state
            .folded = stream.folded;
        Ok((verdict, late))
    }

    /// Makes the session's linked account follow its fold: an account it no longer links gets
    /// a `link_withdrawn` event, one it now links a `linked` event. Their dedupe keys derive
    /// from the session and `cause` (the arrival that changed the fold, or the rules a pass
    /// re-folded it with), so a replanned group writes them once.
    fn follow(
        &mut self,
        session: &SessionId,
        provider: Provider,
        cause: &[u8],
        received_at: DateTime<Utc>,
        before: Link,
        after: Link,
    ) -> Result<Vec<PlannedAccount>, EngineError> {
        let mut accounts = Vec::new();
        if before == after {
            return Ok(accounts);
        }
        let arrival = cause;
        if let Link::Account { key, at, .. } = &before {
            if after.key() != Some(key) {
                let mut event = AccountEvent::new(AccountEventKind::LinkWithdrawn);
                event.occurred_at = *at;
                // A key without a stream id was never linked.
                if let Ok(stream) = account_stream(key) {
                    let derived = IncomingEvent {
                        session: stream,
                        provider,
                        body: EventBody::Account {
                            account: key.clone(),
                            event,
                        },
                        raw_name: Some(format!("link withdrawn by session {session}")),
                        raw: None,
                        event_id: None,
                        dedupe_key: Some(DedupeKey::derive(&[
                            b"link_withdrawn",
                            session.as_str().as_bytes(),
                            arrival,
                        ])),
                        received_at: Some(received_at),
                    };
                    accounts.extend(self.plan_account(&derived, false)?);
                }
            }
        }
        match after {
            Link::Account { key, at, link_type } if before.key() != Some(&key) => {
                let mut event = AccountEvent::new(AccountEventKind::Linked);
                event.occurred_at = at;
                event.link_type = link_type;
                let stream = match account_stream(&key) {
                    Ok(stream) => stream,
                    Err(reason) => {
                        accounts.push(PlannedAccount::NotLinked(reason));
                        return Ok(accounts);
                    }
                };
                let derived = IncomingEvent {
                    session: stream,
                    provider,
                    body: EventBody::Account {
                        account: key.clone(),
                        event,
                    },
                    raw_name: Some(format!("linked by session {session}")),
                    raw: None,
                    event_id: None,
                    dedupe_key: Some(DedupeKey::derive(&[
                        b"linked",
                        session.as_str().as_bytes(),
                        arrival,
                    ])),
                    received_at: Some(received_at),
                };
                accounts.extend(self.plan_account(&derived, true)?);
            }
            Link::Missing(reason) if !matches!(before, Link::Missing(_)) => {
                accounts.push(PlannedAccount::NotLinked(reason.to_owned()));
            }
            _ => {}
        }
        Ok(accounts)
    }

    /// Plans an account event a session caused.
    fn plan_account(
        &mut self,
        derived: &IncomingEvent,
        link: bool,
    ) -> Result<Option<PlannedAccount>, EngineError> {
        let stream = derived.session.clone();
        Ok(match self.plan_event(derived)? {
            Planned::Stored { op, .. } if link => Some(PlannedAccount::Linked { op, stream }),
            Planned::Stored { op, .. } => Some(PlannedAccount::Withdrawn { op, stream }),
            Planned::Refused(error) if link => Some(PlannedAccount::NotLinked(format!(
                "the account stream `{stream}` refused the link: {error}"
            ))),
            Planned::Refused(_) | Planned::Duplicate { .. } | Planned::DuplicateOfOp { .. } => None,
        })
    }

    /// Folds `stream`, whose snapshot `old` was folded with other rules, again with this
    /// build's, and makes its linked account follow the difference.
    fn plan_refold(
        &mut self,
        stream: &SessionId,
        old: &Snapshot,
    ) -> Result<Vec<PlannedAccount>, EngineError> {
        if let Some(working) = self.sessions.get_mut(stream) {
            // Loaded already (an account a session of this batch links): folded with this
            // build's rules, its snapshot only needs writing.
            working.dirty = true;
            return Ok(Vec::new());
        }
        // The snapshot is of other rules, so the state is folded from the log.
        let Some(state) = load_state(self.shared.store.as_ref(), stream)? else {
            return Ok(Vec::new());
        };
        let before = decode_state_any_rules(&old.state).map(|folded| SessionState {
            provider: old.provider,
            folded,
        });
        let link_before = before.as_ref().map_or(Link::None, Link::of);
        let link_after = Link::of(&state);
        let provider = state.provider;
        // Its snapshot, of this version, guards the decision on a shared store.
        let start = state.folded.version();
        self.sessions.insert(
            stream.clone(),
            Working {
                state,
                dirty: true,
                fresh: start == Version::EMPTY,
                start,
                stored: None,
                appended: Vec::new(),
            },
        );
        let mut cause = b"rules".to_vec();
        cause.extend_from_slice(&RULES_VERSION.to_be_bytes());
        let now = self.now;
        self.follow(stream, provider, &cause, now, link_before, link_after)
    }

    /// Adds a snapshot of every session this group changed; returns the commit.
    fn finish(&mut self) -> Commit {
        for (session, working) in &self.sessions {
            if working.dirty {
                let state = encode_snapshot_state(&working.state.folded);
                self.commit.snapshots.push((
                    session.clone(),
                    Snapshot {
                        provider: working.state.provider,
                        version: working.state.folded.version(),
                        state,
                    },
                ));
            }
        }
        std::mem::take(&mut self.commit)
    }
}

/// An account's stream id, or why the account cannot have one (a user and institution id
/// too long together for a stream id).
fn account_stream(key: &AccountKey) -> Result<SessionId, String> {
    key.stream_id().map_err(|error| {
        format!(
            "the account of user `{}` at `{}` has no valid stream id: {error}",
            key.external_user_id, key.institution_id
        )
    })
}

/// Snapshots of other rules collected per walk of the snapshots (bounds the pass's memory).
const REFOLD_SCAN: usize = 65_536;

/// Streams folded again per commit of the pass.
const REFOLD_BATCH: usize = 512;

/// What the pass over snapshots folded with other rules did when the engine opened
/// ([`crate::Engine::refolded_at_open`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefoldReport {
    /// Whether the pass ran: the store did not record that its snapshots were folded with this
    /// build's rules ([`linkflow_core::RULES_VERSION`]).
    pub ran: bool,
    /// Streams folded again (their snapshots were folded with other rules).
    pub streams: u64,
    /// Accounts linked because a session's new fold accepts its success.
    pub linked: u64,
    /// Links withdrawn because a session's new fold no longer does (or names another account).
    pub withdrawn: u64,
}

/// Folds again every stream whose snapshot was folded with other rules, before the engine
/// takes its first request, and makes linked accounts follow: the rules of this build decide
/// every session, with no manual redrive. The store's marker ([`EventStore::folded_with`])
/// says when there is nothing to do, so an open of a store at these rules walks nothing.
pub(crate) fn refold_stale(shared: &Shared) -> Result<RefoldReport, EngineError> {
    let mut report = RefoldReport::default();
    if shared.store.folded_with()? == Some(RULES_VERSION) {
        return Ok(report);
    }
    report.ran = true;
    loop {
        let mut stale = Vec::new();
        shared.store.for_each_snapshot(&mut |stream, snapshot| {
            if matches!(
                read_snapshot_state(&snapshot.state),
                SnapshotState::OtherRules(_)
            ) {
                stale.push((stream, snapshot));
            }
            if stale.len() == REFOLD_SCAN {
                std::ops::ControlFlow::Break(())
            } else {
                std::ops::ControlFlow::Continue(())
            }
        })?;
        let more = stale.len() == REFOLD_SCAN;
        for chunk in stale.chunks(REFOLD_BATCH) {
            refold_chunk(shared, chunk, &mut report)?;
        }
        if !more {
            break;
        }
    }
    if report.streams > 0 {
        // The new snapshots and account events are durable before the marker says so.
        shared.store.sync()?;
    }
    shared.store.set_folded_with(RULES_VERSION)?;
    Ok(report)
}

/// Folds a chunk of streams again in one commit (planned again after a conflict on a shared
/// store).
fn refold_chunk(
    shared: &Shared,
    chunk: &[(SessionId, Snapshot)],
    report: &mut RefoldReport,
) -> Result<(), EngineError> {
    let retries = if shared.store.is_shared() {
        MAX_SHARED_CONFLICT_RETRIES
    } else {
        MAX_CONFLICT_RETRIES
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut plan = Plan::new(shared, None);
        let mut accounts = Vec::new();
        for (stream, snapshot) in chunk {
            accounts.extend(plan.plan_refold(stream, snapshot)?);
        }
        let commit = plan.finish();
        let result = if commit.is_empty() {
            Ok(())
        } else {
            shared.store.commit(commit).map(drop)
        };
        evict(shared, plan.sessions.keys());
        match result {
            Ok(()) => {
                for account in accounts {
                    match account {
                        PlannedAccount::Linked { .. } => report.linked += 1,
                        PlannedAccount::Withdrawn { .. } => report.withdrawn += 1,
                        PlannedAccount::NotLinked(_) => {}
                    }
                }
                report.streams += chunk.len() as u64;
                return Ok(());
            }
            Err(error) if is_race(&error) && attempt < retries => back_off(attempt, plan.now),
            Err(error) => return Err(error.into()),
        }
    }
}

/// Decides, commits and hands on one group, which the writer took at `taken`.
fn process_group(
    shared: &Shared,
    group: Vec<Request>,
    taken: Instant,
    jobs: &std::sync::mpsc::Sender<SyncJob>,
) {
    let retries = if shared.store.is_shared() {
        MAX_SHARED_CONFLICT_RETRIES
    } else {
        MAX_CONFLICT_RETRIES
    };
    if let Some(failure) = shared.failed() {
        return fail_group(group, &failure);
    }
    let mut attempt = 0;
    loop {
        attempt += 1;
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
                Request::Shutdown { .. } => unreachable!("shutdown is never part of a group"),
            })
            .collect();
        let planned = match planned {
            Ok(planned) => planned,
            Err(error) => return fail_group(group, &error),
        };
        let commit = plan.finish();
        let appends = commit.appends.len();
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
                let error = StoreError::Backend(format!(
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

/// On a shared store, reads every session the group's events name and every dedupe key they
/// carry in one [`EventStore::read_streams`] call (one round trip on PostgreSQL) instead of
/// several reads per session and one per event while planning. `None` on a store only this
/// process writes: the cache is the truth there.
fn read_ahead(shared: &Shared, group: &[Request]) -> Result<Option<StreamsRead>, EngineError> {
    if !shared.store.is_shared() {
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
fn is_race(error: &StoreError) -> bool {
    matches!(
        error,
        StoreError::Conflict { .. } | StoreError::DuplicateKey { .. }
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

fn evict<'s>(shared: &Shared, sessions: impl Iterator<Item = &'s SessionId>) {
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
            Request::Shutdown { reply } => {
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
            Request::Shutdown { .. } => 0,
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
            cache.insert(session, packed);
        }
    }

    match shared.durability {
        Durability::Fsync => {
            let head = shared.store.head().ok();
            shared.stats.writer_done(taken);
            if let Err(std::sync::mpsc::SendError(SyncJob { replies, .. })) = jobs.send(SyncJob {
                replies,
                head,
                group: committed,
            }) {
                // Every sync thread is gone (they panicked): nothing can be made durable.
                let error =
                    EngineError::from(StoreError::Backend("the sync thread has stopped".into()));
                answer(replies, &Err(error));
            }
        }
        Durability::Buffered => {
            publish_head(shared);
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
