//! A proptest state-machine test of the engine against a model: a plain list of accepted events
//! and of parked events per session. Steps append legal, illegal and duplicate events (legal
//! ones alone or several of a session in one batch, which the store packs under one key),
//! reopen the store, and read; after every step the engine must agree with the model.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use linkflow::{Durability, Engine, EngineConfig, IncomingEvent, IngestOutcome};
use linkflow_core::{fold, Event, EventKind, Provider, SessionId};
use proptest::prelude::*;

const SESSIONS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// An event the session accepts now (the pick chooses among the legal ones).
    Legal { session: usize, pick: usize },
    /// Several events the session accepts one after the other, ingested in one batch.
    LegalRun { session: usize, picks: Vec<usize> },
    /// A `created` after a phase event: refused now and forever, so it stays parked.
    Illegal { session: usize },
    /// A second delivery of an earlier event.
    Duplicate { pick: usize },
    /// Shut the engine down and open it again on the same directory.
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        5 => (0..SESSIONS, any::<usize>()).prop_map(|(session, pick)| Step::Legal { session, pick }),
        2 => (0..SESSIONS, proptest::collection::vec(any::<usize>(), 2..6))
            .prop_map(|(session, picks)| Step::LegalRun { session, picks }),
        1 => (0..SESSIONS).prop_map(|session| Step::Illegal { session }),
        2 => any::<usize>().prop_map(|pick| Step::Duplicate { pick }),
        1 => Just(Step::Reopen),
    ]
}

const CANDIDATES: [EventKind; 9] = [
    EventKind::Opened,
    EventKind::InstitutionSelected,
    EventKind::CredentialsSubmitted,
    EventKind::MfaSubmitted,
    EventKind::AccountsSelected,
    EventKind::Succeeded,
    EventKind::Exited,
    EventKind::ScreenChanged,
    EventKind::Error,
];

#[derive(Default)]
struct Model {
    accepted: HashMap<usize, Vec<Event>>,
    parked: HashMap<usize, Vec<Event>>,
    sent: Vec<IncomingEvent>,
    clock: i64,
}

fn session_id(session: usize) -> SessionId {
    SessionId::new(format!("model-{session}")).unwrap()
}

impl Model {
    fn event(&mut self, kind: EventKind) -> Event {
        self.clock += 1;
        let event = Event::new(kind).at(Utc.timestamp_opt(1_700_000_000 + self.clock, 0).unwrap());
        event.with_institution("ins_model", None)
    }
}

/// The candidates `events` (a session's accepted events) accept next.
fn legal_next(events: &[Event]) -> Vec<EventKind> {
    let state = fold(events).unwrap();
    CANDIDATES
        .iter()
        .filter(|kind| {
            state
                .check(&Event::new((*kind).clone()).with_institution("i", None))
                .is_ok()
        })
        .cloned()
        .collect()
}

fn run(steps: Vec<Step>) -> Result<(), TestCaseError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let open = || {
            let mut config = EngineConfig::new(dir.path());
            config.durability = Durability::Buffered;
            // Every session read and every plan loads from the store (snapshot and tail).
            config.cache_sessions = 1;
            Engine::open_with(config).unwrap()
        };
        let mut engine = open();
        let mut model = Model::default();
        for step in steps {
            match step {
                Step::Legal { session, pick } => {
                    let legal = legal_next(model.accepted.get(&session).map_or(&[], Vec::as_slice));
                    let kind = legal[pick % legal.len()].clone();
                    let event = model.event(kind);
                    let incoming =
                        IncomingEvent::new(session_id(session), Provider::Moneykit, event.clone());
                    let outcome = engine.ingest(incoming.clone()).await.unwrap();
                    prop_assert!(
                        matches!(outcome, IngestOutcome::Accepted { .. }),
                        "{:?}",
                        outcome
                    );
                    model.accepted.entry(session).or_default().push(event);
                    model.sent.push(incoming);
                }
                Step::LegalRun { session, picks } => {
                    let mut events = model.accepted.get(&session).cloned().unwrap_or_default();
                    let mut batch = Vec::new();
                    for pick in picks {
                        let legal = legal_next(&events);
                        let event = model.event(legal[pick % legal.len()].clone());
                        events.push(event.clone());
                        batch.push(IncomingEvent::new(
                            session_id(session),
                            Provider::Moneykit,
                            event,
                        ));
                    }
                    let outcomes = engine.ingest_batch(batch.clone()).await.unwrap();
                    for outcome in &outcomes {
                        prop_assert!(
                            matches!(outcome, IngestOutcome::Accepted { .. }),
                            "{:?}",
                            outcome
                        );
                    }
                    model.accepted.insert(session, events);
                    model.sent.extend(batch);
                }
                Step::Illegal { session } => {
                    let has_phase_event = model
                        .accepted
                        .get(&session)
                        .is_some_and(|events| events.iter().any(|e| e.kind.step().is_some()));
                    if !has_phase_event {
                        continue;
                    }
                    let event = model.event(EventKind::Created);
                    let incoming =
                        IncomingEvent::new(session_id(session), Provider::Moneykit, event.clone());
                    let outcome = engine.ingest(incoming.clone()).await.unwrap();
                    prop_assert!(
                        matches!(outcome, IngestOutcome::Parked { .. }),
                        "{:?}",
                        outcome
                    );
                    model.parked.entry(session).or_default().push(event);
                    model.sent.push(incoming);
                }
                Step::Duplicate { pick } => {
                    if model.sent.is_empty() {
                        continue;
                    }
                    let again = model.sent[pick % model.sent.len()].clone();
                    let outcome = engine.ingest(again).await.unwrap();
                    prop_assert!(
                        matches!(outcome, IngestOutcome::Duplicate { .. }),
                        "{:?}",
                        outcome
                    );
                }
                Step::Reopen => {
                    engine.shutdown().await.unwrap();
                    drop(engine);
                    engine = open();
                }
            }
            // Read back every session and compare with the model.
            for session in 0..SESSIONS {
                let id = session_id(session);
                let expected = model.accepted.get(&session).cloned().unwrap_or_default();
                let history = engine.history(&id).await.unwrap().unwrap_or_default();
                prop_assert_eq!(history.len(), expected.len());
                for (entry, event) in history.iter().zip(&expected) {
                    prop_assert_eq!(entry.event.as_str(), event.kind.name());
                    prop_assert_eq!(entry.event_time, event.occurred_at);
                }
                let view = engine.session(&id).await.unwrap();
                let parked_expected = model.parked.get(&session).map_or(0, Vec::len);
                match view {
                    None => prop_assert!(expected.is_empty() && parked_expected == 0),
                    Some(view) => {
                        prop_assert_eq!(&view.state, &fold(&expected).unwrap());
                        prop_assert_eq!(view.parked as usize, parked_expected);
                    }
                }
                let parked = engine.parked(Some(id)).await.unwrap();
                prop_assert_eq!(parked.len(), parked_expected);
            }
        }
        let report = engine.verify().await.unwrap();
        prop_assert!(report.is_clean(), "{:#?}", report.problems);
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_a_list_of_events_per_session(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}
