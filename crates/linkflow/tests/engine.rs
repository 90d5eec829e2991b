//! The engine's behaviour a user relies on: outcomes, late events folded in event-time order,
//! rejected events, reopen, snapshot fallback, subscriptions and verify.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use linkflow::store::{Commit, EventStore, RawJson, SledStore, Snapshot};
use linkflow::{
    AccountFollow, Durability, Engine, EngineConfig, EngineError, EventError, IncomingEvent,
    IngestOutcome, SessionFilter,
};
use linkflow_core::{Event, EventKind, Phase, Position, Provider, SessionId, Version};

fn t(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 11, 29, 12, 0, second).unwrap()
}

fn sid(id: &str) -> SessionId {
    SessionId::new(id).unwrap()
}

fn incoming(session: &str, kind: EventKind, second: u32) -> IncomingEvent {
    IncomingEvent::new(
        sid(session),
        Provider::Moneykit,
        Event::new(kind).at(t(second)),
    )
}

fn select(session: &str, second: u32) -> IncomingEvent {
    IncomingEvent::new(
        sid(session),
        Provider::Moneykit,
        Event::new(EventKind::InstitutionSelected)
            .at(t(second))
            .with_institution("ins_1", Some("Bank")),
    )
}

fn accepted(outcome: &IngestOutcome) -> (Version, Position) {
    match outcome {
        IngestOutcome::Accepted {
            version, position, ..
        } => (*version, *position),
        other => panic!("expected accepted, got {other:?}"),
    }
}

/// The funnels from the counters equal the exact ones: counts exactly, time in phase within
/// the sketch's relative error.
fn assert_same_funnels(
    mut aggregated: Vec<linkflow_core::funnel::Funnel>,
    mut exact: Vec<linkflow_core::funnel::Funnel>,
) {
    let error = linkflow_core::aggregate::SKETCH_RELATIVE_ERROR;
    for (a, e) in aggregated.iter_mut().zip(exact.iter_mut()) {
        for (sa, se) in a.steps.iter_mut().zip(e.steps.iter_mut()) {
            for (qa, qe) in [
                (&mut sa.time_in_phase_p50_s, &mut se.time_in_phase_p50_s),
                (&mut sa.time_in_phase_p90_s, &mut se.time_in_phase_p90_s),
            ] {
                if let (Some(va), Some(ve)) = (*qa, *qe) {
                    assert!((va - ve).abs() <= error * ve + 1e-9, "{va} against {ve}");
                    *qa = Some(ve);
                }
            }
        }
    }
    assert_eq!(aggregated, exact);
}

fn open(dir: &tempfile::TempDir) -> Engine {
    Engine::open(dir.path()).unwrap()
}

#[tokio::test]
async fn a_legal_flow_is_accepted_with_gap_free_versions_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let outcomes = engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            select("s1", 1),
            incoming("s1", EventKind::OauthOpened, 2),
            incoming("s1", EventKind::ScreenChanged, 3),
            incoming("s1", EventKind::Succeeded, 4),
        ])
        .await
        .unwrap();
    let got: Vec<_> = outcomes.iter().map(accepted).collect();
    assert_eq!(got[0], (Version(1), Position(1)));
    assert_eq!(got[4], (Version(5), Position(5)));

    let view = engine.session(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(view.state.phase(), Phase::Succeeded);
    assert_eq!(view.provider, Provider::Moneykit);

    let history = engine.history(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(history.len(), 5);
    assert_eq!(history[2].event, "oauth_opened");
    assert_eq!(history[2].phase_before, Some(Phase::InstitutionSelected));
    assert_eq!(history[2].phase_after, Some(Phase::Authenticating));
    assert_eq!(history[3].phase_before, history[3].phase_after);
    assert!(history[3].rule.is_none());
    assert!(engine.history(&sid("nobody")).await.unwrap().is_none());
    assert!(engine.session(&sid("nobody")).await.unwrap().is_none());
}

#[tokio::test]
async fn a_duplicate_delivery_is_stored_once_and_points_at_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let first = engine
        .ingest(incoming("s1", EventKind::Opened, 0))
        .await
        .unwrap();
    let (_, position) = accepted(&first);
    // Twice in one batch and once more later.
    let outcomes = engine
        .ingest_batch(vec![
            select("s1", 1),
            select("s1", 1),
            incoming("s1", EventKind::Opened, 0),
        ])
        .await
        .unwrap();
    accepted(&outcomes[0]);
    assert!(
        matches!(&outcomes[1], IngestOutcome::Duplicate { original, .. }
        if matches!(original, linkflow::store::DedupeHit { position: Position(2), .. }))
    );
    assert!(
        matches!(&outcomes[2], IngestOutcome::Duplicate { original, .. }
        if matches!(original, linkflow::store::DedupeHit { position: p, .. } if *p == position))
    );
    assert_eq!(engine.head().unwrap(), Position(2));
}

/// An event of Knot's account of user `u1` at merchant 10, at `second`.
fn account_event(kind: linkflow_core::AccountEventKind, second: u32) -> IncomingEvent {
    merchant_account_event("10", kind, second)
}

/// Knot's account of user `u1` at `merchant`.
fn knot_account(merchant: &str) -> linkflow_core::AccountKey {
    linkflow_core::AccountKey {
        provider: Provider::Knot,
        external_user_id: "u1".into(),
        institution_id: merchant.into(),
    }
}

/// An event of Knot's account of user `u1` at `merchant`, at `second`.
fn merchant_account_event(
    merchant: &str,
    kind: linkflow_core::AccountEventKind,
    second: u32,
) -> IncomingEvent {
    let key = knot_account(merchant);
    IncomingEvent::with_body(
        key.stream_id().unwrap(),
        Provider::Knot,
        linkflow_core::EventBody::Account {
            account: key,
            event: linkflow_core::AccountEvent::new(kind).at(t(second)),
        },
    )
}

#[tokio::test]
async fn a_rejected_event_is_accepted_once_a_late_event_makes_it_legal() {
    use linkflow_core::AccountEventKind::{Linked, LoginRequired};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    // A broken login arrives before the link it breaks: the account does not exist yet, so it
    // is stored, rejected with the reason. (A session's repeated exit, the example this test
    // used before, is now recorded as a confirmation: `semantics.rs`.)
    let outcomes = engine
        .ingest_batch(vec![account_event(LoginRequired, 5)])
        .await
        .unwrap();
    let IngestOutcome::Rejected {
        reason,
        version,
        late,
        rejected,
        ..
    } = &outcomes[0]
    else {
        panic!("expected rejected, got {:?}", outcomes[0]);
    };
    assert!(
        reason.contains("not accepted for an account in state `absent`"),
        "{reason}"
    );
    assert_eq!((*version, *late, *rejected), (Version(1), false, 1));
    let stream = account_event(Linked, 0).session;
    let listed = engine.rejected(Some(stream.clone())).await.unwrap();
    assert_eq!(listed.events.len(), 1);
    assert_eq!(
        listed.events[0].entry.rejection.as_deref(),
        Some(&reason[..])
    );
    assert!(!listed.truncated);

    // The link at t1 arrives last: it sorts before the broken login, which is legal now.
    let outcome = engine.ingest(account_event(Linked, 1)).await.unwrap();
    let IngestOutcome::Accepted {
        version,
        late,
        rejected,
        ..
    } = outcome
    else {
        panic!("expected accepted, got {outcome:?}");
    };
    assert_eq!(version, Version(2));
    assert!(late);
    assert_eq!(rejected, 0);
    assert!(engine.rejected(None).await.unwrap().events.is_empty());
    let accounts = engine.accounts().await.unwrap();
    assert_eq!(
        accounts[0].account.state(),
        linkflow_core::AccountState::LoginRequired
    );
    // The history is in event-time order, with each event's arrival number.
    let history = engine.history(&stream).await.unwrap().unwrap();
    let order: Vec<(u64, &str, bool)> = history
        .iter()
        .map(|entry| (entry.version.0, entry.event.as_str(), entry.late))
        .collect();
    assert_eq!(order, [(2, "linked", true), (1, "login_required", false)]);
    assert!(history.iter().all(|entry| entry.accepted));
    assert!(engine.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn a_late_event_changes_the_classification_of_events_that_arrived_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    // Credentials at t40 are accepted on arrival...
    let outcomes = engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            incoming("s1", EventKind::CredentialsSubmitted, 40),
        ])
        .await
        .unwrap();
    accepted(&outcomes[1]);
    // ...then a success at t21 arrives: in event time the session succeeded first, so the
    // credentials are the rejected event, exactly as if the two had arrived in order.
    let outcome = engine
        .ingest(incoming("s1", EventKind::Succeeded, 21))
        .await
        .unwrap();
    assert!(
        matches!(
            outcome,
            IngestOutcome::Accepted {
                late: true,
                rejected: 1,
                phase_after: Some(Phase::Succeeded),
                ..
            }
        ),
        "{outcome:?}"
    );
    let history = engine.history(&sid("s1")).await.unwrap().unwrap();
    let verdicts: Vec<(u64, bool)> = history
        .iter()
        .map(|entry| (entry.version.0, entry.accepted))
        .collect();
    assert_eq!(verdicts, [(1, true), (3, true), (2, false)]);
    assert!(history[2]
        .rejection
        .as_deref()
        .unwrap()
        .contains("not accepted in phase `succeeded`"));
    // The same three events delivered in order give the same session.
    let in_order = tempfile::tempdir().unwrap();
    let other = open(&in_order);
    let outcomes = other
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            incoming("s1", EventKind::Succeeded, 21),
            incoming("s1", EventKind::CredentialsSubmitted, 40),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[2], IngestOutcome::Rejected { .. }));
    let a = engine.session(&sid("s1")).await.unwrap().unwrap();
    let b = other.session(&sid("s1")).await.unwrap().unwrap();
    assert_eq!((a.state, a.rejected), (b.state, b.rejected));
}

#[tokio::test]
async fn a_permanently_illegal_event_stays_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            select("s1", 1),
            incoming("s1", EventKind::Opened, 2),
        ])
        .await
        .unwrap();
    engine
        .ingest(incoming("s1", EventKind::ScreenChanged, 3))
        .await
        .unwrap();
    let listed = engine.rejected(None).await.unwrap();
    assert_eq!(listed.events.len(), 1);
    assert_eq!(listed.events[0].stream, sid("s1"));
    assert!(listed.events[0]
        .entry
        .rejection
        .as_deref()
        .unwrap()
        .contains("`opened` is not accepted in phase `institution_selected`"));
}

#[tokio::test]
async fn a_session_at_its_event_bound_turns_further_events_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.max_events_per_stream = 3;
    let engine = Engine::open_with(config).unwrap();
    let outcomes = engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            incoming("s1", EventKind::Opened, 1),
            incoming("s1", EventKind::ScreenChanged, 2),
            incoming("s1", EventKind::ScreenChanged, 3),
        ])
        .await
        .unwrap();
    assert!(matches!(outcomes[1], IngestOutcome::Rejected { .. }));
    assert!(matches!(outcomes[2], IngestOutcome::Accepted { .. }));
    let IngestOutcome::Refused {
        error: error @ EventError::StreamFull { limit: 3, .. },
    } = &outcomes[3]
    else {
        panic!("{:?}", outcomes[3]);
    };
    assert!(
        error.to_string().contains("already holds 3 events"),
        "{error}"
    );
    let view = engine.session(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(view.events, 3);
    let other = tempfile::tempdir().unwrap();
    let mut zero = EngineConfig::new(other.path());
    zero.max_events_per_stream = 0;
    assert!(matches!(
        Engine::open_with(zero),
        Err(EngineError::InvalidConfig(_))
    ));
}

#[tokio::test]
async fn an_event_for_another_providers_session_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine
        .ingest(incoming("s1", EventKind::Opened, 0))
        .await
        .unwrap();
    let mut knot = select("s1", 1);
    knot.provider = Provider::Knot;
    let outcome = engine.ingest(knot).await.unwrap();
    assert!(matches!(
        outcome,
        IngestOutcome::Refused {
            error: EventError::ProviderMismatch {
                stored: Provider::Moneykit,
                incoming: Provider::Knot,
                ..
            }
        }
    ));
}

#[tokio::test]
async fn an_oversized_event_is_refused_and_the_rest_of_the_batch_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let mut huge = incoming("s1", EventKind::ScreenChanged, 1);
    huge.raw = Some(RawJson::from_string(format!("\"{}\"", "x".repeat(10_000))).unwrap());
    let outcomes = engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            huge,
            select("s1", 2),
        ])
        .await
        .unwrap();
    accepted(&outcomes[0]);
    assert!(matches!(
        &outcomes[1],
        IngestOutcome::Refused {
            error: EventError::TooLarge { .. }
        }
    ));
    assert_eq!(accepted(&outcomes[2]).0, Version(2));
}

#[tokio::test]
async fn reopening_returns_the_same_sessions_histories_and_rejected_events() {
    let dir = tempfile::tempdir().unwrap();
    let (sessions, history, parked) = {
        let engine = open(&dir);
        engine
            .ingest_batch(vec![
                incoming("a", EventKind::Opened, 0),
                select("a", 1),
                incoming("a", EventKind::Opened, 2),
                incoming("b", EventKind::Exited, 3),
            ])
            .await
            .unwrap();
        let result = (
            engine.sessions(SessionFilter::default()).await.unwrap(),
            engine.history(&sid("a")).await.unwrap(),
            engine.rejected(None).await.unwrap(),
        );
        engine.shutdown().await.unwrap();
        result
    };
    let engine = open(&dir);
    assert_eq!(
        engine.sessions(SessionFilter::default()).await.unwrap(),
        sessions
    );
    assert_eq!(engine.history(&sid("a")).await.unwrap(), history);
    assert_eq!(engine.rejected(None).await.unwrap(), parked);
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0].rejected, 1);
    assert_eq!(parked.events.len(), 1);
    assert!(engine.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn sessions_are_listed_by_phase_provider_and_last_event_time() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let mut benji = select("b", 30);
    benji.provider = Provider::Benji;
    engine
        .ingest_batch(vec![
            incoming("a", EventKind::Opened, 10),
            benji,
            incoming("c", EventKind::Exited, 50),
        ])
        .await
        .unwrap();
    let ids = |views: Vec<linkflow::SessionView>| -> Vec<String> {
        views
            .into_iter()
            .map(|view| view.session_id.to_string())
            .collect()
    };
    let all = engine.sessions(SessionFilter::default()).await.unwrap();
    assert_eq!(ids(all), ["a", "b", "c"]);
    let opened = SessionFilter {
        phase: Some(Phase::Opened),
        ..SessionFilter::default()
    };
    assert_eq!(ids(engine.sessions(opened).await.unwrap()), ["a"]);
    let benji = SessionFilter {
        provider: Some(Provider::Benji),
        ..SessionFilter::default()
    };
    assert_eq!(ids(engine.sessions(benji).await.unwrap()), ["b"]);
    let window = SessionFilter {
        last_event_from: Some(t(20)),
        last_event_until: Some(t(50)),
        ..SessionFilter::default()
    };
    assert_eq!(ids(engine.sessions(window).await.unwrap()), ["b"]);
}

#[tokio::test]
async fn a_session_can_be_read_as_of_any_version() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            select("s1", 1),
            incoming("s1", EventKind::CredentialsSubmitted, 2),
        ])
        .await
        .unwrap();
    let at_two = engine
        .session_at(&sid("s1"), Version(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_two.state.phase(), Phase::InstitutionSelected);
    assert_eq!(at_two.events, 2);
    let error = engine.session_at(&sid("s1"), Version(9)).await.unwrap_err();
    assert!(matches!(
        error,
        EngineError::VersionOutOfRange {
            current: Version(3),
            ..
        }
    ));
    assert!(engine
        .session_at(&sid("x"), Version(1))
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn a_cache_miss_reads_the_snapshot_and_an_undecodable_snapshot_falls_back_to_replay() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    let mut config = EngineConfig::with_store(store.clone());
    config.cache_sessions = 1;
    let engine = Engine::open_with(config).unwrap();
    engine
        .ingest_batch(vec![
            incoming("a", EventKind::Opened, 0),
            select("a", 1),
            incoming("b", EventKind::Opened, 2),
            incoming("c", EventKind::Opened, 3),
        ])
        .await
        .unwrap();
    // `a` was pushed out of the one-entry cache: it comes from its snapshot.
    let from_snapshot = engine.session(&sid("a")).await.unwrap().unwrap();
    assert_eq!(from_snapshot.state.phase(), Phase::InstitutionSelected);

    // Replace the snapshot with one this build cannot read.
    store
        .commit(Commit {
            appends: Vec::new(),
            snapshots: vec![(
                sid("a"),
                Snapshot {
                    compacted: Version::EMPTY,
                    provider: Provider::Moneykit,
                    version: Version(2),
                    state: b"\xfffrom the future".to_vec(),
                },
            )],
            ..Commit::default()
        })
        .unwrap();
    engine.session(&sid("b")).await.unwrap();
    engine.session(&sid("c")).await.unwrap();
    let replayed = engine.session(&sid("a")).await.unwrap().unwrap();
    assert_eq!(replayed.state, from_snapshot.state);
    let report = engine.verify().await.unwrap();
    assert!(report
        .problems
        .iter()
        .any(|problem| problem.record == "snapshot of `a`"
            && problem.message.contains("cannot be decoded")));
    // The next accepted event rewrites the snapshot.
    engine
        .ingest(incoming("a", EventKind::CredentialsSubmitted, 4))
        .await
        .unwrap();
    assert!(engine.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn a_subscription_catches_up_then_follows_live_without_gap_or_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    for n in 0..20u32 {
        engine
            .ingest(incoming(
                &format!("s{}", n % 4),
                EventKind::ScreenChanged,
                n,
            ))
            .await
            .unwrap();
    }
    let mut subscription = engine.subscribe(Position(5));
    let writer = {
        let engine = engine.clone();
        tokio::spawn(async move {
            for n in 20..60u32 {
                engine
                    .ingest(incoming(
                        &format!("s{}", n % 4),
                        EventKind::ScreenChanged,
                        n,
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    let mut seen = Vec::new();
    while seen.len() < 55 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscription keeps up")
            .unwrap();
        seen.push(event.position.0);
    }
    writer.await.unwrap();
    assert_eq!(seen, (6..=60).collect::<Vec<u64>>());
    assert_eq!(subscription.position(), Position(60));
}

#[tokio::test]
async fn buffered_durability_acknowledges_and_stores_the_same_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EngineConfig::new(dir.path());
    config.durability = Durability::Buffered;
    let engine = Engine::open_with(config).unwrap();
    let outcome = engine
        .ingest(incoming("s1", EventKind::Opened, 0))
        .await
        .unwrap();
    accepted(&outcome);
    let mut subscription = engine.subscribe(Position::START);
    assert_eq!(subscription.next().await.unwrap().position, Position(1));
    engine.shutdown().await.unwrap();
    assert!(matches!(
        engine
            .ingest(incoming("s1", EventKind::ScreenChanged, 1))
            .await,
        Err(EngineError::Closed)
    ));
}

/// Concurrent durable writers share group commits: every caller must be answered, once, with
/// its own outcome; subscribers must see every position in order; a shutdown among in-flight
/// writes must answer them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_durable_writers_are_all_answered_and_seen_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let mut subscription = engine.subscribe(Position::START);
    let writers: Vec<_> = (0..16u32)
        .map(|task| {
            let engine = engine.clone();
            tokio::spawn(async move {
                let mut versions = Vec::new();
                for n in 0..25u32 {
                    let outcome = engine
                        .ingest(incoming(&format!("w{task}"), EventKind::ScreenChanged, n))
                        .await
                        .unwrap();
                    versions.push(accepted(&outcome).0 .0);
                }
                versions
            })
        })
        .collect();
    for writer in writers {
        assert_eq!(writer.await.unwrap(), (1..=25).collect::<Vec<u64>>());
    }
    let mut seen = Vec::new();
    while seen.len() < 400 {
        seen.push(subscription.next().await.unwrap().position.0);
    }
    assert_eq!(seen, (1..=400).collect::<Vec<u64>>());

    // Writes racing a shutdown: each is answered, accepted or `Closed`, none is dropped.
    let racing: Vec<_> = (0..16u32)
        .map(|task| {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .ingest(incoming(&format!("w{task}"), EventKind::ScreenChanged, 30))
                    .await
            })
        })
        .collect();
    engine.shutdown().await.unwrap();
    let mut landed = 0;
    for racer in racing {
        match racer.await.unwrap() {
            Ok(outcome) => {
                accepted(&outcome);
                landed += 1;
            }
            Err(EngineError::Closed) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    drop(subscription);
    drop(engine);
    let reopened = open(&dir);
    let report = reopened.verify().await.unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    let total: u64 = reopened
        .sessions(SessionFilter::default())
        .await
        .unwrap()
        .iter()
        .map(|view| view.state.version().0)
        .sum();
    assert_eq!(total, 400 + landed);
}

fn with_user(mut event: IncomingEvent, user: &str) -> IncomingEvent {
    if let Some(session_event) = event.session_event_mut() {
        session_event.attributes.external_user_id = Some(user.into());
    }
    event
}

fn success_at(session: &str, second: u32, institution: &str) -> IncomingEvent {
    IncomingEvent::new(
        sid(session),
        Provider::Moneykit,
        Event::new(EventKind::Succeeded)
            .at(t(second))
            .with_institution(institution, None),
    )
}

#[tokio::test]
async fn the_linked_account_follows_the_sessions_fold() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let outcomes = engine
        .ingest_batch(vec![
            with_user(incoming("s1", EventKind::Opened, 0), "u1"),
            success_at("s1", 40, "bank_x"),
        ])
        .await
        .unwrap();
    let IngestOutcome::Accepted { accounts, .. } = &outcomes[1] else {
        panic!("{:?}", outcomes[1]);
    };
    let [AccountFollow::Linked {
        stream: linked_x, ..
    }] = accounts.as_slice()
    else {
        panic!("{accounts:?}");
    };
    assert!(linked_x.as_str().ends_with("bank_x"), "{linked_x}");
    // A success at t30 naming another bank arrives late: it is the session's success now, the
    // one at t40 only confirms it (a success reported again keeps the first one's bank), and
    // the account follows: bank_x's link is withdrawn, bank_y is linked.
    let outcome = engine.ingest(success_at("s1", 30, "bank_y")).await.unwrap();
    let IngestOutcome::Accepted {
        accounts,
        late: true,
        rejected: 0,
        ..
    } = &outcome
    else {
        panic!("{outcome:?}");
    };
    assert!(
        matches!(
            accounts.as_slice(),
            [AccountFollow::Withdrawn { stream: x, .. }, AccountFollow::Linked { stream: y, .. }]
                if x == linked_x && y.as_str().ends_with("bank_y")
        ),
        "{accounts:?}"
    );
    let active: Vec<String> = engine
        .accounts()
        .await
        .unwrap()
        .into_iter()
        .map(|view| view.key.institution_id)
        .collect();
    assert_eq!(active, ["bank_y"]);
    let history = engine.history(linked_x).await.unwrap().unwrap();
    let names: Vec<&str> = history.iter().map(|entry| entry.event.as_str()).collect();
    assert_eq!(names, ["linked", "link_withdrawn"]);
    assert_eq!(
        history[1].event_time,
        Some(t(40)),
        "the withdrawn success's time"
    );
    // The same late success delivered again changes nothing.
    let again = engine.ingest(success_at("s1", 30, "bank_y")).await.unwrap();
    assert!(
        matches!(again, IngestOutcome::Duplicate { .. }),
        "{again:?}"
    );
    assert_eq!(engine.accounts().await.unwrap().len(), 1);
    assert!(engine.verify().await.unwrap().is_clean());
}

#[tokio::test]
async fn a_success_without_a_user_says_why_no_account_was_linked() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let outcomes = engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            success_at("s1", 5, "bank_x"),
        ])
        .await
        .unwrap();
    let IngestOutcome::Accepted { accounts, .. } = &outcomes[1] else {
        panic!("{:?}", outcomes[1]);
    };
    assert!(
        matches!(accounts.as_slice(), [AccountFollow::NotLinked { reason }]
            if reason.contains("no external user id")),
        "{accounts:?}"
    );
    assert!(engine.accounts().await.unwrap().is_empty());
    // Telemetry after the success does not repeat it.
    let outcome = engine
        .ingest(incoming("s1", EventKind::ScreenChanged, 6))
        .await
        .unwrap();
    assert!(
        matches!(&outcome, IngestOutcome::Accepted { accounts, .. } if accounts.is_empty()),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn a_late_institution_selection_takes_its_place_and_nothing_is_rejected() {
    // The example: open (t0), credentials (t20), success (t40), then the selection
    // (t10) arriving last.
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine
        .ingest_batch(vec![
            incoming("s1", EventKind::Opened, 0),
            incoming("s1", EventKind::CredentialsSubmitted, 20),
            incoming("s1", EventKind::Succeeded, 40),
        ])
        .await
        .unwrap();
    let outcome = engine.ingest(select("s1", 10)).await.unwrap();
    assert!(
        matches!(
            outcome,
            IngestOutcome::Accepted {
                late: true,
                rejected: 0,
                ..
            }
        ),
        "{outcome:?}"
    );
    let view = engine.session(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(view.state.phase(), Phase::Succeeded);
    assert_eq!(view.state.institution().unwrap().id, "ins_1");
    assert!(view.state.journey().visited(Phase::InstitutionSelected));
    let history = engine.history(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(history[1].event, "institution_selected");
    assert_eq!(
        (history[1].phase_before, history[1].phase_after),
        (Some(Phase::Opened), Some(Phase::InstitutionSelected))
    );
    assert!(history[1].late);
    // `show --at 3` is the session before the selection arrived.
    let at_three = engine
        .session_at(&sid("s1"), Version(3))
        .await
        .unwrap()
        .unwrap();
    assert!(at_three.state.institution().is_none());
    assert!(!at_three.state.journey().visited(Phase::InstitutionSelected));
    assert!(engine.rejected(None).await.unwrap().events.is_empty());
}

/// Stores session `s1` as rules other than this build's left it: opened (user `u1`), then a
/// success at `bank_x` those rules rejected, with their snapshot; then, when `compact`, compacts
/// it to that snapshot.
fn store_a_session_folded_with_other_rules(store: &SledStore, compact: bool) {
    use linkflow::store::{Append, NewEvent};
    use linkflow_core::compact::to_compact;
    use linkflow_core::timeline::Timeline;
    use linkflow_core::{EventBody, Session, RULES_VERSION};

    let mut opened = Event::new(EventKind::Opened).at(t(0));
    opened.attributes.external_user_id = Some("u1".into());
    let success = Event::new(EventKind::Succeeded)
        .at(t(40))
        .with_institution("bank_x", None);
    let new = |n: u8, event: Event| NewEvent {
        event_id: uuid::Uuid::now_v7(),
        dedupe_key: linkflow::store::DedupeKey::derive(&[b"other rules", &[n]]),
        provider: Provider::Moneykit,
        body: EventBody::Session(event),
        raw_name: None,
        raw: None,
        received_at: t(n.into()),
    };
    let append = |expected: u64, event: NewEvent, rejected: bool| Append {
        stream: sid("s1"),
        expected: Version(expected),
        stored_at: event.received_at,
        event,
        rejected,
    };
    // The old rules' fold: the open accepted, the success rejected.
    let mut old = Timeline::<Session>::default();
    old.append(&opened);
    old.arrivals = 2;
    old.rejected = 1;
    let snapshot = |old: &Timeline<Session>| {
        let mut state = vec![linkflow::folded::SNAPSHOT_LAYOUT, (RULES_VERSION + 1) as u8];
        state.extend(to_compact(&linkflow::Folded::Session(Box::new(
            old.clone(),
        ))));
        Snapshot {
            compacted: Version(old.compacted),
            provider: Provider::Moneykit,
            version: Version(2),
            state,
        }
    };
    store
        .commit(Commit {
            appends: vec![
                append(0, new(0, opened), false),
                append(1, new(1, success), true),
            ],
            snapshots: vec![(sid("s1"), snapshot(&old))],
            ..Commit::default()
        })
        .unwrap();
    if compact {
        old.compacted = 2;
        assert_eq!(store.compact(&sid("s1"), snapshot(&old)).unwrap(), 2);
    }
    store.sync().unwrap();
}

/// Rule changes re-interpret history: a store whose snapshot was folded with other rules (here:
/// rules under which the session's success was rejected, so no account was linked) is folded
/// again when the engine opens, and the account follows, with no redrive. The next open finds
/// the store's marker and walks nothing.
#[tokio::test]
async fn a_store_folded_with_other_rules_is_folded_again_at_open_and_its_account_follows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store_a_session_folded_with_other_rules(&store, false);
    }
    let engine = open(&dir);
    let report = engine.refolded_at_open();
    assert!(report.ran);
    assert_eq!((report.streams, report.linked, report.withdrawn), (1, 1, 0));
    let view = engine.session(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(view.state.phase(), Phase::Succeeded);
    assert_eq!(view.rejected, 0);
    let accounts = engine.accounts().await.unwrap();
    assert_eq!(accounts.len(), 1);
    assert_eq!(accounts[0].key.institution_id, "bank_x");
    assert!(engine.verify().await.unwrap().is_clean());
    let query = linkflow_core::funnel::FunnelQuery::at(t(59));
    assert_same_funnels(
        engine.funnel(query.clone()).await.unwrap(),
        engine.funnel_rebuilt(query).await.unwrap(),
    );
    engine.shutdown().await.unwrap();
    drop(engine);
    let again = open(&dir);
    assert!(
        !again.refolded_at_open().ran,
        "the marker says nothing is left"
    );
    assert_eq!(again.accounts().await.unwrap().len(), 1);
}

/// Finding 5 of issue 25: a stream whose stored data cannot be read fails only its own events;
/// the other sessions of the same group commit.
#[tokio::test]
async fn a_stream_that_cannot_be_read_fails_only_its_own_events() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SledStore::open(dir.path()).unwrap());
    {
        let engine = Engine::open_with(EngineConfig::with_store(store.clone())).unwrap();
        engine
            .ingest_batch(vec![
                incoming("a", EventKind::Opened, 0),
                incoming("b", EventKind::Opened, 0),
            ])
            .await
            .unwrap();
        engine.shutdown().await.unwrap();
    }
    // Damage session a's head (its dedupe list and snapshot): `K`, then the id.
    store.raw_insert_for_tests(b"Ka", &[0xff, 0x01]).unwrap();
    let engine = Engine::open_with(EngineConfig::with_store(store.clone())).unwrap();
    let outcomes = engine
        .ingest_batch(vec![
            select("a", 1),
            select("b", 1),
            incoming("c", EventKind::Opened, 2),
        ])
        .await
        .unwrap();
    let IngestOutcome::Refused {
        error: EventError::StreamUnreadable { session, reason },
    } = &outcomes[0]
    else {
        panic!("{:?}", outcomes[0]);
    };
    assert_eq!(session, &sid("a"));
    assert!(reason.contains("head of stream `a`"), "{reason}");
    assert_eq!(accepted(&outcomes[1]).0, Version(2));
    assert_eq!(accepted(&outcomes[2]).0, Version(1));
    assert!(
        !engine.verify().await.unwrap().is_clean(),
        "verify names the damage"
    );
}

/// A compacted session cannot be folded again (its events are no longer stored): a change of
/// the rules keeps its state as its snapshot says (here: the old rules rejected its success, so
/// it stays opened and links no account), rewrites the snapshot with the new rules' number, and
/// verify, the counted funnel and the one folded again from the log agree.
#[tokio::test]
async fn a_compacted_session_keeps_its_state_through_a_change_of_rules() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store_a_session_folded_with_other_rules(&store, true);
    }
    let engine = open(&dir);
    assert!(engine.refolded_at_open().ran);
    let view = engine.session(&sid("s1")).await.unwrap().unwrap();
    assert_eq!(
        view.state.phase(),
        Phase::Opened,
        "the old rules' state stays"
    );
    assert_eq!((view.events, view.rejected), (2, 1));
    assert_eq!(view.compacted_at, Some(Version(2)));
    assert!(engine.accounts().await.unwrap().is_empty());
    let report = engine.verify().await.unwrap();
    assert!(report.is_clean(), "{:?}", report.problems);
    let query = linkflow_core::funnel::FunnelQuery::at(t(59));
    assert_same_funnels(
        engine.funnel(query.clone()).await.unwrap(),
        engine.funnel_rebuilt(query).await.unwrap(),
    );
    engine.shutdown().await.unwrap();
    drop(engine);
    let again = open(&dir);
    assert!(!again.refolded_at_open().ran);
    assert_eq!(
        again
            .session(&sid("s1"))
            .await
            .unwrap()
            .unwrap()
            .compacted_at,
        Some(Version(2))
    );
}

/// A session compacted at its version whose snapshot no longer reads as one (damaged) has
/// nothing to fold it from: verify names it, and the funnel folded again from the log fails
/// naming it rather than leaving it out.
#[tokio::test]
async fn a_compacted_session_whose_snapshot_is_damaged_is_named_not_skipped() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = SledStore::open(dir.path()).unwrap();
        store_a_session_folded_with_other_rules(&store, false);
        let damaged = Snapshot {
            compacted: Version(2),
            provider: Provider::Moneykit,
            version: Version(2),
            state: vec![linkflow::folded::SNAPSHOT_LAYOUT, 0xff],
        };
        assert_eq!(store.compact(&sid("s1"), damaged).unwrap(), 2);
        store.set_folded_with(linkflow_core::RULES_VERSION).unwrap();
        store.sync().unwrap();
    }
    let engine = open(&dir);
    let report = engine.verify().await.unwrap();
    assert!(
        report
            .problems
            .iter()
            .any(|problem| problem.record == "snapshot of `s1`"
                && problem.message.contains("cannot be read as one")),
        "{:?}",
        report.problems
    );
    let error = engine
        .funnel_rebuilt(linkflow_core::funnel::FunnelQuery::at(t(59)))
        .await
        .unwrap_err();
    assert!(
        error.is_damage() && error.to_string().contains("`s1`"),
        "{error}"
    );
    assert!(engine.session(&sid("s1")).await.unwrap_err().is_damage());
}

/// Pages of sessions: every session that matches is on exactly one page, in id order, while
/// other sessions are written between pages; a page reads at most `MAX_PAGE_SCAN` streams.
#[tokio::test]
async fn pages_of_sessions_cover_every_match_once_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let ids: Vec<String> = (0..57).map(|n| format!("s-{n}")).collect();
    engine
        .ingest_batch(
            ids.iter()
                .map(|id| incoming(id, EventKind::Opened, 0))
                .collect(),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    let mut round = 0;
    loop {
        let page = engine
            .sessions_page(SessionFilter::default(), 10, after.take())
            .await
            .unwrap();
        assert!(page.sessions.len() <= 10);
        seen.extend(page.sessions.iter().map(|view| view.session_id.to_string()));
        // Writes between pages: new sessions (before and after the cursor) and new events of
        // listed and unlisted ones.
        round += 1;
        engine
            .ingest_batch(vec![
                incoming(&format!("new-{round}"), EventKind::Opened, 0),
                incoming(&format!("z-{round}"), EventKind::Opened, 0),
                incoming("s-3", EventKind::Exited, round),
                incoming("s-50", EventKind::Exited, round),
            ])
            .await
            .unwrap();
        // The text form round-trips.
        match page.next {
            Some(next) => after = Some(next.to_string().parse::<linkflow::Cursor>().unwrap()),
            None => break,
        }
    }
    for id in &ids {
        assert_eq!(seen.iter().filter(|seen| *seen == id).count(), 1, "{id}");
    }
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "pages are in id order");
    // A filter and a limit: only exited sessions, at most 2 a page.
    let page = engine
        .sessions_page(
            SessionFilter {
                phase: Some(Phase::Exited),
                ..SessionFilter::default()
            },
            2,
            None,
        )
        .await
        .unwrap();
    let exited: Vec<String> = page
        .sessions
        .iter()
        .map(|view| view.session_id.to_string())
        .collect();
    assert_eq!(exited, ["s-3", "s-50"]);
    assert!("s2.00".parse::<linkflow::Cursor>().is_err());
}

/// Pages read from the indexes (a user, an institution, abandonment, a phase, a first event
/// window, a provider): every session that matches for the whole paging is on exactly one
/// page while other sessions are written and changed between pages, each page holds only
/// matches, the answer equals the unpaged list, and a cursor of another listing is refused.
#[tokio::test]
async fn index_pages_cover_every_steady_match_once_while_writes_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let old = Utc::now() - chrono::Duration::hours(3);
    let event = |n: u32, kind: EventKind, at: DateTime<Utc>| {
        let provider = [Provider::Moneykit, Provider::Plaid, Provider::Knot][n as usize % 3];
        let mut event = Event::new(kind)
            .at(at)
            .with_institution(format!("bank_{}", n % 4), None);
        event.attributes.external_user_id = Some(format!("user_{}", n % 5));
        IncomingEvent::new(sid(&format!("x-{n:03}")), provider, event)
    };
    let mut batch = Vec::new();
    for n in 0..90u32 {
        let at = old + chrono::Duration::minutes(i64::from(n));
        batch.push(event(n, EventKind::Opened, at));
        if n % 3 == 0 {
            batch.push(event(
                n,
                EventKind::Exited,
                at + chrono::Duration::seconds(5),
            ));
        }
    }
    engine.ingest_batch(batch).await.unwrap();
    let filters = [
        SessionFilter {
            external_user_id: Some("user_2".into()),
            ..SessionFilter::default()
        },
        SessionFilter {
            institution: Some("bank_1".into()),
            ..SessionFilter::default()
        },
        SessionFilter {
            abandoned: Some(true),
            ..SessionFilter::default()
        },
        SessionFilter {
            phase: Some(Phase::Exited),
            ..SessionFilter::default()
        },
        SessionFilter {
            first_event_from: Some(old + chrono::Duration::minutes(20)),
            first_event_until: Some(old + chrono::Duration::minutes(70)),
            ..SessionFilter::default()
        },
        SessionFilter {
            provider: Some(Provider::Plaid),
            institution: None,
            phase: Some(Phase::Opened),
            ..SessionFilter::default()
        },
        SessionFilter {
            provider: Some(Provider::Knot),
            ..SessionFilter::default()
        },
    ];
    let mut round = 0u32;
    for filter in filters {
        // The steady matches: sessions the writes below never touch.
        let before: Vec<String> = engine
            .sessions(filter.clone())
            .await
            .unwrap()
            .into_iter()
            .map(|view| view.session_id.to_string())
            .filter(|id| id.as_str() < "x-080")
            .collect();
        assert!(!before.is_empty(), "{filter:?} matches something");
        let mut seen: Vec<String> = Vec::new();
        let mut after = None;
        loop {
            let page = engine
                .sessions_page(filter.clone(), 4, after.take())
                .await
                .unwrap();
            assert!(page.sessions.len() <= 4);
            let now = Utc::now();
            for view in &page.sessions {
                let abandoned =
                    linkflow_core::funnel::abandoned(&view.state, now, engine.inactivity_timeout());
                assert!(
                    filter.abandoned.is_none_or(|wanted| wanted == abandoned)
                        && filter.phase.is_none_or(|phase| view.state.phase() == phase)
                        && filter.provider.is_none_or(|p| view.provider == p),
                    "{filter:?} listed {}",
                    view.session_id
                );
            }
            seen.extend(page.sessions.iter().map(|view| view.session_id.to_string()));
            // Writes between pages: new sessions, and sessions 80 to 89 moving between
            // phases, users and times.
            round += 1;
            let churn = 80 + round % 10;
            engine
                .ingest_batch(vec![
                    event(200 + round, EventKind::Opened, old),
                    event(churn, EventKind::InstitutionSelected, Utc::now()),
                ])
                .await
                .unwrap();
            match page.next {
                Some(next) => after = Some(next.to_string().parse::<linkflow::Cursor>().unwrap()),
                None => break,
            }
        }
        for id in &seen {
            assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{id} repeated");
        }
        for id in &before {
            assert!(seen.contains(id), "{filter:?} skipped {id}");
        }
    }
    // A cursor of an index listing is refused by a listing in id order, and the other way.
    let page = engine
        .sessions_page(
            SessionFilter {
                phase: Some(Phase::Exited),
                ..SessionFilter::default()
            },
            1,
            None,
        )
        .await
        .unwrap();
    let index_cursor = page.next.expect("more than one exited session");
    let error = engine
        .sessions_page(SessionFilter::default(), 1, Some(index_cursor))
        .await
        .unwrap_err();
    assert!(
        matches!(error, linkflow::EngineError::WrongCursor { .. }),
        "{error}"
    );
    let id_cursor = engine
        .sessions_page(SessionFilter::default(), 1, None)
        .await
        .unwrap()
        .next
        .unwrap();
    let error = engine
        .sessions_page(
            SessionFilter {
                phase: Some(Phase::Exited),
                ..SessionFilter::default()
            },
            1,
            Some(id_cursor),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(error, linkflow::EngineError::WrongCursor { .. }),
        "{error}"
    );
    assert!(engine.verify().await.unwrap().is_clean());
}

/// Pages of parked events come from the index of streams with rejected events: every
/// rejected event once, in the order of the whole list, a stream's events split across pages
/// where the limit falls; a stream whose events are all accepted again leaves the index.
#[tokio::test]
async fn parked_events_come_in_pages_from_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let mut batch = Vec::new();
    for stream in ["p-a", "p-b", "p-c"] {
        batch.push(incoming(stream, EventKind::Opened, 0));
        batch.push(incoming(stream, EventKind::Succeeded, 10));
        // Opens after the success: each one rejected.
        for second in 20..24 {
            batch.push(incoming(stream, EventKind::Opened, second));
        }
    }
    batch.push(incoming("p-fine", EventKind::Opened, 0));
    engine.ingest_batch(batch).await.unwrap();
    let all = engine.rejected(None).await.unwrap();
    assert_eq!(all.events.len(), 12);
    assert!(!all.truncated && all.next.is_none());
    let mut paged = Vec::new();
    let mut after = None;
    loop {
        let page = engine.rejected_page(5, after.take()).await.unwrap();
        assert!(page.events.len() <= 5);
        paged.extend(
            page.events
                .iter()
                .map(|e| (e.stream.to_string(), e.entry.version)),
        );
        match page.next {
            Some(next) => after = Some(next.to_string().parse::<linkflow::Cursor>().unwrap()),
            None => break,
        }
    }
    let whole: Vec<_> = all
        .events
        .iter()
        .map(|e| (e.stream.to_string(), e.entry.version))
        .collect();
    assert_eq!(paged, whole);
    let error = engine
        .rejected_page(
            5,
            Some(
                engine
                    .sessions_page(SessionFilter::default(), 1, None)
                    .await
                    .unwrap()
                    .next
                    .unwrap(),
            ),
        )
        .await
        .unwrap_err();
    assert!(matches!(error, linkflow::EngineError::WrongCursor { .. }));
    assert!(engine.verify().await.unwrap().is_clean());
}

/// Accounts are a range of the store's streams: pages of them cover each once, and a user's
/// accounts are found by their key's prefix, whatever else the store holds.
#[tokio::test]
async fn accounts_come_in_pages_and_by_user() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let linked = |n: u32| {
        let key = linkflow_core::AccountKey {
            provider: Provider::Knot,
            external_user_id: format!("u{}", n % 3),
            institution_id: n.to_string(),
        };
        IncomingEvent::with_body(
            key.stream_id().unwrap(),
            Provider::Knot,
            linkflow_core::EventBody::Account {
                account: key,
                event: linkflow_core::AccountEvent::new(linkflow_core::AccountEventKind::Linked)
                    .at(t(1)),
            },
        )
    };
    let mut batch: Vec<IncomingEvent> = (0..25).map(linked).collect();
    batch.extend((0..30).map(|n| incoming(&format!("s-{n}"), EventKind::Opened, 0)));
    engine.ingest_batch(batch).await.unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = engine.accounts_page(10, after.take()).await.unwrap();
        assert!(page.accounts.len() <= 10);
        seen.extend(
            page.accounts
                .iter()
                .map(|view| view.key.institution_id.clone()),
        );
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    seen.sort_by_key(|id| id.parse::<u32>().unwrap());
    assert_eq!(seen, (0..25).map(|n| n.to_string()).collect::<Vec<_>>());
    let user_1 = engine.user_accounts("u1").await.unwrap();
    assert_eq!(user_1.len(), 8, "institutions 1, 4, ..., 22");
    assert!(user_1.iter().all(|view| view.key.external_user_id == "u1"));
    assert!(engine.user_accounts("u").await.unwrap().is_empty());
}

/// A subscription is a `Stream` of events: catch-up then live, ending when the engine is gone.
#[tokio::test]
async fn a_subscription_is_a_stream_that_ends_with_the_engine() {
    use futures_util::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    engine
        .ingest_batch(vec![
            incoming("a", EventKind::Opened, 0),
            incoming("b", EventKind::Opened, 0),
        ])
        .await
        .unwrap();
    let mut stream = Box::pin(engine.subscribe(Position(1)).into_stream());
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.position, Position(2), "after is exclusive");
    engine
        .ingest(incoming("c", EventKind::Opened, 0))
        .await
        .unwrap();
    assert_eq!(stream.next().await.unwrap().unwrap().position, Position(3));
    engine.shutdown().await.unwrap();
    drop(engine);
    assert!(
        stream.next().await.is_none(),
        "the stream ends with the engine"
    );
}

/// A page reads at most `MAX_PAGE_SCAN` streams: a filter no index serves (a last event
/// window) that matches nothing ends the first page there, empty, with a cursor to go on from;
/// the next page reads the rest and ends. A filter an index serves reads only its matches.
#[tokio::test]
async fn a_page_reads_at_most_max_page_scan_streams() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let total = linkflow::MAX_PAGE_SCAN + 5;
    for chunk in (0..total).collect::<Vec<_>>().chunks(2_000) {
        engine
            .ingest_batch(
                chunk
                    .iter()
                    .map(|n| incoming(&format!("s-{n:06}"), EventKind::Opened, 0))
                    .collect(),
            )
            .await
            .unwrap();
    }
    let indexed = SessionFilter {
        phase: Some(Phase::Succeeded),
        ..SessionFilter::default()
    };
    let page = engine.sessions_page(indexed, 10, None).await.unwrap();
    assert!(page.sessions.is_empty() && page.next.is_none());
    let none = SessionFilter {
        last_event_until: Some(t(0)),
        ..SessionFilter::default()
    };
    let first = engine.sessions_page(none.clone(), 10, None).await.unwrap();
    assert!(first.sessions.is_empty());
    let next = first
        .next
        .expect("the scan budget ended the page, not the store");
    assert_eq!(
        next.to_string(),
        format!(
            "s1.{}",
            format!("s-{:06}", linkflow::MAX_PAGE_SCAN - 1)
                .bytes()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        )
    );
    let second = engine.sessions_page(none, 10, Some(next)).await.unwrap();
    assert!(second.sessions.is_empty());
    assert!(second.next.is_none());
}

/// One account read by its key: the exact stream, not a longer id it is a prefix of (`10` is a
/// prefix of `100`), and nothing for an account that was never linked.
#[tokio::test]
async fn one_account_is_read_by_its_key() {
    use linkflow_core::AccountEventKind::{Linked, LoginRequired};
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    let at = merchant_account_event;
    engine
        .ingest_batch(vec![
            at("100", Linked, 1),
            at("10", Linked, 2),
            at("10", LoginRequired, 3),
        ])
        .await
        .unwrap();
    let key = knot_account;
    let ten = engine.account(&key("10")).await.unwrap().expect("linked");
    assert_eq!(ten.key, key("10"));
    assert_eq!(
        ten.account.state(),
        linkflow_core::AccountState::LoginRequired
    );
    let hundred = engine.account(&key("100")).await.unwrap().expect("linked");
    assert_eq!(hundred.account.state(), linkflow_core::AccountState::Active);
    assert!(engine.account(&key("1")).await.unwrap().is_none());
    assert!(engine.account(&key("1000")).await.unwrap().is_none());
    let mut stranger = key("10");
    stranger.external_user_id = "u2".into();
    assert!(engine.account(&stranger).await.unwrap().is_none());
}

/// Recent sessions: newest first by their first event, paged below the cursor with nothing
/// twice or left out, within a first-event window, with the other fields checked on each.
#[tokio::test]
async fn recent_sessions_come_newest_first_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(&dir);
    // Session s<n> starts at second n; every third one also exits.
    let mut events = Vec::new();
    for n in 0..30u32 {
        let id = format!("s{n:02}");
        events.push(incoming(&id, EventKind::Opened, n));
        if n % 3 == 0 {
            events.push(incoming(&id, EventKind::Exited, n + 1));
        }
    }
    // Arrival order is not time order.
    events.reverse();
    engine.ingest_batch(events).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let page = engine
            .recent_sessions_page(SessionFilter::default(), 7, cursor)
            .await
            .unwrap();
        seen.extend(page.sessions.iter().map(|view| view.session_id.to_string()));
        match page.next {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..30).rev().map(|n| format!("s{n:02}")).collect();
    assert_eq!(seen, expected);
    // A window and a filter checked on the session.
    let filter = SessionFilter {
        first_event_from: Some(t(10)),
        first_event_until: Some(t(25)),
        phase: Some(Phase::Exited),
        ..SessionFilter::default()
    };
    let page = engine
        .recent_sessions_page(filter, 100, None)
        .await
        .unwrap();
    let ids: Vec<String> = page
        .sessions
        .iter()
        .map(|view| view.session_id.to_string())
        .collect();
    assert_eq!(ids, ["s24", "s21", "s18", "s15", "s12"]);
    assert!(page.next.is_none());
    // A cursor from another listing's kind is refused, not misread.
    let by_id = engine
        .sessions_page(SessionFilter::default(), 1, None)
        .await
        .unwrap()
        .next
        .unwrap();
    assert!(matches!(
        engine
            .recent_sessions_page(SessionFilter::default(), 1, Some(by_id))
            .await,
        Err(EngineError::WrongCursor { .. })
    ));
}
