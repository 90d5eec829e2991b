//! `linkflow serve` processes on one PostgreSQL database: concurrent ingest into shared
//! sessions, every webhook delivered to two nodes at once, and one subscriber (on node A) that
//! must see every event, the other nodes' included, exactly once and in order; then the same
//! with a third node joining and the node holding the sequencer's lease SIGKILLed mid-ingest.

use std::collections::HashMap;

use linkflow_e2e::{get_json, linkflow_bin, read_sse_ids, Server};
use linkflow_postgres::testing::TestCluster;
use serde_json::{json, Value};

const SESSIONS: usize = 40;

fn event(session: usize, name: &str, second: usize, extra_meta: Value) -> String {
    let mut meta = json!({
        "link_type": "Link",
        "link_session_id": format!("multi-{session}"),
        "timestamp": format!("2026-11-23T10:{:02}:{:02}.000Z", session % 60, second),
    });
    if let (Some(meta), Some(extra)) = (meta.as_object_mut(), extra_meta.as_object()) {
        meta.extend(extra.clone());
    }
    json!({"name": name, "properties": {"current_screen_name": name}, "meta": meta}).to_string()
}

/// The session's deliveries, round by round; the events of a round are sent at once.
fn rounds(session: usize) -> Vec<Vec<String>> {
    let bank =
        json!({"institution_id": "moneykit-creds-bank", "institution_name": "Credentials Bank"});
    vec![
        vec![event(session, "open", 0, json!({}))],
        vec![
            event(session, "change_screen", 1, json!({})),
            event(session, "select_institution", 2, bank.clone()),
        ],
        vec![
            event(session, "submit_credentials", 3, bank.clone()),
            event(session, "change_screen", 4, bank.clone()),
        ],
        vec![event(session, "submit_accounts", 5, bank.clone())],
        vec![event(session, "success", 6, bank)],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_database_store_every_webhook_once_and_stream_it_in_order() {
    let Some(cluster) = TestCluster::shared_or_skip("multi_node") else {
        return;
    };
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let env = [("LINKFLOW_DATABASE_URL", url.as_str())];
    let a = Server::start(&dir.path().join("a"), &env);
    let b = Server::start(&dir.path().join("b"), &env);
    let client = reqwest::Client::new();
    let subscriber = client.get(a.url("/v1/stream")).send().await.unwrap();
    assert_eq!(subscriber.status(), 200);

    let nodes = [a.base.clone(), b.base.clone()];
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|session| {
            let (client, nodes) = (client.clone(), nodes.clone());
            tokio::spawn(async move {
                let mut accepted: HashMap<String, u32> = HashMap::new();
                for round in rounds(session) {
                    let mut posts = Vec::new();
                    for body in round {
                        for node in &nodes {
                            let (client, node, body) = (client.clone(), node.clone(), body.clone());
                            posts.push(tokio::spawn(async move {
                                let response = client
                                    .post(format!("{node}/v1/events/moneykit"))
                                    .body(body.clone())
                                    .send()
                                    .await
                                    .unwrap();
                                let status = response.status();
                                let answer: Value = response.json().await.unwrap();
                                assert_eq!(status, 200, "{body}: {answer}");
                                (body, answer)
                            }));
                        }
                    }
                    for post in posts {
                        let (body, answer) = post.await.unwrap();
                        let outcome = answer["results"][0]["outcome"].as_str().unwrap().to_owned();
                        assert!(
                            outcome == "accepted" || outcome == "duplicate",
                            "{body}: {answer}"
                        );
                        *accepted.entry(body).or_default() += u32::from(outcome == "accepted");
                    }
                }
                accepted
            })
        })
        .collect();
    let mut events = 0;
    for session in sessions {
        for (body, count) in session.await.unwrap() {
            assert_eq!(count, 1, "accepted by {count} nodes: {body}");
            events += 1;
        }
    }
    assert_eq!(events, SESSIONS * 7);

    for session in 0..SESSIONS {
        let path = format!("/v1/sessions/multi-{session}");
        let on_a = get_json(&client, &a.url(&path)).await;
        let on_b = get_json(&client, &b.url(&path)).await;
        assert_eq!(on_a["phase"], "succeeded", "{on_a}");
        assert_eq!(on_a["version"], 7, "{on_a}");
        assert_eq!(on_a, on_b, "both nodes read the same state");
    }

    // Every event of the log, B's included, reaches A's subscriber once and in order.
    let head: u64 = cluster
        .psql(
            url.rsplit('/').next().unwrap(),
            "SELECT position FROM linkflow_head",
        )
        .parse()
        .unwrap();
    assert!(head >= (SESSIONS * 7) as u64);
    let ids = read_sse_ids(subscriber, head as usize).await;
    assert_eq!(ids, (1..=head).collect::<Vec<_>>());

    // The log is consistent as seen from a third process.
    let verify = std::process::Command::new(linkflow_bin())
        .args(["--store", &url, "verify"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(b.terminate().code(), Some(0));
}

/// Sends `body` to `nodes[first]`, and on a connection failure (a node killed) to the next
/// node, as a provider retries a webhook that failed: the outcome of the node that answered.
async fn deliver(client: &reqwest::Client, nodes: &[String], first: usize, body: &str) -> String {
    for turn in 0..nodes.len() {
        let node = &nodes[(first + turn) % nodes.len()];
        let Ok(response) = client
            .post(format!("{node}/v1/events/moneykit"))
            .body(body.to_owned())
            .send()
            .await
        else {
            continue;
        };
        let status = response.status();
        let Ok(answer) = response.json::<Value>().await else {
            continue;
        };
        assert_eq!(status, 200, "{body}: {answer}");
        return answer["results"][0]["outcome"].as_str().unwrap().to_owned();
    }
    panic!("no node took {body}");
}

/// Nodes come and go during ingest: A and B take webhooks, C joins half-way, B is SIGKILLed
/// while its requests are in flight (every webhook it did not answer is retried at another
/// node). Every event ends up stored exactly once, the log verifies, and a subscriber on A
/// sees every position of the log, B's and C's included, once and in order, the numbering
/// carried on by whichever node took the sequencer's lease when B's ended with its process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_and_another_is_killed_mid_ingest_and_the_log_stays_whole() {
    const JOINING_SESSIONS: usize = 60;
    let Some(cluster) = TestCluster::shared_or_skip("multi_node_join_and_kill") else {
        return;
    };
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let env = [("LINKFLOW_DATABASE_URL", url.as_str())];
    // B opens the store first: its sequencer takes the lease, which its death must hand on.
    let b = Server::start(&dir.path().join("b"), &env);
    let a = Server::start(&dir.path().join("a"), &env);
    let client = reqwest::Client::new();
    let subscriber = client.get(a.url("/v1/stream")).send().await.unwrap();
    assert_eq!(subscriber.status(), 200);

    let nodes: std::sync::Arc<std::sync::Mutex<Vec<String>>> =
        std::sync::Arc::new(std::sync::Mutex::new(vec![a.base.clone(), b.base.clone()]));
    let delivered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let sessions: Vec<_> = (0..JOINING_SESSIONS)
        .map(|session| {
            let (client, nodes, delivered) = (client.clone(), nodes.clone(), delivered.clone());
            tokio::spawn(async move {
                let mut accepted: HashMap<String, u32> = HashMap::new();
                for round in rounds(session) {
                    let mut posts = Vec::new();
                    for body in round {
                        // Each webhook to two nodes at once (the ones up when it is sent).
                        let now = nodes.lock().unwrap().clone();
                        for copy in 0..2 {
                            let (client, now, body) = (client.clone(), now.clone(), body.clone());
                            let first = (session + copy) % now.len();
                            posts.push(tokio::spawn(async move {
                                let outcome = deliver(&client, &now, first, &body).await;
                                (body, outcome)
                            }));
                        }
                    }
                    for post in posts {
                        let (body, outcome) = post.await.unwrap();
                        assert!(
                            outcome == "accepted" || outcome == "duplicate",
                            "{body}: {outcome}"
                        );
                        *accepted.entry(body).or_default() += u32::from(outcome == "accepted");
                        delivered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                }
                accepted
            })
        })
        .collect();

    // C joins once a quarter of the deliveries are answered; B is killed at half.
    let total = JOINING_SESSIONS * 7 * 2;
    let wait_for = |share: usize| {
        let delivered = delivered.clone();
        async move {
            while delivered.load(std::sync::atomic::Ordering::SeqCst) < total * share / 4 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    };
    wait_for(1).await;
    let c = Server::start(&dir.path().join("c"), &env);
    nodes.lock().unwrap().push(c.base.clone());
    wait_for(2).await;
    nodes.lock().unwrap().retain(|node| *node != b.base);
    b.kill();

    let mut events = 0;
    for session in sessions {
        for (body, count) in session.await.unwrap() {
            assert!(count <= 1, "stored {count} times: {body}");
            events += 1;
        }
    }
    assert_eq!(events, JOINING_SESSIONS * 7);
    for session in 0..JOINING_SESSIONS {
        let path = format!("/v1/sessions/multi-{session}");
        let on_a = get_json(&client, &a.url(&path)).await;
        let on_c = get_json(&client, &c.url(&path)).await;
        assert_eq!(on_a["phase"], "succeeded", "{on_a}");
        assert_eq!(on_a["version"], 7, "every webhook stored once: {on_a}");
        assert_eq!(on_a, on_c, "both nodes read the same state");
    }

    // Once the numbering settles, A's subscriber sees every position, in order.
    let head = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            use linkflow_store::EventStore;
            linkflow_postgres::PgStore::open(&url)
                .and_then(|store| store.settle())
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(head.0 >= (JOINING_SESSIONS * 7) as u64);
    let ids = read_sse_ids(subscriber, head.0 as usize).await;
    assert_eq!(ids, (1..=head.0).collect::<Vec<_>>());

    let verify = std::process::Command::new(linkflow_bin())
        .args(["--store", &url, "verify"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
    assert_eq!(a.terminate().code(), Some(0));
    assert_eq!(c.terminate().code(), Some(0));
}
