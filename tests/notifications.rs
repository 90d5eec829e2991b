//! `linkflow serve` delivering notifications to a local receiver: every notification of a
//! scripted population arrives, signed, and a SIGKILL of the sender mid-delivery loses none
//! (a restart sends again only with the same ids); `session.abandoned` fires within the
//! inactivity timeout plus 5 s, once, and `session.revived` follows a late event.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{SecondsFormat, Utc};
use linkflow_core::Position;
use linkflow_e2e::{linkflow_bin, Server};
use serde_json::Value;

/// What the receiver got: each request's webhook id, payload and when it came.
#[derive(Clone, Default)]
struct Got(Arc<Mutex<Vec<(String, Value, Instant)>>>);

#[derive(Clone)]
struct Receiver {
    got: Got,
    secret: Arc<Mutex<Option<String>>>,
    delay: Duration,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    tokio::time::sleep(receiver.delay).await;
    let secret = receiver
        .secret
        .lock()
        .unwrap()
        .clone()
        .expect("the secret is set");
    // Signed: verified with the spec's crate, as a receiver would.
    if standardwebhooks::Webhook::new(&secret)
        .unwrap()
        .verify(&body, &headers)
        .is_err()
    {
        return StatusCode::UNAUTHORIZED;
    }
    let id = headers["webhook-id"].to_str().unwrap().to_owned();
    let payload: Value = serde_json::from_slice(&body).unwrap();
    receiver
        .got
        .0
        .lock()
        .unwrap()
        .push((id, payload, Instant::now()));
    StatusCode::NO_CONTENT
}

/// A receiver on a free port: its URL, what it got, and the slot of the secret it checks.
async fn start_receiver(delay: Duration) -> (String, Got, Arc<Mutex<Option<String>>>) {
    let got = Got::default();
    let secret = Arc::new(Mutex::new(None));
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(Receiver {
            got: got.clone(),
            secret: Arc::clone(&secret),
            delay,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/hook"), got, secret)
}

/// `linkflow endpoints add URL --json` on `data_dir`: the endpoint's id and secret.
fn add_endpoint(data_dir: &std::path::Path, url: &str) -> (String, String) {
    std::fs::create_dir_all(data_dir).unwrap();
    let output = std::process::Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--json", "endpoints", "add", url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let endpoint: Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        endpoint["id"].as_str().unwrap().to_owned(),
        endpoint["secret"].as_str().unwrap().to_owned(),
    )
}

fn moneykit(session: &str, name: &str, at: chrono::DateTime<Utc>) -> String {
    serde_json::json!({
        "name": name,
        "meta": {
            "link_session_id": session,
            "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    })
    .to_string()
}

async fn post_events(client: &reqwest::Client, server: &Server, lines: &[String]) {
    let response = client
        .post(server.url("/v1/events/moneykit"))
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn wait_for(what: &str, seconds: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_of_the_sender_mid_delivery_loses_no_notification() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A slow receiver, so that the kill finds notifications in flight and waiting.
    let (url, got, secret) = start_receiver(Duration::from_millis(40)).await;
    let (_, endpoint_secret) = add_endpoint(&data, &url);
    *secret.lock().unwrap() = Some(endpoint_secret);
    let env = [
        ("LINKFLOW_DELIVERY_SCHEDULE_SECS", "0,0.1,0.1,0.1,0.1,0.1"),
        ("LINKFLOW_INACTIVITY_TIMEOUT_SECS", "3600"),
    ];
    let server = Server::start(&data, &env);
    let client = reqwest::Client::new();
    let start = Utc::now() - chrono::Duration::minutes(10);
    let at = |second: i64| start + chrono::Duration::seconds(second);
    for batch in 0..4 {
        let mut lines = Vec::new();
        for n in 0..15 {
            let session = format!("kill-{batch}-{n:02}");
            lines.push(moneykit(&session, "open", at(n)));
            lines.push(moneykit(
                &session,
                if n % 2 == 0 { "success" } else { "exit" },
                at(n + 1),
            ));
        }
        post_events(&client, &server, &lines).await;
    }
    // Kill it once some, not all, arrived.
    wait_for("the first deliveries", 30, || {
        got.0.lock().unwrap().len() >= 5
    })
    .await;
    drop(server);
    let before_restart = got.0.lock().unwrap().len();
    assert!(
        before_restart < 60,
        "everything arrived before the kill: {before_restart}"
    );

    let server = Server::start(&data, &env);
    wait_for("every notification after the restart", 60, || {
        let got = got.0.lock().unwrap();
        got.iter()
            .map(|(id, _, _)| id)
            .collect::<HashSet<_>>()
            .len()
            >= 60
    })
    .await;
    assert_eq!(server.terminate().code(), Some(0));

    // What the log says should have arrived: every notification, each at least once.
    let engine = linkflow::Engine::open(&data).unwrap();
    let mut notifications = engine.notifications(Position(0));
    let mut expected = HashMap::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_millis(300), notifications.next()).await
    {
        expected.insert(notification.id.to_string(), notification.payload());
    }
    engine.shutdown().await.unwrap();
    assert_eq!(expected.len(), 60);
    let got = got.0.lock().unwrap();
    let received: HashSet<&String> = got.iter().map(|(id, _, _)| id).collect();
    for id in expected.keys() {
        assert!(received.contains(id), "{id} never arrived");
    }
    // A duplicate is the same notification: same id, same payload.
    for (id, payload, _) in got.iter() {
        assert_eq!(Some(payload), expected.get(id), "{id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandonment_is_notified_within_the_timeout_plus_5_s_once_then_revived() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (url, got, secret) = start_receiver(Duration::ZERO).await;
    let (_, endpoint_secret) = add_endpoint(&data, &url);
    *secret.lock().unwrap() = Some(endpoint_secret);
    let server = Server::start(&data, &[("LINKFLOW_INACTIVITY_TIMEOUT_SECS", "2")]);
    let client = reqwest::Client::new();
    let last = Utc::now();
    let sent = Instant::now();
    post_events(
        &client,
        &server,
        &[
            moneykit("quiet", "open", last - chrono::Duration::milliseconds(500)),
            moneykit("quiet", "select_institution", last),
        ],
    )
    .await;
    let kind = |entry: &(String, Value, Instant)| entry.1["type"].as_str().unwrap().to_owned();
    wait_for("session.abandoned", 15, || {
        got.0
            .lock()
            .unwrap()
            .iter()
            .any(|e| kind(e) == "session.abandoned")
    })
    .await;
    let abandoned = got
        .0
        .lock()
        .unwrap()
        .iter()
        .find(|e| kind(e) == "session.abandoned")
        .cloned()
        .unwrap();
    // The last event was at `last` (sent just after): declared within 2 s + 5 s of it.
    let waited = abandoned.2.duration_since(sent);
    assert!(
        waited <= Duration::from_secs(7),
        "abandoned after {waited:?}"
    );
    assert!(
        waited >= Duration::from_millis(1_400),
        "abandoned early: {waited:?}"
    );
    assert_eq!(abandoned.1["data"]["session_id"], "quiet");
    assert_eq!(abandoned.1["data"]["phase"], "institution_selected");
    // Once: the timer keeps running, and declares nothing more for the same silence.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let count = |name: &str| {
        got.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| kind(e) == name)
            .count()
    };
    assert_eq!(count("session.abandoned"), 1);

    post_events(
        &client,
        &server,
        &[moneykit("quiet", "submit_credentials", Utc::now())],
    )
    .await;
    wait_for("session.revived", 15, || count("session.revived") == 1).await;
    assert_eq!(server.terminate().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_one_database_deliver_each_notification_once_and_take_over_a_dead_ones_endpoint(
) {
    let Some(cluster) = linkflow_postgres::testing::TestCluster::shared_or_skip("notifications")
    else {
        return;
    };
    let url = cluster.create_database();
    let dir = tempfile::tempdir().unwrap();
    let (receiver_url, got, secret) = start_receiver(Duration::ZERO).await;
    // The endpoint is added with the CLI, in the database every node reads.
    let output = std::process::Command::new(linkflow_bin())
        .args(["--store", &url, "--json", "endpoints", "add", &receiver_url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let endpoint: Value = serde_json::from_slice(&output.stdout).unwrap();
    *secret.lock().unwrap() = Some(endpoint["secret"].as_str().unwrap().to_owned());
    let env = [
        ("LINKFLOW_DATABASE_URL", url.as_str()),
        ("LINKFLOW_DELIVERY_LEASE_SECS", "2"),
        ("LINKFLOW_DELIVERY_SCHEDULE_SECS", "0,0.1,0.1,0.1,0.1,0.1"),
    ];
    // A starts first and takes the endpoint's lease; B waits for it.
    let a = Server::start(&dir.path().join("a"), &env);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let b = Server::start(&dir.path().join("b"), &env);
    let client = reqwest::Client::new();
    let start = Utc::now() - chrono::Duration::minutes(10);
    let at = |second: i64| start + chrono::Duration::seconds(second);
    let batch = |prefix: &str| -> Vec<String> {
        (0..20)
            .flat_map(|n| {
                let session = format!("{prefix}-{n:02}");
                [
                    moneykit(&session, "open", at(n)),
                    moneykit(
                        &session,
                        if n % 2 == 0 { "success" } else { "exit" },
                        at(n + 1),
                    ),
                ]
            })
            .collect()
    };
    // Ingested on both nodes; delivered by the one that holds the lease, once each.
    post_events(&client, &a, &batch("first-a")).await;
    post_events(&client, &b, &batch("first-b")).await;
    let distinct = |got: &Got| {
        got.0
            .lock()
            .unwrap()
            .iter()
            .map(|(id, _, _)| id.clone())
            .collect::<HashSet<_>>()
            .len()
    };
    wait_for("the first 40 notifications", 30, || distinct(&got) >= 40).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        got.0.lock().unwrap().len(),
        40,
        "a notification delivered twice by two nodes"
    );

    // A dies; B takes the endpoint over once A's lease runs out, from A's cursor.
    drop(a);
    post_events(&client, &b, &batch("second")).await;
    wait_for("every notification after the takeover", 30, || {
        distinct(&got) >= 60
    })
    .await;
    assert_eq!(b.terminate().code(), Some(0));

    let mut config = linkflow::EngineConfig::postgres(&url);
    config.inactivity_timeout = chrono::Duration::hours(1);
    let engine = linkflow::Engine::open_with(config).unwrap();
    let mut notifications = engine.notifications(Position(0));
    let mut expected = HashSet::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_millis(500), notifications.next()).await
    {
        expected.insert(notification.id.to_string());
    }
    engine.shutdown().await.unwrap();
    assert_eq!(expected.len(), 60);
    let got = got.0.lock().unwrap();
    let received: HashSet<String> = got.iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(received, expected);
}
