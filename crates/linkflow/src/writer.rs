//! The write path: one writer thread takes every waiting request, decides each event against
//! its session's state, writes the whole group in one atomic commit, makes it durable with one
//! fsync, then answers every caller (group commit).
//!
//! Per-session order is arrival order: requests are taken from one queue in the order they
//! were sent, and each event is decided against the state left by the events before it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use chrono::{DateTime, Utc};
use linkflow_core::{
    AccountEvent, AccountEventKind, AccountKey, DedupeKey, EventBody, Phase, Position, Provider,
    SessionId, Version,
};
use linkflow_store::{
    record::check_event_size, DedupeHit, EventStore, ExpectedVersion, NewEvent, Op, OpOutcome,
    ParkedEvent, Snapshot, StoreError, StreamsRead,
};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::cache::{PackedState, SessionCache, SessionState};
use crate::config::Durability;
use crate::error::{EngineError, EventError};
use crate::folded::{encode_snapshot_state, Change, Folded};
use crate::ingest::{default_dedupe_key, IncomingEvent, IngestOutcome, Redriven};
use crate::query::{load_state, state_from_read};
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
    pub cache: Mutex<SessionCache>,
    /// The last position subscribers may see: durable under `Fsync`, committed under `Buffered`.
    pub visible: watch::Sender<Position>,
    pub durability: Durability,
    pub max_batch_events: usize,
    pub max_parked_per_session: u32,
    pub inactivity_timeout: chrono::Duration,
    /// Where the write path's time goes (`Engine::write_stats`).
    pub stats: WriteCounters,
}

impl Shared {
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
    Redrive {
        session: Option<SessionId>,
        reply: Reply<Vec<Redriven>>,
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
            Request::Redrive { .. } | Request::Shutdown { .. } => 1,
        }
    }

    fn sent(&self) -> Option<Instant> {
        match self {
            Request::Ingest { sent, .. } | Request::Redrive { sent, .. } => Some(*sent),
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
enum Waiting {
    Ingest(Reply<Vec<IngestOutcome>>, Vec<IngestOutcome>),
    Redrive(Reply<Vec<Redriven>>, Vec<Redriven>),
}

/// Sends each caller its answer, or the error that kept its group from being durable.
fn answer(replies: Vec<Waiting>, result: &Result<(), EngineError>) {
    for waiting in replies {
        match waiting {
            Waiting::Ingest(reply, outcomes) => {
                let _ = reply.send(result.clone().map(|()| outcomes));
            }
            Waiting::Redrive(reply, redriven) => {
                let _ = reply.send(result.clone().map(|()| redriven));
            }
        }
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

/// A parked event a retry accepted, before its commit says where it went.
struct PlannedRedrive {
    op: usize,
    session: SessionId,
    event_id: Uuid,
    phase_after: Option<Phase>,
}

/// An event's fate, before the commit fills in versions and positions.
enum Planned {
    Append {
        op: usize,
        session: SessionId,
        phase_before: Option<Phase>,
        phase_after: Option<Phase>,
        redriven: Vec<PlannedRedrive>,
        linked: Option<PlannedRedrive>,
        /// Why the payload is in quarantine, when the event is a quarantine entry's payload.
        quarantined: Option<String>,
    },
    Park {
        op: usize,
        session: SessionId,
        event_id: Uuid,
        reason: String,
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

enum PlannedRequest {
    Ingest(Vec<Planned>),
    Redrive(Vec<PlannedRedrive>),
}

/// A session being changed by this group: a copy of its state, its parked events once needed,
/// and whether its snapshot must be rewritten.
struct Working {
    state: SessionState,
    parked: Option<Vec<ParkedEvent>>,
    dirty: bool,
    /// The stream had no event and no parked event when the group began, so the store holds
    /// no dedupe entry for it: only this group's own keys can match (`Plan::keys`).
    fresh: bool,
}

/// One group's plan: the operations to commit and the copies of the states they lead to.
struct Plan<'a> {
    shared: &'a Shared,
    now: DateTime<Utc>,
    sessions: HashMap<SessionId, Working>,
    ops: Vec<Op>,
    /// Session and event id of every op, to describe duplicates of it.
    op_events: Vec<(SessionId, Uuid)>,
    /// Dedupe keys appended or parked in this group, and the op that did it.
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
            ops: Vec::new(),
            op_events: Vec::new(),
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

    fn push(&mut self, op: Op, session: &SessionId, event_id: Uuid, key: DedupeKey) -> usize {
        let index = self.ops.len();
        self.ops.push(op);
        self.op_events.push((session.clone(), event_id));
        self.keys.insert(key, index);
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
            // On a store other processes write, a remembered state may be stale: re-read it,
            // and make the commit fail if the stream changes before it lands.
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
            let (loaded, parked_list) = match (cached, read) {
                (Some(state), _) => (Some(state), None),
                (None, Some(read)) => {
                    let (state, parked) =
                        state_from_read(self.shared.store.as_ref(), session, read)?;
                    (state, Some(parked))
                }
                (None, None) => (load_state(self.shared.store.as_ref(), session)?, None),
            };
            let state = loaded.unwrap_or_else(|| SessionState {
                provider,
                folded: Folded::initial_for(body),
                parked: 0,
            });
            if shared_store {
                self.ops.push(Op::Expect {
                    stream: session.clone(),
                    version: state.folded.version(),
                    parked: state.parked as usize,
                });
                self.op_events.push((session.clone(), Uuid::nil()));
            }
            let fresh = state.folded.version() == Version::EMPTY && state.parked == 0;
            self.sessions.insert(
                session.clone(),
                Working {
                    state,
                    parked: parked_list,
                    dirty: false,
                    fresh,
                },
            );
        }
        Ok(self
            .sessions
            .get_mut(session)
            .expect("the session was inserted just above"))
    }

    fn load_parked(&mut self, session: &SessionId) -> Result<(), EngineError> {
        let store = Arc::clone(&self.shared.store);
        let working = self
            .sessions
            .get_mut(session)
            .expect("load_parked is called for a working session");
        if working.parked.is_none() {
            working.parked = Some(store.parked(Some(session))?);
        }
        Ok(())
    }

    fn plan_event(&mut self, incoming: &IncomingEvent) -> Result<Planned, EngineError> {
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
        let max_parked = self.shared.max_parked_per_session;
        let working = self.working(session, incoming.provider, &new.body)?;
        if working.state.provider != incoming.provider {
            return Ok(Planned::Refused(EventError::ProviderMismatch {
                session: session.clone(),
                stored: working.state.provider,
                incoming: incoming.provider,
            }));
        }
        if working.state.folded.check(&new.body) == Ok(false) {
            return Ok(Planned::Refused(EventError::StreamKindMismatch {
                session: session.clone(),
                stream: working.state.folded.kind_name(),
                event: new.body.name(),
            }));
        }
        let before = working.state.folded.version();
        match working.state.folded.apply_in_place(&new.body) {
            Ok(change) => {
                working.dirty = true;
                let link = self.link_for(session, &new, change);
                let event_id = new.event_id;
                let quarantined = match &new.body {
                    EventBody::Quarantined(entry) => Some(entry.reason.clone()),
                    _ => None,
                };
                let op = self.push(
                    Op::Append {
                        stream: session.clone(),
                        expected: ExpectedVersion::Exact(before),
                        accepted_at: new.received_at,
                        event: new,
                        from_parked: false,
                    },
                    session,
                    event_id,
                    key,
                );
                let redriven = self.retry_parked(session)?;
                let linked = match link {
                    Some((stream, event)) => self.plan_link(stream, event)?,
                    None => None,
                };
                Ok(Planned::Append {
                    op,
                    session: session.clone(),
                    phase_before: change.phase_before(),
                    phase_after: change.phase_after(),
                    redriven,
                    linked,
                    quarantined,
                })
            }
            Err(reason) => {
                if working.state.parked >= max_parked {
                    return Ok(Planned::Refused(EventError::ParkedLimit {
                        session: session.clone(),
                        limit: max_parked,
                        reason,
                    }));
                }
                working.state.parked += 1;
                self.load_parked(session)?;
                let parked = ParkedEvent {
                    stream: session.clone(),
                    reason: reason.clone(),
                    parked_at: self.now,
                    data: new,
                };
                let event_id = parked.data.event_id;
                self.sessions
                    .get_mut(session)
                    .and_then(|working| working.parked.as_mut())
                    .expect("the parked list was loaded just above")
                    .push(parked.clone());
                let op = self.push(Op::Park(parked), session, event_id, key);
                Ok(Planned::Park {
                    op,
                    session: session.clone(),
                    event_id,
                    reason,
                })
            }
        }
    }

    /// The account `linked` event a session event causes: when the session has just succeeded
    /// and knows its user and institution. Its dedupe key derives from the success's, so a
    /// redelivered success links once.
    fn link_for(
        &self,
        session: &SessionId,
        success: &NewEvent,
        change: Change,
    ) -> Option<(SessionId, NewEvent)> {
        let applied = change.session?;
        if applied.phase_after != Phase::Succeeded || applied.phase_before == Phase::Succeeded {
            return None;
        }
        let state = self.sessions.get(session)?.state.folded.as_session()?;
        let key = AccountKey {
            provider: success.provider,
            external_user_id: state.external_user_id()?.to_owned(),
            institution_id: state.institution()?.id.clone(),
        };
        let stream = key.stream_id().ok()?;
        let mut event = AccountEvent::new(AccountEventKind::Linked);
        event.occurred_at = success.body.occurred_at();
        event.link_type = state.link_type();
        Some((
            stream,
            NewEvent {
                event_id: Uuid::now_v7(),
                dedupe_key: DedupeKey::derive(&[b"linked", success.dedupe_key.as_bytes()]),
                provider: success.provider,
                body: EventBody::Account {
                    account: key,
                    event,
                },
                raw_name: Some(format!("linked by session {session}")),
                raw: None,
                received_at: success.received_at,
            },
        ))
    }

    /// Appends a `linked` event to its account's stream and retries the account's parked
    /// events (operations that arrived before the account existed).
    fn plan_link(
        &mut self,
        stream: SessionId,
        event: NewEvent,
    ) -> Result<Option<PlannedRedrive>, EngineError> {
        let key = event.dedupe_key;
        if self.keys.contains_key(&key) {
            return Ok(None);
        }
        // Loaded (and guarded) before the dedupe check, as in `plan_event`.
        self.working(&stream, event.provider, &event.body)?;
        if self.find_dedupe(&stream, &key)?.is_some() {
            return Ok(None);
        }
        let working = self.working(&stream, event.provider, &event.body)?;
        if working.state.folded.check(&event.body) != Ok(true) {
            // The id is taken by a stream of another kind: no account for it.
            return Ok(None);
        }
        let before = working.state.folded.version();
        working
            .state
            .folded
            .apply_in_place(&event.body)
            .expect("a link is accepted in every account state");
        working.dirty = true;
        let event_id = event.event_id;
        let op = self.push(
            Op::Append {
                stream: stream.clone(),
                expected: ExpectedVersion::Exact(before),
                accepted_at: event.received_at,
                event,
                from_parked: false,
            },
            &stream,
            event_id,
            key,
        );
        self.retry_parked(&stream)?;
        Ok(Some(PlannedRedrive {
            op,
            session: stream,
            event_id,
            phase_after: None,
        }))
    }

    /// Retries the stream's parked events, oldest event time first, accepting every one that
    /// has become legal, until none is.
    fn retry_parked(&mut self, session: &SessionId) -> Result<Vec<PlannedRedrive>, EngineError> {
        let mut redriven = Vec::new();
        if self
            .sessions
            .get(session)
            .is_none_or(|working| working.state.parked == 0)
        {
            return Ok(redriven);
        }
        self.load_parked(session)?;
        loop {
            let working = self
                .sessions
                .get_mut(session)
                .expect("retry_parked is called for a working session");
            let list = working
                .parked
                .as_mut()
                .expect("the parked list was loaded before the loop");
            list.sort_by_key(|parked| {
                (
                    parked
                        .data
                        .body
                        .occurred_at()
                        .unwrap_or(parked.data.received_at),
                    parked.data.received_at,
                    parked.data.event_id,
                )
            });
            let Some(index) = list
                .iter()
                .position(|parked| working.state.folded.check(&parked.data.body) == Ok(true))
            else {
                break;
            };
            let parked = list.remove(index);
            let before = working.state.folded.version();
            let change = working
                .state
                .folded
                .apply_in_place(&parked.data.body)
                .expect("check accepted this event against the same state");
            working.state.parked -= 1;
            working.dirty = true;
            let event_id = parked.data.event_id;
            let key = parked.data.dedupe_key;
            let op = self.push(
                Op::Append {
                    stream: session.clone(),
                    expected: ExpectedVersion::Exact(before),
                    event: parked.data,
                    accepted_at: self.now,
                    from_parked: true,
                },
                session,
                event_id,
                key,
            );
            redriven.push(PlannedRedrive {
                op,
                session: session.clone(),
                event_id,
                phase_after: change.phase_after(),
            });
        }
        Ok(redriven)
    }

    /// Retries parked events by hand. The store's parked list is the truth here, not the cached
    /// count: entries may have been parked by another writer on a shared store.
    fn plan_redrive(
        &mut self,
        only: Option<&SessionId>,
    ) -> Result<Vec<PlannedRedrive>, EngineError> {
        let mut by_session: Vec<(SessionId, Vec<ParkedEvent>)> = Vec::new();
        for entry in self.shared.store.parked(only)? {
            match by_session.last_mut() {
                Some((id, list)) if *id == entry.stream => list.push(entry),
                _ => by_session.push((entry.stream.clone(), vec![entry])),
            }
        }
        let mut redriven = Vec::new();
        for (session, list) in by_session {
            let (provider, body) = (list[0].data.provider, list[0].data.body.clone());
            let working = self.working(&session, provider, &body)?;
            // A list loaded earlier in this group also holds this group's own parks: keep it.
            let list = working.parked.get_or_insert(list);
            working.state.parked = u32::try_from(list.len()).unwrap_or(u32::MAX);
            redriven.extend(self.retry_parked(&session)?);
        }
        Ok(redriven)
    }

    /// Adds a snapshot of every session this group changed.
    fn finish(&mut self) -> Vec<Op> {
        for (session, working) in &self.sessions {
            if working.dirty {
                let state = encode_snapshot_state(&working.state.folded);
                self.ops.push(Op::PutSnapshot {
                    stream: session.clone(),
                    snapshot: Snapshot {
                        provider: working.state.provider,
                        version: working.state.folded.version(),
                        state,
                    },
                });
            }
        }
        std::mem::take(&mut self.ops)
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
    let mut attempt = 0;
    loop {
        attempt += 1;
        let read_ahead = match read_ahead(shared, &group) {
            Ok(read) => read,
            Err(error) => return fail_group(group, &error),
        };
        let mut plan = Plan::new(shared, read_ahead);
        let planned: Result<Vec<PlannedRequest>, EngineError> = group
            .iter()
            .map(|request| match request {
                Request::Ingest { events, .. } => events
                    .iter()
                    .map(|event| plan.plan_event(event))
                    .collect::<Result<Vec<_>, _>>()
                    .map(PlannedRequest::Ingest),
                Request::Redrive { session, .. } => plan
                    .plan_redrive(session.as_ref())
                    .map(PlannedRequest::Redrive),
                Request::Shutdown { .. } => unreachable!("shutdown is never part of a group"),
            })
            .collect();
        let planned = match planned {
            Ok(planned) => planned,
            Err(error) => return fail_group(group, &error),
        };
        let ops = plan.finish();
        let op_count = ops.len();
        let outcomes = if ops.is_empty() {
            Ok(Vec::new())
        } else {
            shared.store.commit(ops)
        };
        match outcomes {
            Ok(outcomes) if outcomes.len() != op_count => {
                evict(shared, plan.sessions.keys());
                let error = StoreError::Backend(format!(
                    "the store answered {} outcomes for {op_count} operations",
                    outcomes.len()
                ));
                return fail_group(group, &EngineError::from(error));
            }
            Ok(outcomes) => {
                return complete_group(shared, plan, group, planned, &outcomes, taken, jobs);
            }
            Err(StoreError::Conflict { .. } | StoreError::ParkedConflict { .. })
                if attempt < retries =>
            {
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
            Request::Redrive { reply, .. } => {
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
    planned: Vec<PlannedRequest>,
    outcomes: &[OpOutcome],
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
            Request::Redrive { .. } | Request::Shutdown { .. } => 0,
        })
        .sum();
    shared
        .stats
        .committed(committed.requests, events, taken, committed.committed_at);
    let mut unexpected: Vec<SessionId> = Vec::new();
    let describe_op = |op: usize| -> Option<DedupeHit> {
        let (stream, event_id) = plan.op_events[op].clone();
        match outcomes.get(op)? {
            OpOutcome::Appended { version, position } => Some(DedupeHit::Accepted {
                stream,
                version: *version,
                position: *position,
            }),
            OpOutcome::Parked => Some(DedupeHit::Parked { stream, event_id }),
            OpOutcome::Duplicate { original } => Some(original.clone()),
            OpOutcome::SnapshotSaved | OpOutcome::Checked => None,
        }
    };
    let resolve_redrive = |redrive: PlannedRedrive| -> Option<Redriven> {
        match outcomes.get(redrive.op) {
            Some(OpOutcome::Appended { version, position }) => Some(Redriven {
                session: redrive.session,
                event_id: redrive.event_id,
                version: *version,
                position: *position,
                phase_after: redrive.phase_after,
            }),
            _ => None,
        }
    };

    // Each caller's reply channel with its answer; the requests' events are dropped here, so
    // only the channels wait for the sync.
    let mut replies = Vec::with_capacity(planned.len());
    for (request, planned) in group.into_iter().zip(planned) {
        match (request, planned) {
            (Request::Ingest { reply, .. }, PlannedRequest::Ingest(events)) => {
                let resolved: Vec<IngestOutcome> = events
                    .into_iter()
                    .map(|planned| match planned {
                        Planned::Append {
                            op,
                            session,
                            phase_before,
                            phase_after,
                            redriven,
                            linked,
                            quarantined,
                        } => match outcomes.get(op) {
                            Some(OpOutcome::Appended { version, position }) => match quarantined {
                                Some(reason) => IngestOutcome::Quarantined {
                                    entry: session,
                                    reason,
                                    position: *position,
                                },
                                None => IngestOutcome::Accepted {
                                    session,
                                    version: *version,
                                    position: *position,
                                    phase_before,
                                    phase_after,
                                    redriven: redriven
                                        .into_iter()
                                        .filter_map(resolve_redrive)
                                        .collect(),
                                    linked: linked.and_then(resolve_redrive),
                                },
                            },
                            _ => {
                                // Another writer stored it first (only on a shared store).
                                unexpected.push(session.clone());
                                duplicate_or_closed(session, describe_op(op))
                            }
                        },
                        Planned::Park {
                            op,
                            session,
                            event_id,
                            reason,
                        } => match outcomes.get(op) {
                            Some(OpOutcome::Parked) => IngestOutcome::Parked {
                                session,
                                event_id,
                                reason,
                            },
                            _ => {
                                unexpected.push(session.clone());
                                duplicate_or_closed(session, describe_op(op))
                            }
                        },
                        Planned::DuplicateOfOp { op, session } => {
                            duplicate_or_closed(session, describe_op(op))
                        }
                        Planned::Duplicate { session, original } => {
                            IngestOutcome::Duplicate { session, original }
                        }
                        Planned::Refused(error) => IngestOutcome::Refused { error },
                    })
                    .collect();
                replies.push(Waiting::Ingest(reply, resolved));
            }
            (Request::Redrive { reply, .. }, PlannedRequest::Redrive(redriven)) => {
                replies.push(Waiting::Redrive(
                    reply,
                    redriven.into_iter().filter_map(resolve_redrive).collect(),
                ))
            }
            _ => unreachable!("requests are planned in order, one plan per request"),
        }
    }

    {
        // Packed before the lock: readers wait on it.
        let packed: Vec<(SessionId, Option<PackedState>)> = plan
            .sessions
            .into_iter()
            .map(|(session, working)| {
                let packed =
                    (!unexpected.contains(&session)).then(|| PackedState::pack(&working.state));
                (session, packed)
            })
            .collect();
        let mut cache = shared.cache();
        for (session, packed) in packed {
            match packed {
                Some(packed) => cache.insert(session, packed),
                None => cache.remove(&session),
            }
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

fn duplicate_or_closed(session: SessionId, original: Option<DedupeHit>) -> IngestOutcome {
    let original = original.expect("the outcome count was checked against the op count");
    IngestOutcome::Duplicate { session, original }
}
