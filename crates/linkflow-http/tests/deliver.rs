//! Delivery to a local receiver: every notification of a scripted population arrives,
//! signed (verified with the `standardwebhooks` crate), in order per session, with retries on
//! 500 and on timeouts under the same `webhook-id`; a 410 disables the endpoint; a stop and a
//! restart resume from the cursor without losing one.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use chrono::{TimeZone, Utc};
use linkflow::delivery::{AttemptOutcome, DeliveryState, FileDeliveryState};
use linkflow::{Engine, IncomingEvent, NotificationId};
use linkflow_core::{Event, EventKind, Position, Provider, SessionId};
use linkflow_http::deliver::{Deliverer, DeliveryConfig};
use tokio::sync::watch;

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

/// What the receiver answers: by the request's webhook id and attempt number (1-based).
type Script = Arc<dyn Fn(&str, usize) -> Answer + Send + Sync>;

#[derive(Clone, Copy)]
enum Answer {
    Status(u16),
    /// Answer 200 after this long (past the sender's timeout: a timeout).
    Slow(Duration),
}

#[derive(Clone)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Requests begun, by webhook id (a slow one is in `got` only once answered).
    begun: Arc<Mutex<HashMap<String, usize>>>,
    script: Script,
}

async fn receive(State(receiver): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers
        .get("webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let attempt = {
        let mut begun = receiver.begun.lock().unwrap();
        let count = begun.entry(id.clone()).or_default();
        *count += 1;
        *count
    };
    let answer = (receiver.script)(&id, attempt);
    let status = match answer {
        Answer::Status(status) => status,
        Answer::Slow(wait) => {
            tokio::time::sleep(wait).await;
            200
        }
    };
    receiver.got.lock().unwrap().push(Received {
        id,
        headers,
        body,
        answered: if matches!(answer, Answer::Slow(_)) {
            0
        } else {
            status
        },
    });
    StatusCode::from_u16(status).unwrap()
}

type Begun = Arc<Mutex<HashMap<String, usize>>>;

async fn start_receiver(script: Script) -> (String, Arc<Mutex<Vec<Received>>>) {
    let (url, got, _) = start_counting_receiver(script).await;
    (url, got)
}

/// The receiver, with its count of requests begun by id (a request the sender gave up on
/// waiting for is cut before it is answered).
async fn start_counting_receiver(script: Script) -> (String, Arc<Mutex<Vec<Received>>>, Begun) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let begun: Begun = Arc::default();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(Receiver {
            got: Arc::clone(&got),
            begun: Arc::clone(&begun),
            script,
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{address}/hook"), got, begun)
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        schedule: vec![
            Duration::ZERO,
            Duration::from_millis(50),
            Duration::from_millis(50),
            Duration::from_millis(50),
        ],
        timeout: Duration::from_millis(300),
        poll: Duration::from_millis(50),
        cursor_every: Duration::from_millis(10),
        lease: Duration::from_secs(10),
    }
}

fn sid(id: &str) -> SessionId {
    SessionId::new(id).unwrap()
}

/// Twenty sessions: a third succeed, a third exit, a third go silent (declared abandoned),
/// and two of the silent ones come back.
async fn scripted_population(engine: &Engine) {
    let t = |minute: i64| {
        Utc.with_ymd_and_hms(2026, 5, 1, 8, 0, 0).unwrap() + chrono::Duration::minutes(minute)
    };
    let mut events = Vec::new();
    for n in 0..20i64 {
        let id = format!("pop-{n:02}");
        let event = |kind: EventKind, minute: i64| {
            IncomingEvent::new(
                sid(&id),
                Provider::Moneykit,
                Event::new(kind).at(t(n + minute)),
            )
        };
        events.push(event(EventKind::Opened, 0));
        events.push(event(EventKind::InstitutionSelected, 1));
        match n % 3 {
            0 => events.push(event(EventKind::Succeeded, 2)),
            1 => events.push(event(EventKind::Exited, 2)),
            _ => {}
        }
    }
    engine.ingest_batch(events).await.unwrap();
    engine
        .declare_abandoned(Utc::now() + chrono::Duration::minutes(31))
        .await
        .unwrap();
    for n in [2i64, 5] {
        let id = format!("pop-{n:02}");
        engine
            .ingest(IncomingEvent::new(
                sid(&id),
                Provider::Moneykit,
                Event::new(EventKind::CredentialsSubmitted).at(t(n + 500)),
            ))
            .await
            .unwrap();
    }
}

/// Every notification the engine derives from position 0.
async fn expected(engine: &Engine) -> Vec<linkflow::Notification> {
    let mut notifications = engine.notifications(Position(0));
    let mut all = Vec::new();
    while let Ok(Ok(notification)) =
        tokio::time::timeout(Duration::from_millis(300), notifications.next()).await
    {
        all.push(notification);
    }
    all
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn every_notification_arrives_signed_in_order_with_retries_under_one_id() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("data")).unwrap();
    let state = Arc::new(FileDeliveryState::open(dir.path().join("delivery")).unwrap());
    // Every third notification fails with 500 first; every fifth times out first.
    let script: Script = Arc::new(|id: &str, attempt: usize| {
        let position: u64 = NotificationId::parse(id).map_or(0, |id| id.position.0);
        match attempt {
            1 if position % 3 == 0 => Answer::Status(500),
            1 if position % 5 == 0 => Answer::Slow(Duration::from_millis(600)),
            _ => Answer::Status(204),
        }
    });
    let (url, got, begun) = start_counting_receiver(script).await;
    let endpoint = state.add_endpoint(&url, None, None, Utc::now()).unwrap();
    // Start at the log's beginning (a new endpoint starts at the head).
    state
        .set_cursor(
            &endpoint.id,
            NotificationId {
                position: Position(0),
                index: u8::MAX,
            },
        )
        .unwrap();
    scripted_population(&engine).await;
    let expected = expected(&engine).await;
    // 7 succeeded, 7 exited, 6 abandoned, 2 revived.
    assert_eq!(expected.len(), 22, "{expected:#?}");

    let (stop, stopped) = watch::channel(false);
    let deliverer = Deliverer::new(engine.clone(), state.clone(), config()).unwrap();
    let running = tokio::spawn(deliverer.run(stopped));
    let wanted: HashSet<String> = expected.iter().map(|n| n.id.to_string()).collect();
    wait_until("every notification delivered", || {
        let got = got.lock().unwrap();
        let delivered: HashSet<&String> = got
            .iter()
            .filter(|r| (200..300).contains(&r.answered))
            .map(|r| &r.id)
            .collect();
        wanted.iter().all(|id| delivered.contains(id))
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    let got = got.lock().unwrap().clone();
    let webhook = standardwebhooks::Webhook::new(&endpoint.secret).unwrap();
    let by_id: HashMap<String, &linkflow::Notification> =
        expected.iter().map(|n| (n.id.to_string(), n)).collect();
    for received in &got {
        webhook
            .verify(&received.body, &received.headers)
            .unwrap_or_else(|error| panic!("{}: {error}", received.id));
        let payload: serde_json::Value = serde_json::from_slice(&received.body).unwrap();
        let notification = by_id[&received.id];
        assert_eq!(payload, notification.payload(), "{}", received.id);
    }
    // Retried under the same id: the 500s and the timeouts came again.
    for id in &wanted {
        let position = NotificationId::parse(id).unwrap().position.0;
        let tries = begun.lock().unwrap()[id];
        let first_fails = position % 3 == 0 || position % 5 == 0;
        assert_eq!(tries, if first_fails { 2 } else { 1 }, "{id}");
    }
    // Per session, first deliveries come in the order of the ids.
    let mut first_success: BTreeMap<String, Vec<NotificationId>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for received in got.iter().filter(|r| r.answered == 204) {
        if seen.insert(received.id.clone()) {
            let notification = by_id[&received.id];
            first_success
                .entry(notification.stream.as_str().to_owned())
                .or_default()
                .push(notification.id);
        }
    }
    for (stream, ids) in first_success {
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted, "{stream} out of order");
    }
    // The attempt log says the same, and the cursor is past every notification.
    let attempts = state.attempts(Some(&endpoint.id), 1_000).unwrap();
    let requests: usize = begun.lock().unwrap().values().sum();
    assert_eq!(attempts.len(), requests);
    assert_eq!(
        attempts
            .iter()
            .filter(|a| a.outcome == AttemptOutcome::Delivered)
            .count(),
        22
    );
    let cursor = state.cursor(&endpoint.id).unwrap().unwrap();
    assert!(cursor >= expected.last().unwrap().id, "{cursor}");
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_delivery_resumes_where_it_stopped_once_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("data")).unwrap();
    let state = Arc::new(FileDeliveryState::open(dir.path().join("delivery")).unwrap());
    let gone = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let answer = Arc::clone(&gone);
    let script: Script = Arc::new(move |_: &str, _| {
        if answer.load(std::sync::atomic::Ordering::SeqCst) {
            Answer::Status(410)
        } else {
            Answer::Status(200)
        }
    });
    let (url, got) = start_receiver(script).await;
    let endpoint = state.add_endpoint(&url, None, None, Utc::now()).unwrap();
    state
        .set_cursor(
            &endpoint.id,
            NotificationId {
                position: Position(0),
                index: u8::MAX,
            },
        )
        .unwrap();
    scripted_population(&engine).await;
    let expected = expected(&engine).await;

    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(
        Deliverer::new(engine.clone(), state.clone(), config())
            .unwrap()
            .run(stopped),
    );
    wait_until("the endpoint disabled", || {
        state.endpoints().unwrap()[0].disabled.is_some()
    })
    .await;
    let after_gone = got.lock().unwrap().len();
    assert!((1..=linkflow_http::deliver::MAX_IN_FLIGHT).contains(&after_gone));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        got.lock().unwrap().len(),
        after_gone,
        "sent to a disabled endpoint"
    );
    let disabled = state.endpoints().unwrap()[0].disabled.clone().unwrap();
    assert!(disabled.reason.contains("410"), "{}", disabled.reason);

    // Enabled again: everything arrives, the first refused ones included.
    gone.store(false, std::sync::atomic::Ordering::SeqCst);
    state.set_disabled(&endpoint.id, None).unwrap();
    let wanted: HashSet<String> = expected.iter().map(|n| n.id.to_string()).collect();
    wait_until("every notification after enabling", || {
        let got = got.lock().unwrap();
        let delivered: HashSet<&String> = got
            .iter()
            .filter(|r| r.answered == 200)
            .map(|r| &r.id)
            .collect();
        wanted.iter().all(|id| delivered.contains(id))
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_stopped_deliverer_resumes_from_its_cursor_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("data")).unwrap();
    let state = Arc::new(FileDeliveryState::open(dir.path().join("delivery")).unwrap());
    let script: Script = Arc::new(|_: &str, _| Answer::Slow(Duration::from_millis(20)));
    let (url, got) = start_receiver(script).await;
    let endpoint = state
        .add_endpoint(
            &url,
            None,
            Some(vec![
                linkflow::NotificationKind::SessionSucceeded,
                linkflow::NotificationKind::SessionExited,
            ]),
            Utc::now(),
        )
        .unwrap();
    state
        .set_cursor(
            &endpoint.id,
            NotificationId {
                position: Position(0),
                index: u8::MAX,
            },
        )
        .unwrap();
    scripted_population(&engine).await;
    let wanted: HashSet<String> = expected(&engine)
        .await
        .iter()
        .filter(|n| endpoint.wants(n.kind))
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(wanted.len(), 14);
    // Stop and start again a few times while it delivers.
    for _ in 0..4 {
        let (stop, stopped) = watch::channel(false);
        let running = tokio::spawn(
            Deliverer::new(engine.clone(), state.clone(), config())
                .unwrap()
                .run(stopped),
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        stop.send(true).unwrap();
        running.await.unwrap().unwrap();
    }
    let (stop, stopped) = watch::channel(false);
    let running = tokio::spawn(
        Deliverer::new(engine.clone(), state.clone(), config())
            .unwrap()
            .run(stopped),
    );
    wait_until("every wanted notification", || {
        let got = got.lock().unwrap();
        let received: HashSet<&String> = got.iter().map(|r| &r.id).collect();
        wanted.iter().all(|id| received.contains(id))
    })
    .await;
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    // Only the wanted kinds were sent; duplicates carry the same id.
    let got = got.lock().unwrap();
    assert!(got.iter().all(|r| wanted.contains(&r.id)));
}

/// Calls `app` with a bearer token; the status and the JSON body.
async fn call(app: &axum::Router, method: &str, uri: &str, body: &str) -> (u16, serde_json::Value) {
    use tower::ServiceExt;
    let request = axum::http::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", "Bearer t0ken")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(body.to_owned()))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

#[tokio::test]
async fn endpoints_and_deliveries_are_managed_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path().join("data")).unwrap();
    let state: Arc<dyn DeliveryState> =
        Arc::new(FileDeliveryState::open(dir.path().join("delivery")).unwrap());
    let mut config = linkflow_http::HttpConfig::default();
    config.token = Some("t0ken".into());
    config.delivery = Some(Arc::clone(&state));
    let app = linkflow_http::router(engine.clone(), config);

    let (status, added) = call(
        &app,
        "POST",
        "/v1/endpoints",
        r#"{"url": "http://127.0.0.1:9/hook", "types": ["session.exited"]}"#,
    )
    .await;
    assert_eq!(status, 201, "{added}");
    let id = added["id"].as_str().unwrap().to_owned();
    assert!(added["secret"].as_str().unwrap().starts_with("whsec_"));
    let (status, listed) = call(&app, "GET", "/v1/endpoints", "").await;
    assert_eq!(status, 200);
    assert_eq!(listed["endpoints"][0]["secret"], "[withheld]");
    assert_eq!(listed["endpoints"][0]["types"][0], "session.exited");
    assert_eq!(listed["endpoints"][0]["delivered_through"], "ntf_0_255");

    for (body, code) in [
        (r#"{"url": "ftp://x/"}"#, "invalid_endpoint"),
        (
            r#"{"url": "http://x/", "types": ["session.won"]}"#,
            "invalid_endpoint",
        ),
        (
            r#"{"url": "http://x/", "secret": "whsec_c2hvcnQ="}"#,
            "invalid_endpoint",
        ),
        (r#"{"address": "http://x/"}"#, "invalid_json"),
    ] {
        let (status, refused) = call(&app, "POST", "/v1/endpoints", body).await;
        assert_eq!(
            (status, refused["error"].as_str()),
            (400, Some(code)),
            "{body}: {refused}"
        );
    }
    let (status, _) = call(
        &app,
        "PATCH",
        &format!("/v1/endpoints/{id}"),
        r#"{"enabled": false}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(state.endpoints().unwrap()[0].disabled.is_some());
    let (status, _) = call(
        &app,
        "PATCH",
        &format!("/v1/endpoints/{id}"),
        r#"{"enabled": true}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(state.endpoints().unwrap()[0].disabled.is_none());

    let (status, attempts) = call(&app, "GET", "/v1/deliveries?limit=5", "").await;
    assert_eq!(
        (status, attempts["attempts"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    let (status, _) = call(&app, "GET", "/v1/deliveries?limit=0", "").await;
    assert_eq!(status, 400);
    let (status, _) = call(
        &app,
        "GET",
        "/v1/deliveries?endpoint=ep_0000000000000000",
        "",
    )
    .await;
    assert_eq!(status, 404);
    // A notification that does not exist cannot be redelivered; one that does can.
    let body = format!(r#"{{"endpoint": "{id}", "notification": "ntf_99_0"}}"#);
    let (status, _) = call(&app, "POST", "/v1/deliveries/redeliver", &body).await;
    assert_eq!(status, 404);
    scripted_population(&engine).await;
    let first = expected(&engine).await.remove(0).id;
    let body = format!(r#"{{"endpoint": "{id}", "notification": "{first}"}}"#);
    let (status, _) = call(&app, "POST", "/v1/deliveries/redeliver", &body).await;
    assert_eq!(status, 202);
    assert_eq!(state.take_redeliveries(&id).unwrap(), [first]);

    let (status, _) = call(&app, "DELETE", &format!("/v1/endpoints/{id}"), "").await;
    assert_eq!(status, 200);
    let (status, _) = call(&app, "DELETE", &format!("/v1/endpoints/{id}"), "").await;
    assert_eq!(status, 404);

    // Without a delivery state: 409; without a token configured, changes are 403.
    let app = linkflow_http::router(engine.clone(), linkflow_http::HttpConfig::default());
    let (status, refused) = call(&app, "GET", "/v1/endpoints", "").await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (409, Some("delivery_unavailable"))
    );
    let mut config = linkflow_http::HttpConfig::default();
    config.delivery = Some(state);
    let app = linkflow_http::router(engine.clone(), config);
    let (status, refused) = call(&app, "POST", "/v1/endpoints", r#"{"url": "http://x/"}"#).await;
    assert_eq!(
        (status, refused["error"].as_str()),
        (403, Some("token_required"))
    );
}
