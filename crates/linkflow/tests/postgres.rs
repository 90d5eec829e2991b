//! Two engines ("nodes") on one PostgreSQL database, in one process: every event delivered to
//! both at once, events of one session racing on different nodes, a parked event made legal by
//! the other node. The multi-process version is `tests/multi_node.rs` at the top level.

use std::collections::{HashMap, HashSet};

use chrono::{TimeZone, Utc};
use linkflow::{Engine, EngineConfig, IncomingEvent, IngestOutcome};
use linkflow_core::{Event, EventKind, Phase, Position, Provider, SessionId};
use linkflow_postgres::testing::TestCluster;

const SESSIONS: u64 = 200;

fn flow(session: u64) -> Vec<Event> {
    let at = |n: i64| {
        Utc.timestamp_opt(1_700_000_000 + session as i64 * 100 + n, 0)
            .unwrap()
    };
    vec![
        Event::new(EventKind::Opened).at(at(0)),
        // The exit callback twice: whichever arrives second finds the session exited and is
        // parked until the late success below makes an exit legal again (exit after success).
        Event::new(EventKind::Exited)
            .with_exit_status("closed")
            .at(at(2)),
        Event::new(EventKind::Exited)
            .with_exit_status("closed_again")
            .at(at(3)),
        Event::new(EventKind::ScreenChanged)
            .with_screen("accounts")
            .at(at(4)),
        Event::new(EventKind::Succeeded).at(at(1)),
        Event::new(EventKind::Error).at(at(5)),
    ]
}

/// Delivery rounds: the events of a round are sent at once, each to both nodes.
const ROUNDS: [&[usize]; 4] = [&[0], &[1, 2], &[3, 4], &[5]];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_store_every_event_once_and_agree() {
    let Some(cluster) = TestCluster::shared_or_skip("two_nodes_on_one_database") else {
        return;
    };
    let url = cluster.create_database();
    let a = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let b = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let mut subscription = a.subscribe(Position::START);

    let tasks: Vec<_> = (0..SESSIONS)
        .map(|n| {
            let (a, b) = (a.clone(), b.clone());
            tokio::spawn(async move {
                let id = SessionId::new(format!("pg-{n}")).unwrap();
                let events = flow(n);
                let mut outcomes: Vec<(usize, IngestOutcome)> = Vec::new();
                for round in ROUNDS {
                    let mut calls = Vec::new();
                    for (turn, &index) in round.iter().enumerate() {
                        let incoming = IncomingEvent::new(
                            id.clone(),
                            Provider::Moneykit,
                            events[index].clone(),
                        );
                        // The first event of a round goes to A first, the second to B first.
                        let (first, second) = if turn % 2 == 0 { (&a, &b) } else { (&b, &a) };
                        let (first, second, copy) =
                            (first.clone(), second.clone(), incoming.clone());
                        calls.push(tokio::spawn(async move {
                            let (x, y) = tokio::join!(first.ingest(incoming), second.ingest(copy));
                            vec![(index, x.unwrap()), (index, y.unwrap())]
                        }));
                    }
                    for call in calls {
                        outcomes.extend(call.await.unwrap());
                    }
                }
                (id, outcomes)
            })
        })
        .collect();

    let mut accepted_total = 0u64;
    for task in tasks {
        let (id, outcomes) = task.await.unwrap();
        let mut stored: HashMap<usize, u32> = HashMap::new();
        for (index, outcome) in &outcomes {
            match outcome {
                // Accepted or rejected as the fold stood when it landed: stored either way.
                IngestOutcome::Accepted { .. } | IngestOutcome::Rejected { .. } => {
                    *stored.entry(*index).or_default() += 1;
                }
                IngestOutcome::Duplicate { .. } => {}
                other => panic!("{id}: event {index}: unexpected {other:?}"),
            }
        }
        assert!(
            stored.values().all(|&count| count == 1),
            "{id}: an event was stored by both nodes: {outcomes:#?}"
        );
        assert_eq!(stored.len(), 6, "{id}: events stored {stored:?}");
        accepted_total += 6;
        for node in [&a, &b] {
            let view = node
                .session(&id)
                .await
                .unwrap()
                .expect("the session exists");
            assert_eq!(view.state.phase(), Phase::Succeeded, "{id}");
            assert_eq!(
                view.rejected, 0,
                "{id}: in event-time order every event is legal"
            );
            let history = node.history(&id).await.unwrap().unwrap();
            assert!(history.iter().all(|entry| entry.accepted), "{id}");
            let times: Vec<_> = history.iter().map(|entry| entry.event_time).collect();
            assert!(times.windows(2).all(|pair| pair[0] <= pair[1]), "{id}");
            let mut versions: Vec<u64> = history.iter().map(|entry| entry.version.0).collect();
            versions.sort_unstable();
            assert_eq!(versions, (1..=6).collect::<Vec<_>>(), "{id}");
        }
    }
    // Positions are handed out a moment after the commits (by one sequencer, in order): once
    // the numbering settles, every stored event has one, and no more.
    assert_eq!(a.settle().await.unwrap(), Position(accepted_total));
    assert!(b.rejected(None).await.unwrap().events.is_empty());

    // The subscriber on A saw every event, B's included, once and in order.
    let mut seen = Vec::new();
    while seen.len() < accepted_total as usize {
        let event = tokio::time::timeout(std::time::Duration::from_secs(30), subscription.next())
            .await
            .expect("the subscriber keeps up")
            .unwrap();
        seen.push(event.position.0);
    }
    assert_eq!(seen, (1..=accepted_total).collect::<Vec<_>>());
    let sessions: HashSet<_> = a
        .sessions(Default::default())
        .await
        .unwrap()
        .into_iter()
        .map(|view| view.session_id)
        .collect();
    assert_eq!(sessions.len(), SESSIONS as usize);
    for node in [&a, &b] {
        let report = node.verify().await.unwrap();
        assert!(report.is_clean(), "{:#?}", report.problems);
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Erasure on PostgreSQL (issue 29): two nodes share the keys in the database; one erases a
/// user and the other reads `[erased]` within the notification's delay; a `pg_dump` holds no
/// user's strings; the database does not open without its master key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_on_one_node_is_seen_by_the_other_and_pg_dump_holds_no_plaintext() {
    let Some(cluster) = TestCluster::shared_or_skip("erasure_on_postgres") else {
        return;
    };
    let url = cluster.create_database();
    let keyed = || {
        let mut config = EngineConfig::postgres(&url);
        config.master_key = Some(std::sync::Arc::new(
            linkflow::privacy::MasterKey::from_hex(
                "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
            )
            .unwrap(),
        ));
        config
    };
    let a = Engine::open_with(keyed()).unwrap();
    let b = Engine::open_with(keyed()).unwrap();
    let context = |user: &str| {
        linkflow::PayloadContext::new("test", Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap())
            .with_user(user)
    };
    for (user, session, node) in [("pg-alice", "pa1", &a), ("pg-bob", "pb1", &b)] {
        let body = format!(
            r#"{{"name":"search_institution","properties":{{"search_term":"{user}-searches"}},"meta":{{"link_session_id":"{session}","timestamp":"2023-11-29T12:44:01.000Z"}}}}"#
        );
        node.ingest_payload(linkflow::Feed::Moneykit, body.as_bytes(), &context(user))
            .await
            .unwrap();
    }
    let term = |engine: &Engine, session: &'static str| {
        let engine = engine.clone();
        async move {
            let history = engine
                .history(&SessionId::new(session).unwrap())
                .await
                .unwrap()
                .unwrap();
            history[0]
                .body
                .as_session()
                .unwrap()
                .attributes
                .search_term
                .clone()
                .unwrap()
        }
    };
    // Each node opens what the other sealed: the keys are shared.
    assert_eq!(term(&b, "pa1").await, "pg-alice-searches");
    assert_eq!(term(&a, "pb1").await, "pg-bob-searches");
    let report = a.erase_user("pg-alice", "ticket").await.unwrap();
    assert_eq!((report.erased, report.streams), (true, 1));
    assert_eq!(term(&a, "pa1").await, linkflow::privacy::ERASED);
    // The other node forgets its unwrapped keys when the database tells it.
    let mut seen = String::new();
    for _ in 0..100 {
        seen = term(&b, "pa1").await;
        if seen == linkflow::privacy::ERASED {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(seen, linkflow::privacy::ERASED);
    assert_eq!(term(&b, "pb1").await, "pg-bob-searches");
    assert!(a.verify().await.unwrap().is_clean());
    let database = url.rsplit('/').next().unwrap();
    let dump = cluster.pg_dump(database);
    for text in ["pg-alice", "pg-bob", "searches"] {
        assert!(!TestCluster::dump_holds(&dump, text), "{text} in the dump");
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    let Err(error) = Engine::open_with(EngineConfig::postgres(&url)) else {
        panic!("a sealed database opened without its master key");
    };
    assert!(error.to_string().contains("master key"), "{error}");
}

/// A destroy the database refuses part way through an erasure (the second `DELETE` of the key
/// table, the user's own key, failed by a trigger) is an error that says so; the streams' keys
/// are already gone and the tombstone written. Run again once the database takes deletes, the
/// erasure finishes: the user's key destroyed, one tombstone, the log verifies.
#[tokio::test]
async fn an_erasure_the_database_fails_part_way_finishes_when_run_again() {
    let Some(cluster) = TestCluster::shared_or_skip("erasure_fault_on_postgres") else {
        return;
    };
    let url = cluster.create_database();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let mut config = EngineConfig::postgres(&url);
    config.master_key = Some(std::sync::Arc::new(
        linkflow::privacy::MasterKey::from_hex(
            "1f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f1",
        )
        .unwrap(),
    ));
    let engine = Engine::open_with(config).unwrap();
    let context =
        linkflow::PayloadContext::new("test", Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap())
            .with_user("pg-carol");
    for session in ["pc1", "pc2"] {
        let body = format!(
            r#"{{"name":"search_institution","properties":{{"search_term":"pg-carol-searches"}},"meta":{{"link_session_id":"{session}","timestamp":"2023-11-29T12:44:01.000Z"}}}}"#
        );
        engine
            .ingest_payload(linkflow::Feed::Moneykit, body.as_bytes(), &context)
            .await
            .unwrap();
    }
    cluster.psql(
        &database,
        "CREATE SEQUENCE linkflow_test_deletes;
         CREATE FUNCTION linkflow_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF nextval('linkflow_test_deletes') > 1 THEN
             RAISE EXCEPTION 'injected: the second delete fails';
           END IF;
           RETURN NULL;
         END $$;
         CREATE TRIGGER linkflow_test_refuse BEFORE DELETE ON linkflow_keys
           FOR EACH STATEMENT EXECUTE FUNCTION linkflow_test_refuse();",
    );
    let error = engine.erase_user("pg-carol", "ticket").await.unwrap_err();
    assert!(error.to_string().contains("injected"), "{error}");
    let user_id = |engine: &Engine, session: &'static str| {
        let engine = engine.clone();
        async move {
            let view = engine
                .session(&SessionId::new(session).unwrap())
                .await
                .unwrap()
                .unwrap();
            view.state.external_user_id().map(str::to_owned)
        }
    };
    // Part way: the user's key is still there, the tombstone written.
    assert_eq!(user_id(&engine, "pc1").await.as_deref(), Some("pg-carol"));
    cluster.psql(
        &database,
        "DROP TRIGGER linkflow_test_refuse ON linkflow_keys",
    );
    let report = engine.erase_user("pg-carol", "ticket").await.unwrap();
    assert!(report.erased);
    let tombstone = report.tombstone.unwrap();
    assert_eq!(engine.history(&tombstone).await.unwrap().unwrap().len(), 1);
    for session in ["pc1", "pc2"] {
        assert_eq!(
            user_id(&engine, session).await.as_deref(),
            Some(linkflow::privacy::ERASED)
        );
    }
    assert!(engine.verify().await.unwrap().is_clean());
    engine.shutdown().await.unwrap();
}

/// Compaction on PostgreSQL (issue 29's second age): one node compacts the old exited sessions;
/// the other reads them compacted (state unchanged), its event for one of them is kept rejected,
/// a redelivery is a duplicate, funnels and verify agree, and a `pg_dump` holds none of the
/// compacted events' payloads while it holds the kept session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_one_node_is_seen_by_the_other_and_pg_dump_holds_no_compacted_payload() {
    let Some(cluster) = TestCluster::shared_or_skip("compaction_on_postgres") else {
        return;
    };
    let url = cluster.create_database();
    let a = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let b = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let context =
        linkflow::PayloadContext::new("test", Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap());
    let flow = |session: &str, day: &str| {
        [
            format!(r#"{{"name":"open","properties":{{"note":"{session}-payload"}},"meta":{{"link_session_id":"{session}","timestamp":"{day}T12:44:01.000Z"}}}}"#),
            format!(r#"{{"name":"exit","properties":{{}},"meta":{{"link_session_id":"{session}","timestamp":"{day}T12:44:05.000Z"}}}}"#),
        ]
        .join("\n")
    };
    let today = Utc::now().format("%Y-%m-%d").to_string();
    for (session, day) in [
        ("pg-old-1", "2023-11-29"),
        ("pg-old-2", "2023-11-30"),
        ("pg-new", today.as_str()),
    ] {
        a.ingest_payload(
            linkflow::Feed::Moneykit,
            flow(session, day).as_bytes(),
            &context,
        )
        .await
        .unwrap();
    }
    let old = SessionId::new("pg-old-1").unwrap();
    let before = b.session(&old).await.unwrap().unwrap();
    let funnel = b
        .funnel(linkflow_core::funnel::FunnelQuery::at(Utc::now()))
        .await
        .unwrap();
    let report = a
        .compact_sessions_before(Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap())
        .await
        .unwrap();
    assert_eq!((report.sessions, report.events), (2, 4));
    let after = b.session(&old).await.unwrap().unwrap();
    assert_eq!((&after.state, after.events), (&before.state, before.events));
    assert_eq!(after.compacted_at, Some(linkflow_core::Version(2)));
    assert!(b.history(&old).await.unwrap().unwrap().is_empty());
    let late = r#"{"name":"open","properties":{},"meta":{"link_session_id":"pg-old-1","timestamp":"2023-11-29T12:45:00.000Z"}}"#;
    let outcome = b
        .ingest_payload(linkflow::Feed::Moneykit, late.as_bytes(), &context)
        .await
        .unwrap();
    assert!(
        matches!(&outcome.results[0].outcome, linkflow::IngestOutcome::Rejected { reason, .. } if reason == linkflow::folded::COMPACTED_REJECTION),
        "{:?}",
        outcome.results[0].outcome
    );
    let replay = b
        .ingest_payload(
            linkflow::Feed::Moneykit,
            flow("pg-old-2", "2023-11-30").as_bytes(),
            &context,
        )
        .await
        .unwrap();
    assert!(replay
        .results
        .iter()
        .all(|result| matches!(result.outcome, linkflow::IngestOutcome::Duplicate { .. })));
    assert_eq!(
        a.funnel(linkflow_core::funnel::FunnelQuery::at(Utc::now()))
            .await
            .unwrap(),
        funnel
    );
    let verified = a.verify().await.unwrap();
    assert!(verified.is_clean(), "{:?}", verified.problems);
    let database = url.rsplit('/').next().unwrap();
    let dump = cluster.pg_dump(database);
    let holds = |text: &str| TestCluster::dump_holds(&dump, text);
    assert!(!holds("pg-old-1-payload") && !holds("pg-old-2-payload"));
    assert!(holds("pg-new-payload"));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Outbound delivery's state in the database: every node sees the same endpoints; one node at
/// a time holds an endpoint's lease and only it moves the cursor; a lease that runs out is
/// taken over; attempts and redeliveries are shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_state_is_shared_and_one_node_holds_an_endpoints_lease() {
    use linkflow::delivery::{Attempt, AttemptOutcome, DeliveryStateError};
    use linkflow::{NotificationId, NotificationKind};
    let Some(cluster) = TestCluster::shared_or_skip("delivery_state_on_postgres") else {
        return;
    };
    let url = cluster.create_database();
    let a = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let b = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let (state_a, state_b) = (
        a.shared_delivery_state().unwrap(),
        b.shared_delivery_state().unwrap(),
    );
    let id = |position: u64| NotificationId {
        position: Position(position),
        index: 0,
    };
    tokio::task::spawn_blocking(move || {
        let endpoint = state_a
            .add_endpoint("http://127.0.0.1:9/hook", None, None, chrono::Utc::now())
            .unwrap();
        assert_eq!(
            state_b.endpoints().unwrap(),
            std::slice::from_ref(&endpoint)
        );
        // A holds the lease: B neither takes it nor moves the cursor.
        let long = std::time::Duration::from_secs(60);
        assert!(state_a.lease(&endpoint.id, long).unwrap());
        assert!(!state_b.lease(&endpoint.id, long).unwrap());
        state_a.set_cursor(&endpoint.id, id(7)).unwrap();
        assert!(matches!(
            state_b.set_cursor(&endpoint.id, id(9)),
            Err(DeliveryStateError::LeaseLost(_))
        ));
        assert_eq!(state_b.cursor(&endpoint.id).unwrap(), Some(id(7)));
        // A lease that runs out is taken over, and the old holder can no longer write.
        assert!(state_a
            .lease(&endpoint.id, std::time::Duration::from_millis(1))
            .unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(state_b.lease(&endpoint.id, long).unwrap());
        assert!(state_a.set_cursor(&endpoint.id, id(8)).is_err());
        state_b.set_cursor(&endpoint.id, id(9)).unwrap();
        // Given up: the other takes it at once.
        state_b.release(&endpoint.id).unwrap();
        assert!(state_a.lease(&endpoint.id, long).unwrap());
        // Attempts and redeliveries are shared.
        let attempt = Attempt {
            endpoint: endpoint.id.clone(),
            notification: id(3).to_string(),
            kind: NotificationKind::SessionExited,
            stream: "s".into(),
            attempt: 1,
            at: chrono::Utc::now(),
            status: Some(503),
            error: Some("answered 503".into()),
            redelivery: false,
            outcome: AttemptOutcome::GaveUp,
        };
        state_a
            .record_many(&[attempt.clone(), attempt.clone()])
            .unwrap();
        assert_eq!(state_b.attempts(Some(&endpoint.id), 1).unwrap(), [attempt]);
        state_b.request_redelivery(&endpoint.id, id(3)).unwrap();
        assert_eq!(state_a.take_redeliveries(&endpoint.id).unwrap(), [id(3)]);
        assert!(state_b.take_redeliveries(&endpoint.id).unwrap().is_empty());
        state_b
            .set_disabled(
                &endpoint.id,
                Some(linkflow::delivery::Disabled {
                    at: chrono::Utc::now(),
                    reason: "test".into(),
                }),
            )
            .unwrap();
        assert!(state_a.endpoints().unwrap()[0].disabled.is_some());
        assert!(state_b.remove_endpoint(&endpoint.id).unwrap());
        assert!(state_a.endpoints().unwrap().is_empty());
        assert_eq!(state_a.cursor(&endpoint.id).unwrap(), None);
    })
    .await
    .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    // Dropping linkflow's tables drops every one of them: the schema is made again at open.
    let reset = url.clone();
    tokio::task::spawn_blocking(move || linkflow_postgres::PgStore::drop_schema(&reset))
        .await
        .unwrap()
        .unwrap();
    let again = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    assert!(again.shared_delivery_state().unwrap().endpoints().is_ok());
    again.shutdown().await.unwrap();
}

/// Two nodes' abandonment timers, run at once on one database, store one marker for one
/// silence (its dedupe key), and both nodes read the session declared abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_declare_an_abandonment_once() {
    let Some(cluster) = TestCluster::shared_or_skip("abandonment_on_postgres") else {
        return;
    };
    let url = cluster.create_database();
    let a = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let b = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let id = SessionId::new("quiet-on-pg").unwrap();
    let at = Utc.with_ymd_and_hms(2026, 1, 5, 9, 0, 0).unwrap();
    a.ingest(IncomingEvent::new(
        id.clone(),
        Provider::Moneykit,
        Event::new(EventKind::Opened).at(at),
    ))
    .await
    .unwrap();
    let later = Utc::now() + chrono::Duration::minutes(31);
    let (on_a, on_b) = tokio::join!(a.declare_abandoned(later), b.declare_abandoned(later));
    let (on_a, on_b) = (on_a.unwrap(), on_b.unwrap());
    assert_eq!(on_a.declared + on_b.declared, 1, "{on_a:?} {on_b:?}");
    let history = b.history(&id).await.unwrap().unwrap();
    assert_eq!(
        history
            .iter()
            .filter(|entry| entry.event == "abandoned")
            .count(),
        1
    );
    for engine in [&a, &b] {
        let view = engine.session(&id).await.unwrap().unwrap();
        assert!(view.state.abandoned_at().is_some());
    }
    // And again, later: nothing more for the same silence.
    let again = a.declare_abandoned(later).await.unwrap();
    assert_eq!(again.declared + again.skipped, 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A transaction held open elsewhere on the server (in another database, holding a transaction
/// id) holds the numbering back: ingest goes on and is acknowledged, a subscriber waits, the
/// engine reports for how long (`numbering_held_back`), a settle gives up naming the
/// transaction; nothing is skipped: once it ends, every event reaches the subscriber once and
/// in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_stalls_subscribers_and_never_makes_them_skip() {
    use std::time::{Duration, Instant};
    let Some(cluster) = TestCluster::shared_or_skip("long_transaction") else {
        return;
    };
    let url = cluster.create_database();
    let elsewhere = cluster.create_database();
    let engine = Engine::open_with(EngineConfig::postgres(&url)).unwrap();
    let mut subscription = engine.subscribe(Position::START);
    let ingest = |range: std::ops::Range<u64>| {
        let engine = engine.clone();
        async move {
            for n in range {
                let id = SessionId::new(format!("long-{n}")).unwrap();
                let event = Event::new(EventKind::Opened)
                    .at(Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap());
                let outcome = engine
                    .ingest(IncomingEvent::new(id, Provider::Moneykit, event))
                    .await
                    .unwrap();
                assert!(
                    matches!(outcome, IngestOutcome::Accepted { .. }),
                    "{outcome:?}"
                );
            }
        }
    };
    async fn next(
        subscription: &mut linkflow::Subscription,
        wait: Duration,
    ) -> Result<
        Result<linkflow_store::StoredEvent, linkflow::EngineError>,
        tokio::time::error::Elapsed,
    > {
        tokio::time::timeout(wait, subscription.next()).await
    }

    ingest(0..10).await;
    for expected in 1..=10 {
        let event = next(&mut subscription, Duration::from_secs(10))
            .await
            .expect("numbered while nothing holds it back")
            .unwrap();
        assert_eq!(event.position, Position(expected));
    }

    // A transaction with an id, held open on another database of the same server.
    let (holder, connection) = tokio_postgres::connect(&elsewhere, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    holder
        .batch_execute("BEGIN; SELECT pg_current_xact_id();")
        .await
        .unwrap();

    let started = Instant::now();
    ingest(10..60).await;
    assert!(
        next(&mut subscription, Duration::from_millis(1_500))
            .await
            .is_err(),
        "an event committed after the open transaction began was numbered before it ended"
    );
    let held = loop {
        if let Some(held) = engine.numbering_held_back() {
            break held;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the numbering is not reported held back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(held <= started.elapsed(), "{held:?}");
    assert!(engine.head().unwrap() <= Position(10));
    let mut options = linkflow_postgres::PgOptions::new(url.clone());
    options.settle_timeout = Duration::from_millis(300);
    let settled = tokio::task::spawn_blocking(move || {
        use linkflow_store::EventStore;
        linkflow_postgres::PgStore::open_with(options).and_then(|store| store.settle())
    })
    .await
    .unwrap();
    let error = settled.expect_err("a settle cannot finish while the transaction is open");
    assert!(
        error
            .to_string()
            .contains("oldest transaction on the server"),
        "{error}"
    );

    holder.batch_execute("ROLLBACK").await.unwrap();
    for expected in 11..=60 {
        let event = next(&mut subscription, Duration::from_secs(10))
            .await
            .expect("numbered once the transaction ended")
            .unwrap();
        assert_eq!(event.position, Position(expected), "no position skipped");
    }
    assert_eq!(engine.settle().await.unwrap(), Position(60));
    let start = Instant::now();
    while engine.numbering_held_back().is_some() {
        assert!(start.elapsed() < Duration::from_secs(10), "still held back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = engine.verify().await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.problems);
    engine.shutdown().await.unwrap();
}
