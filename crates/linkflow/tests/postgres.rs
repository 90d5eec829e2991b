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
    assert_eq!(a.head().unwrap(), Position(accepted_total));
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
