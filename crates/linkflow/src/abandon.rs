//! Abandonment detected by the engine: the timer that notices open sessions crossing the
//! inactivity timeout and writes the `abandoned` marker into their streams
//! (`docs/notifications.md`, "Abandonment").
//!
//! A session is declared when it has had no event for the inactivity timeout both by its
//! events' times and by their arrival: old events still arriving (a backfill, a provider's
//! late batch) do not make a session abandoned between them.
//!
//! The candidates come from the last-event-time index (`l`: open sessions not declared
//! abandoned, by the minute of their last event), read from its start up to the cutoff's
//! minute: a session leaves it once its marker takes effect (it moves to `a`), so a run reads
//! only the sessions still to declare, never the ones declared before. Each marker carries the
//! last event time the timer saw and takes effect only if the session's fold still ends there
//! ([`linkflow_core::Session::abandoned_at`]), so a marker written while an event was on its
//! way is void, whatever the order they reach the store in. Its dedupe key derives from the
//! session and that time alone: two runs (after a restart, or on two nodes sharing a
//! PostgreSQL log) write it once.

use std::ops::ControlFlow;

use chrono::{DateTime, Utc};
use linkflow_core::{DedupeKey, Event, EventBody, EventKind, SessionId};
use linkflow_store::StoreError;
use serde::Serialize;

use crate::engine::Engine;
use crate::error::EngineError;
use crate::folded::Folded;
use crate::index;
use crate::ingest::{IncomingEvent, IngestOutcome};
use crate::query::load_state;

/// Sessions one round of the timer reads from the index and declares in one durable batch.
pub const ABANDON_PAGE: usize = 256;

/// What one run of the abandonment timer did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AbandonReport {
    /// Open sessions read from the index up to the cutoff's minute.
    pub examined: u64,
    /// Markers this run stored that took effect.
    pub declared: u64,
    /// Markers already stored (another run or node wrote them first) or void (an event
    /// reached the session meanwhile).
    pub skipped: u64,
}

/// The dedupe key of the marker for `session` silent since `since`: the same on every node
/// and after every restart.
pub fn marker_dedupe_key(session: &SessionId, since: DateTime<Utc>) -> DedupeKey {
    DedupeKey::derive(&[
        b"linkflow:abandoned",
        session.as_str().as_bytes(),
        &since.timestamp_micros().to_be_bytes(),
    ])
}

/// The marker for a session whose last event time is `since`, declared at `now`.
pub fn marker(since: DateTime<Utc>, now: DateTime<Utc>) -> Event {
    let mut marker = Event::new(EventKind::Abandoned).at(since);
    marker.received_at = Some(now);
    marker
}

impl Engine {
    /// Declares abandoned every open session whose last event is at least the inactivity
    /// timeout before `now`, by its time and by its arrival, and that is not declared yet: one marker each, in durable batches
    /// of [`ABANDON_PAGE`]. Idempotent: running it again (here or on another node) writes
    /// nothing new for the same silence.
    pub async fn declare_abandoned(
        &self,
        now: DateTime<Utc>,
    ) -> Result<AbandonReport, EngineError> {
        let timeout = self.inactivity_timeout();
        let cutoff = now - timeout;
        let end = index::time_from(
            index::LAST_EVENT,
            index::grain_floor(cutoff.timestamp_micros())
                .saturating_add(index::LAST_EVENT_GRAIN_MICROS),
        );
        let mut report = AbandonReport::default();
        let mut from = vec![index::LAST_EVENT];
        loop {
            let (start, stop) = (from.clone(), end.clone());
            let (markers, examined, last) = self
                .read(move |store| {
                    let mut markers = Vec::new();
                    let mut examined = 0usize;
                    let mut last = None;
                    let mut failed = None;
                    store.for_each_index_key(&start, &stop, &mut |key| {
                        examined += 1;
                        last = Some(key.to_vec());
                        let found = index::id_in(key)
                            .map_err(|error| EngineError::from(StoreError::Corrupt(error)))
                            .and_then(|id| Ok(load_state(store, &id)?.map(|state| (id, state))));
                        match found {
                            Ok(Some((id, state))) => {
                                let silent = silent_since(&state.folded, cutoff)
                                    .map(|since| {
                                        quiet_since(store, &id, state.folded.version(), cutoff)
                                            .map(|quiet| quiet.then_some(since))
                                    })
                                    .transpose();
                                let silent = match silent {
                                    Ok(silent) => silent.flatten(),
                                    Err(error) => {
                                        failed = Some(error);
                                        return ControlFlow::Break(());
                                    }
                                };
                                if let Some(since) = silent {
                                    markers.push(IncomingEvent {
                                        session: id.clone(),
                                        provider: state.provider,
                                        body: EventBody::Session(marker(since, now)),
                                        raw_name: None,
                                        raw: None,
                                        event_id: None,
                                        dedupe_key: Some(marker_dedupe_key(&id, since)),
                                        received_at: Some(now),
                                    });
                                }
                            }
                            Ok(None) => {}
                            Err(error) => {
                                failed = Some(error);
                                return ControlFlow::Break(());
                            }
                        }
                        if examined == ABANDON_PAGE {
                            ControlFlow::Break(())
                        } else {
                            ControlFlow::Continue(())
                        }
                    })?;
                    match failed {
                        Some(error) => Err(error),
                        None => Ok((markers, examined, last)),
                    }
                })
                .await?;
            report.examined += examined as u64;
            if !markers.is_empty() {
                for outcome in self.ingest_batch(markers).await? {
                    match outcome {
                        IngestOutcome::Accepted {
                            session, version, ..
                        } if self.declared(&session, version).await? => report.declared += 1,
                        _ => report.skipped += 1,
                    }
                }
            }
            match last {
                Some(mut key) if examined == ABANDON_PAGE => {
                    key.push(0);
                    from = key;
                }
                _ => break,
            }
        }
        if report.declared > 0 {
            tracing::info!(
                sessions = report.declared,
                "open sessions declared abandoned after the inactivity timeout"
            );
        }
        Ok(report)
    }

    /// Whether the session's marker at `version` took effect (the session is declared
    /// abandoned at that version or later with no event since).
    async fn declared(
        &self,
        session: &SessionId,
        version: linkflow_core::Version,
    ) -> Result<bool, EngineError> {
        let id = session.clone();
        self.read(move |store| {
            Ok(
                load_state(store, &id)?.is_some_and(|state| match &state.folded {
                    Folded::Session(timeline) => {
                        timeline.arrivals >= version.0 && timeline.state.abandoned_at().is_some()
                    }
                    _ => false,
                }),
            )
        })
        .await
    }
}

/// Whether the stream's last event (at `version`) was stored at or before `cutoff`: a session
/// whose old events are still arriving (a backfill, a provider's late batch) is not declared
/// abandoned between them.
fn quiet_since(
    store: &dyn linkflow_store::EventStore,
    id: &SessionId,
    version: linkflow_core::Version,
    cutoff: DateTime<Utc>,
) -> Result<bool, EngineError> {
    let last = store.read_stream(id, linkflow_core::Version(version.0.saturating_sub(1)), 1)?;
    Ok(last.first().is_none_or(|event| event.stored_at <= cutoff))
}

/// The last event time of an open session silent since before `cutoff` and not declared
/// abandoned yet.
fn silent_since(folded: &Folded, cutoff: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let Folded::Session(timeline) = folded else {
        return None;
    };
    let session = &timeline.state;
    if session.phase().is_terminal() || session.abandoned_at().is_some() {
        return None;
    }
    session.last_event_at().filter(|last| *last <= cutoff)
}
