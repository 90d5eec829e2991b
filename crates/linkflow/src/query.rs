//! Reading sessions back: states from snapshot plus tail, histories, lists.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use linkflow_core::{Phase, Position, Provider, RuleKind, Session, SessionId, Version};
use linkflow_store::{EventStore, Snapshot, StoredEvent};
use serde::Serialize;
use uuid::Uuid;

use crate::cache::SessionState;
use crate::error::EngineError;

/// Events read per store call when replaying a stream.
const READ_CHUNK: usize = 1_024;

/// A session as the engine knows it now.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SessionView {
    /// The session's id.
    pub session_id: SessionId,
    /// Its provider.
    pub provider: Provider,
    /// Its folded state.
    pub state: Session,
    /// How many of its events are parked.
    pub parked: u32,
}

/// One accepted event of a session's history, with what it did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HistoryEntry {
    /// Its version in the session.
    pub version: Version,
    /// Its global position.
    pub position: Position,
    /// Its id.
    pub event_id: Uuid,
    /// The canonical snake_case name (`unrecognized` for names no adapter knows).
    pub event: String,
    /// The name as the provider sent it.
    pub raw_name: Option<String>,
    /// The provider's time for it.
    pub event_time: Option<DateTime<Utc>>,
    /// When linkflow received it.
    pub received_at: DateTime<Utc>,
    /// When the log accepted it (later than `received_at` if it was parked first).
    pub accepted_at: DateTime<Utc>,
    /// True if it was parked before a retry accepted it.
    pub was_parked: bool,
    /// The phase before it.
    pub phase_before: Phase,
    /// The phase after it (equal to `phase_before` for telemetry).
    pub phase_after: Phase,
    /// The table row that took it; `None` for telemetry and unrecognized events.
    pub rule: Option<RuleKind>,
}

/// Which sessions [`crate::Engine::sessions`] returns. Every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionFilter {
    /// Only sessions in this phase.
    pub phase: Option<Phase>,
    /// Only sessions of this provider.
    pub provider: Option<Provider>,
    /// Only sessions whose last event time is at or after this.
    pub last_event_from: Option<DateTime<Utc>>,
    /// Only sessions whose last event time is before this.
    pub last_event_until: Option<DateTime<Utc>>,
}

impl SessionFilter {
    fn matches(&self, provider: Provider, session: &Session) -> bool {
        self.phase.is_none_or(|phase| session.phase() == phase)
            && self.provider.is_none_or(|wanted| provider == wanted)
            && self
                .last_event_from
                .is_none_or(|from| session.last_event_at().is_some_and(|last| last >= from))
            && self
                .last_event_until
                .is_none_or(|until| session.last_event_at().is_some_and(|last| last < until))
    }
}

/// Decodes a snapshot's state; `None` when it cannot be read by this build (the caller falls
/// back to a full replay).
pub(crate) fn decode_snapshot(snapshot: &Snapshot) -> Option<Session> {
    serde_json::from_str(snapshot.state.get()).ok()
}

/// Replays `stream`'s events after `session`'s version onto it, up to `until` if given.
fn replay_tail(
    store: &dyn EventStore,
    stream: &SessionId,
    mut session: Session,
    until: Option<Version>,
) -> Result<Session, EngineError> {
    loop {
        let after = session.version();
        let limit = match until {
            Some(until) if until <= after => return Ok(session),
            Some(until) => READ_CHUNK.min((until.0 - after.0) as usize),
            None => READ_CHUNK,
        };
        let events = store.read_stream(stream, after, limit)?;
        if events.is_empty() {
            return Ok(session);
        }
        for stored in &events {
            session =
                session
                    .replay([&stored.data.event])
                    .map_err(|error| EngineError::Replay {
                        session: stream.clone(),
                        error: linkflow_core::ReplayError {
                            index: (stored.version.0 - 1) as usize,
                            rejection: error.rejection,
                        },
                    })?;
        }
    }
}

/// A session's current state from its snapshot plus the events after it, or `None` if the
/// session has neither events nor parked events. A snapshot this build cannot decode falls
/// back to a full replay.
pub(crate) fn load_state(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<SessionState>, EngineError> {
    let snapshot = store.snapshot(stream)?;
    let (provider, base) = match &snapshot {
        Some(snapshot) => (
            Some(snapshot.provider),
            decode_snapshot(snapshot).filter(|session| session.version() == snapshot.version),
        ),
        None => (None, None),
    };
    let session = replay_tail(store, stream, base.unwrap_or_default(), None)?;
    let parked = store.parked(Some(stream))?;
    let provider = match provider {
        Some(provider) => provider,
        None if session.version() > Version::EMPTY => {
            store.read_stream(stream, Version::EMPTY, 1)?[0]
                .data
                .provider
        }
        None => match parked.first() {
            Some(first) => first.data.provider,
            None => return Ok(None),
        },
    };
    Ok(Some(SessionState {
        provider,
        session,
        parked: u32::try_from(parked.len()).unwrap_or(u32::MAX),
    }))
}

/// The session as of `version` (a full fold of its first `version` events).
pub(crate) fn session_at(
    store: &dyn EventStore,
    stream: &SessionId,
    version: Version,
) -> Result<Option<Session>, EngineError> {
    let current = store.stream_version(stream)?;
    if current == Version::EMPTY {
        return Ok(None);
    }
    if version > current {
        return Err(EngineError::VersionOutOfRange {
            session: stream.clone(),
            requested: version,
            current,
        });
    }
    replay_tail(store, stream, Session::new(), Some(version)).map(Some)
}

/// Every accepted event of the session with the phase before and after it.
pub(crate) fn history(
    store: &dyn EventStore,
    stream: &SessionId,
) -> Result<Option<Vec<HistoryEntry>>, EngineError> {
    let mut session = Session::new();
    let mut entries = Vec::new();
    loop {
        let events = store.read_stream(stream, session.version(), READ_CHUNK)?;
        if events.is_empty() {
            break;
        }
        for stored in events {
            let applied = session
                .apply_in_place(&stored.data.event)
                .map_err(|rejection| EngineError::Replay {
                    session: stream.clone(),
                    error: linkflow_core::ReplayError {
                        index: (stored.version.0 - 1) as usize,
                        rejection,
                    },
                })?;
            entries.push(history_entry(stored, applied));
        }
    }
    Ok(if entries.is_empty() {
        None
    } else {
        Some(entries)
    })
}

fn history_entry(stored: StoredEvent, applied: linkflow_core::Applied) -> HistoryEntry {
    HistoryEntry {
        version: stored.version,
        position: stored.position,
        event_id: stored.data.event_id,
        event: stored.data.event.kind.name().to_owned(),
        raw_name: stored.data.raw_name,
        event_time: stored.data.event.occurred_at,
        received_at: stored.data.received_at,
        accepted_at: stored.accepted_at,
        was_parked: stored.was_parked,
        phase_before: applied.phase_before,
        phase_after: applied.phase_after,
        rule: applied.rule,
    }
}

/// Sessions matching `filter`, in session-id order, from their snapshots (each is current:
/// every commit that changes a session rewrites its snapshot).
pub(crate) fn sessions(
    store: &dyn EventStore,
    filter: &SessionFilter,
) -> Result<Vec<SessionView>, EngineError> {
    let mut views = Vec::new();
    let mut undecodable = Vec::new();
    store.for_each_snapshot(&mut |session_id, snapshot| {
        match decode_snapshot(&snapshot) {
            Some(state) if state.version() == snapshot.version => {
                if filter.matches(snapshot.provider, &state) {
                    views.push(SessionView {
                        session_id,
                        provider: snapshot.provider,
                        state,
                        parked: 0,
                    });
                }
            }
            _ => undecodable.push(session_id),
        }
        ControlFlow::Continue(())
    })?;
    for session_id in undecodable {
        if let Some(state) = load_state(store, &session_id)? {
            if filter.matches(state.provider, &state.session) {
                views.push(SessionView {
                    session_id,
                    provider: state.provider,
                    state: state.session,
                    parked: 0,
                });
            }
        }
    }
    views.sort_by(|a, b| a.session_id.cmp(&b.session_id));
    let mut parked: std::collections::HashMap<SessionId, u32> = std::collections::HashMap::new();
    for entry in store.parked(None)? {
        *parked.entry(entry.stream).or_default() += 1;
    }
    for view in &mut views {
        view.parked = parked.get(&view.session_id).copied().unwrap_or(0);
    }
    Ok(views)
}
