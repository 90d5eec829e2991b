//! Compaction of old terminal sessions to their final state (`docs/privacy.md`, "Compaction").
//!
//! A session that succeeded or exited, and whose last event is older than a cutoff, is
//! compacted: its snapshot, marked compacted at its version, becomes the whole of what the
//! engine knows of it, and its events' records become compacted records (their place in the
//! log and their dedupe keys, not what they said: `EventStore::compact`). Funnels, indexes and
//! counters derive from the state, so they do not change. An event that arrives later is stored
//! and kept rejected, and leaves the state as it was: the history that would place it is gone.
//!
//! The writer runs each page of candidates between its groups, so no group decides on a state
//! from before the compaction; on a shared store the commit check
//! (`CommitError::CompactionConflict`) refuses another node's commit decided on such a state.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use linkflow_core::SessionId;
use linkflow_store::{CommitError, Snapshot, StoreError};
use serde::Serialize;

use crate::cache::PackedState;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::folded::{encode_snapshot_state, Folded};
use crate::index;
use crate::query::load_state;
use crate::writer::{evict, Request, Shared};

/// Sessions a compaction hands the writer at once: a page of the first-event index.
pub const COMPACT_PAGE: usize = 256;

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompactReport {
    /// Sessions examined: every one whose first event is before the cutoff (compacted ones
    /// included).
    pub examined: u64,
    /// Sessions this run compacted (terminal, last event before the cutoff, with events not
    /// compacted yet).
    pub sessions: u64,
    /// Event records this run compacted.
    pub events: u64,
}

impl Engine {
    /// Compacts every session that succeeded or exited and whose last event is before
    /// `cutoff`, a page of [`COMPACT_PAGE`] sessions at a time (found through the first-event
    /// index: a session's first event comes before its last). Each page is durable before the
    /// next is read. Running it again compacts only what changed since. Sessions without an
    /// event time are never compacted.
    pub async fn compact_sessions_before(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<CompactReport, EngineError> {
        let mut report = CompactReport::default();
        let end = index::time_from(index::FIRST_EVENT, cutoff.timestamp_micros());
        let mut from = vec![index::FIRST_EVENT];
        loop {
            let (start, stop) = (from.clone(), end.clone());
            let (sessions, last) = self
                .read(move |store| {
                    let mut sessions = Vec::new();
                    let mut last = None;
                    let mut damaged = None;
                    store.for_each_index_key(&start, &stop, &mut |key| {
                        match index::id_in(key) {
                            Ok(id) => sessions.push(id),
                            Err(error) => {
                                damaged = Some(error);
                                return ControlFlow::Break(());
                            }
                        }
                        last = Some(key.to_vec());
                        if sessions.len() == COMPACT_PAGE {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })?;
                    match damaged {
                        Some(error) => Err(StoreError::Corrupt(error).into()),
                        None => Ok((sessions, last)),
                    }
                })
                .await?;
            let full = sessions.len() == COMPACT_PAGE;
            if !sessions.is_empty() {
                report.examined += sessions.len() as u64;
                let done = self
                    .call(|reply, _| Request::Compact {
                        sessions,
                        cutoff,
                        reply,
                    })
                    .await?;
                report.sessions += done.sessions;
                report.events += done.events;
            }
            match last {
                Some(mut key) if full => {
                    key.push(0);
                    from = key;
                }
                _ => break,
            }
        }
        if report.sessions > 0 {
            tracing::info!(
                sessions = report.sessions,
                events = report.events,
                "terminal sessions compacted to their final state"
            );
        }
        Ok(report)
    }

    /// [`Engine::compact_sessions_before`] `now` less the configured
    /// [`crate::EngineConfig::compact_after`]; nothing without one.
    pub async fn compact_old_sessions(
        &self,
        now: DateTime<Utc>,
    ) -> Result<CompactReport, EngineError> {
        match self.compact_after() {
            Some(age) => self.compact_sessions_before(now - age).await,
            None => Ok(CompactReport::default()),
        }
    }
}

/// Whether `folded` is a session to compact: terminal, its last event before `cutoff`, with
/// events not compacted yet.
fn compactable(folded: &Folded, cutoff: DateTime<Utc>) -> bool {
    let Folded::Session(timeline) = folded else {
        return false;
    };
    timeline.compacted < timeline.arrivals
        && timeline.state.phase().is_terminal()
        && timeline
            .state
            .last_event_at()
            .is_some_and(|last| last < cutoff)
}

/// Compacts those of `sessions` that are to be ([`compactable`]), on the writer thread between
/// groups, then makes it durable. A stream that cannot be read is left as it is (`verify`
/// names it); one another node changed meanwhile is left for the next run.
pub(crate) fn compact_in_writer(
    shared: &Shared,
    sessions: &[SessionId],
    cutoff: DateTime<Utc>,
) -> Result<CompactReport, EngineError> {
    if let Some(failure) = shared.failed() {
        return Err(failure);
    }
    let store = shared.store.as_ref();
    let mut report = CompactReport::default();
    for session in sessions {
        let cached = if shared.store_is_shared {
            None
        } else {
            shared.cache().get(session)
        };
        let state = match cached {
            Some(state) => state,
            None => match load_state(store, session) {
                Ok(Some(state)) => state,
                Ok(None) => continue,
                Err(error) if error.is_damage() => continue,
                Err(error) => return Err(error),
            },
        };
        if !compactable(&state.folded, cutoff) {
            continue;
        }
        let mut state = state;
        if let Folded::Session(timeline) = &mut state.folded {
            timeline.compacted = timeline.arrivals;
        }
        let snapshot = Snapshot {
            provider: state.provider,
            version: state.folded.version(),
            compacted: state.folded.compacted(),
            state: encode_snapshot_state(&state.folded),
        };
        match store.compact(session, snapshot) {
            Ok(events) => {
                report.sessions += 1;
                report.events += events;
                if !shared.store_is_shared {
                    shared
                        .cache()
                        .insert(session.clone(), PackedState::pack(&state));
                }
            }
            Err(CommitError::Conflict { .. } | CommitError::CompactionConflict { .. }) => {
                evict(shared, std::iter::once(session));
            }
            Err(error) => return Err(error.into()),
        }
    }
    if report.sessions > 0 {
        if let Err(error) = store.sync() {
            // Fail-stop, as for a commit: what the disk holds is unknown.
            shared.fail(error.to_string());
            return Err(error.into());
        }
    }
    Ok(report)
}
