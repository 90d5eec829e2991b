//! A proptest state-machine test of the engine against a model: a plain list of the events each
//! session received, folded by `linkflow_core::timeline::fold`. Steps send legal, illegal, late
//! and duplicate events (legal ones alone or several of a session in one batch, which the store
//! packs under one key), reopen the store, and read; after every step the engine must agree
//! with the model: the state, the history's order and verdicts, the rejected list.

use std::collections::HashMap;

use chrono::{TimeZone, Utc};
use linkflow::{Durability, Engine, EngineConfig, IncomingEvent, IngestOutcome};
use linkflow_core::timeline::{self, Timeline};
use linkflow_core::{Event, EventKind, Provider, Session, SessionId};
use proptest::prelude::*;

const SESSIONS: usize = 3;

#[derive(Debug, Clone)]
enum Step {
    /// An event the session accepts now (the pick chooses among the legal ones).
    Legal { session: usize, pick: usize },
    /// Several events the session accepts one after the other, ingested in one batch.
    LegalRun { session: usize, picks: Vec<usize> },
    /// A `created` after a phase event: rejected now and forever.
    Illegal { session: usize },
    /// An event of any candidate kind with a time before the session's latest (it arrives
    /// late): the session is folded again, and it or others may be rejected.
    Late {
        session: usize,
        kind: usize,
        back: i64,
    },
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
        2 => (0..SESSIONS, 0..CANDIDATES.len(), 1i64..8)
            .prop_map(|(session, kind, back)| Step::Late { session, kind, back }),
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
    /// Every event each session received, in arrival order.
    received: HashMap<usize, Vec<Event>>,
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

/// The fold of a session's received events.
fn folded(events: &[Event]) -> timeline::Folded<Session> {
    timeline::fold::<Session, _>(events)
}

/// The candidates a session that received `events` accepts next (as its latest event).
fn legal_next(events: &[Event]) -> Vec<EventKind> {
    let state = folded(events).timeline.state;
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
                    let legal = legal_next(model.received.get(&session).map_or(&[], Vec::as_slice));
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
                    model.received.entry(session).or_default().push(event);
                    model.sent.push(incoming);
                }
                Step::LegalRun { session, picks } => {
                    let mut events = model.received.get(&session).cloned().unwrap_or_default();
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
                    model.received.insert(session, events);
                    model.sent.extend(batch);
                }
                Step::Illegal { session } => {
                    let has_phase_event = model
                        .received
                        .get(&session)
                        .is_some_and(|events| folded(events).timeline.state.counts().phase > 0);
                    if !has_phase_event {
                        continue;
                    }
                    let event = model.event(EventKind::Created);
                    let incoming =
                        IncomingEvent::new(session_id(session), Provider::Moneykit, event.clone());
                    let outcome = engine.ingest(incoming.clone()).await.unwrap();
                    prop_assert!(
                        matches!(outcome, IngestOutcome::Rejected { .. }),
                        "{:?}",
                        outcome
                    );
                    model.received.entry(session).or_default().push(event);
                    model.sent.push(incoming);
                }
                Step::Late {
                    session,
                    kind,
                    back,
                } => {
                    let events = model.received.entry(session).or_default();
                    let Some(latest) = events.iter().filter_map(|e| e.occurred_at).max() else {
                        continue;
                    };
                    let event = Event::new(CANDIDATES[kind].clone())
                        .at(latest - chrono::Duration::seconds(back))
                        .with_institution("ins_model", None);
                    events.push(event.clone());
                    let expected = folded(events);
                    let verdict = &expected
                        .placed
                        .iter()
                        .find(|placed| placed.arrival == events.len() as u64)
                        .unwrap()
                        .verdict;
                    let incoming =
                        IncomingEvent::new(session_id(session), Provider::Moneykit, event);
                    let outcome = engine.ingest(incoming.clone()).await.unwrap();
                    match (&outcome, verdict) {
                        (IngestOutcome::Accepted { rejected, .. }, Ok(_))
                        | (IngestOutcome::Rejected { rejected, .. }, Err(_)) => {
                            prop_assert_eq!(*rejected, expected.timeline.rejected);
                        }
                        // The same event (kind and time) sent before: one event.
                        (IngestOutcome::Duplicate { .. }, _) => {
                            model.received.get_mut(&session).unwrap().pop();
                        }
                        _ => prop_assert!(false, "{:?} against {:?}", outcome, verdict),
                    }
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
                let received = model.received.get(&session).cloned().unwrap_or_default();
                let expected = folded(&received);
                let history = engine.history(&id).await.unwrap().unwrap_or_default();
                prop_assert_eq!(history.len(), received.len());
                for (entry, placed) in history.iter().zip(&expected.placed) {
                    let event = &received[placed.arrival as usize - 1];
                    prop_assert_eq!(entry.version.0, placed.arrival);
                    prop_assert_eq!(entry.event.as_str(), event.kind.name());
                    prop_assert_eq!(entry.event_time, event.occurred_at);
                    prop_assert_eq!(entry.accepted, placed.verdict.is_ok());
                    prop_assert_eq!(entry.late, placed.late);
                }
                let view = engine.session(&id).await.unwrap();
                match view {
                    None => prop_assert!(received.is_empty()),
                    Some(view) => {
                        let Timeline {
                            state, rejected, ..
                        } = &expected.timeline;
                        prop_assert_eq!(&view.state, state);
                        prop_assert_eq!(view.rejected, *rejected);
                        prop_assert_eq!(view.events, received.len() as u64);
                    }
                }
                let listed = engine.rejected(Some(id)).await.unwrap();
                prop_assert_eq!(listed.events.len() as u32, expected.timeline.rejected);
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
    fn the_engine_agrees_with_the_fold_of_the_events_each_session_received(steps in proptest::collection::vec(step(), 1..40)) {
        run(steps)?;
    }
}
