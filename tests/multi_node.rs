//! Two `linkflow serve` processes on one PostgreSQL database: concurrent ingest into shared
//! sessions, every webhook delivered to both nodes at once, and one subscriber (on node A) that
//! must see every event, B's included, exactly once and in order.

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
