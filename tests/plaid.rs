//! Plaid Link end to end: the end-of-flow burst in any order gives the same session, an
//! `EVENTS` webhook re-sent with growing lists stores each event once (and the client's callback
//! of the same event too), every item webhook drives the item's account through the CLI and
//! HTTP, and the `Plaid-Verification` JWT is checked with keys from a JWK set file and from a
//! local stand-in of Plaid's key endpoint (caching, expired keys, unknown ids, Plaid down).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use linkflow::{Engine, PayloadContext};
use linkflow_e2e::{fixtures_dir, linkflow_bin, Server};
use linkflow_providers::plaid_jwt::signing::TestKey;
use linkflow_providers::Feed;
use serde_json::{json, Value};

fn web_burst() -> Vec<Value> {
    let text =
        std::fs::read_to_string(fixtures_dir().join("real/plaid_web_link_success_burst.json"))
            .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    fixture["payloads"].as_array().unwrap().clone()
}

/// Shuffles `items` in place (Fisher-Yates) with a seeded LCG.
fn shuffle<T>(items: &mut [T], seed: &mut u64) {
    for index in (1..items.len()).rev() {
        *seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        items.swap(index, (*seed >> 33) as usize % (index + 1));
    }
}

fn context() -> PayloadContext {
    PayloadContext::new("test", chrono::Utc::now())
}

async fn ingest(engine: &Engine, feed: Feed, payloads: &[Value]) -> Value {
    let body: String = payloads
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    let report = engine
        .ingest_payload(feed, body.as_bytes(), &context())
        .await
        .unwrap();
    serde_json::to_value(report.counts).unwrap()
}

/// What the session and its item's account are, as JSON: everything `show` and `accounts`
/// report, except times of arrival.
async fn outcome(engine: &Engine, session: &str) -> (Value, Value) {
    let id = linkflow_core::SessionId::new(session).unwrap();
    let view = engine.session(&id).await.unwrap().unwrap();
    let session = serde_json::to_value(linkflow::views::SessionJson::new(&view, false)).unwrap();
    let accounts: Vec<Value> = engine
        .accounts()
        .await
        .unwrap()
        .iter()
        .map(|view| serde_json::to_value(linkflow::views::AccountJson::from(view)).unwrap())
        .collect();
    (session, Value::Array(accounts))
}

/// The burst Plaid delivers at the end of a flow, in 24 seeded orders (the `OPEN` first or
/// anywhere, `onSuccess` anywhere), ends in the same session and account as in event order.
#[tokio::test]
async fn a_plaid_burst_in_any_order_ends_in_the_same_session() {
    let payloads = web_burst();
    // In event order: OPEN, then the onEvent callbacks by timestamp, then onSuccess.
    let mut in_order = payloads.clone();
    in_order.sort_by_key(|payload| {
        payload["metadata"]["timestamp"]
            .as_str()
            .map_or("9".to_owned(), str::to_owned)
    });
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    ingest(&engine, Feed::Plaid, &in_order).await;
    let expected = outcome(&engine, "pl_web_1").await;
    assert_eq!(expected.0["phase"], "succeeded", "{}", expected.0);
    assert_eq!(expected.0["item_id"], "item_web_1");
    assert_eq!(expected.1[0]["state"], "active", "{}", expected.1);
    engine.shutdown().await.unwrap();
    let mut seed = 0x5eed_u64;
    for round in 0..24 {
        let mut shuffled = payloads.clone();
        shuffle(&mut shuffled, &mut seed);
        // Some rounds deliver in several requests, as a flaky network would.
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        for chunk in shuffled.chunks(1 + round % 4) {
            ingest(&engine, Feed::Plaid, chunk).await;
        }
        let got = outcome(&engine, "pl_web_1").await;
        let strip = |mut session: Value| {
            // The receive time of callbacks without a time of their own (onSuccess) differs.
            session["last_event_at"] = Value::Null;
            session
        };
        assert_eq!(strip(got.0), strip(expected.0.clone()), "round {round}");
        assert_eq!(got.1, expected.1, "round {round}");
        engine.shutdown().await.unwrap();
    }
}

fn events_webhook(events: &[Value]) -> Value {
    json!({
        "webhook_type": "LINK",
        "webhook_code": "EVENTS",
        "link_session_id": "pl_resent_1",
        "link_token": "link-sandbox-0b5f",
        "events": events,
        "environment": "sandbox",
    })
}

fn link_event(n: u32, name: &str) -> Value {
    json!({
        "event_id": format!("e1f0c0de-0000-4000-8000-00000000000{n}"),
        "event_name": name,
        "timestamp": format!("2026-03-05T08:00:0{n}.000Z"),
        "event_metadata": {"request_id": "Zt4f", "view_name": if name == "TRANSITION_VIEW" { json!("CREDENTIAL") } else { Value::Null }},
    })
}

/// Plaid re-sends `EVENTS` with every event so far: three webhooks of 2, 4 and 6 events store
/// 6 events, and the client's `onEvent` callbacks of the same events store nothing more.
#[tokio::test]
async fn an_events_webhook_resent_with_growing_lists_stores_each_event_once() {
    let names = [
        "OPEN",
        "TRANSITION_VIEW",
        "SELECT_INSTITUTION",
        "SUBMIT_CREDENTIALS",
        "HANDOFF",
        "TRANSITION_VIEW",
    ];
    let events: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(index, name)| link_event(index as u32 + 1, name))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let mut stored = 0;
    for (round, take) in [2, 4, 6].into_iter().enumerate() {
        let counts = ingest(
            &engine,
            Feed::PlaidWebhook,
            &[events_webhook(&events[..take])],
        )
        .await;
        stored += counts["accepted"].as_u64().unwrap() + counts["rejected"].as_u64().unwrap();
        assert_eq!(
            counts["duplicate"],
            [0, 2, 4][round],
            "round {round}: {counts}"
        );
    }
    assert_eq!(stored, 6);
    // The same events as the client saw them: the same names, times and views.
    let callbacks: Vec<Value> = events
        .iter()
        .map(|event| {
            json!({
                "eventName": event["event_name"],
                "metadata": {
                    "link_session_id": "pl_resent_1",
                    "timestamp": event["timestamp"],
                    "view_name": event["event_metadata"]["view_name"],
                    "request_id": "Zt4f",
                },
            })
        })
        .collect();
    let counts = ingest(&engine, Feed::Plaid, &callbacks).await;
    assert_eq!(counts["duplicate"], 6, "{counts}");
    let id = linkflow_core::SessionId::new("pl_resent_1").unwrap();
    let view = engine.session(&id).await.unwrap().unwrap();
    assert_eq!(view.events, 6);
    assert_eq!(view.state.phase(), linkflow_core::Phase::Succeeded);
    engine.shutdown().await.unwrap();
}

fn item_webhook(code: &str, extra: Value) -> Value {
    let mut body = json!({"webhook_type": "ITEM", "webhook_code": code, "item_id": "item_life_1", "environment": "production"});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    body
}

/// Each item webhook code and the account state it leaves (documented shapes: Plaid's Item
/// webhooks, the `plaid` crate's models).
fn item_lifecycle() -> Vec<(Value, &'static str)> {
    vec![
        (
            item_webhook(
                "ERROR",
                json!({"error": {"error_type": "ITEM_ERROR", "error_code": "ITEM_LOGIN_REQUIRED", "error_message": "the login details of this item have changed", "display_message": null, "status": 400}}),
            ),
            "login_required",
        ),
        (item_webhook("LOGIN_REPAIRED", json!({})), "active"),
        (
            item_webhook(
                "PENDING_EXPIRATION",
                json!({"consent_expiration_time": "2026-06-01T00:00:00Z"}),
            ),
            "pending_expiration",
        ),
        (
            item_webhook(
                "PENDING_DISCONNECT",
                json!({"reason": "INSTITUTION_TOKEN_EXPIRATION"}),
            ),
            "pending_expiration",
        ),
        (
            item_webhook("NEW_ACCOUNTS_AVAILABLE", json!({"error": null})),
            "pending_expiration",
        ),
        (
            item_webhook(
                "WEBHOOK_UPDATE_ACKNOWLEDGED",
                json!({"new_webhook_url": "https://example.invalid/hook", "error": null}),
            ),
            "pending_expiration",
        ),
        (
            item_webhook(
                "USER_PERMISSION_REVOKED",
                json!({"error": {"error_type": "ITEM_ERROR", "error_code": "USER_PERMISSION_REVOKED", "error_message": "the holder of this account has revoked their permission", "status": 400}}),
            ),
            "revoked",
        ),
        (
            item_webhook(
                "USER_ACCOUNT_REVOKED",
                json!({"account_id": "BxBXxLj1m4HMXBm9WZJyUg9XLd4rKEhw8Pb1J"}),
            ),
            "revoked",
        ),
    ]
}

/// The session that links `item_life_1`: OPEN, HANDOFF, and onSuccess with the item id.
fn linking_session() -> Vec<Value> {
    vec![
        json!({"eventName": "OPEN", "metadata": {"link_session_id": "pl_item_1", "timestamp": "2026-03-06T10:00:00.000Z"}}),
        json!({"eventName": "HANDOFF", "metadata": {"link_session_id": "pl_item_1", "timestamp": "2026-03-06T10:01:00.000Z"}}),
        json!({"public_token": "public-sandbox-77", "metadata": {"institution": {"name": "First Platypus Bank", "institution_id": "ins_109508"}, "accounts": [], "link_session_id": "pl_item_1"}, "item_id": "item_life_1"}),
    ]
}

fn cli(data_dir: &Path, args: &[&str], stdin: Option<&str>) -> Value {
    use std::io::Write as _;
    let mut child = Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `ingest --json` prints a line per shown payload and a summary last; the views one value.
    let text = String::from_utf8_lossy(&output.stdout);
    serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(text.lines().last().unwrap_or("null")))
        .unwrap_or_else(|error| panic!("{args:?}: {error}: {text}"))
}

fn item_account(accounts: &Value) -> Value {
    // The CLI prints every account; HTTP a page, `{"accounts": [...]}`.
    accounts
        .get("accounts")
        .unwrap_or(accounts)
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["institution_id"] == "item_life_1")
        .cloned()
        .unwrap_or(Value::Null)
}

#[test]
fn every_item_webhook_drives_the_items_account_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = linking_session().iter().map(Value::to_string).collect();
    cli(
        dir.path(),
        &["ingest", "--provider", "plaid", "--json", "--quiet", "-"],
        Some(&lines.join("\n")),
    );
    let account = item_account(&cli(dir.path(), &["accounts", "--json"], None));
    assert_eq!(account["state"], "active", "{account}");
    assert_eq!(account["provider"], "plaid");
    for (webhook, state) in item_lifecycle() {
        let summary = cli(
            dir.path(),
            &[
                "ingest",
                "--provider",
                "plaid-webhook",
                "--json",
                "--quiet",
                "-",
            ],
            Some(&webhook.to_string()),
        );
        assert_eq!(summary["summary"]["accepted"], 1, "{webhook}: {summary}");
        let account = item_account(&cli(dir.path(), &["accounts", "--json"], None));
        assert_eq!(account["state"], state, "{webhook}: {account}");
    }
    let account = item_account(&cli(dir.path(), &["accounts", "--json"], None));
    assert!(account["expires_at"].is_string(), "{account}");
    assert!(account["new_accounts_at"].is_string(), "{account}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_item_webhook_drives_the_items_account_through_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let lines: Vec<String> = linking_session().iter().map(Value::to_string).collect();
    let response = client
        .post(server.url("/v1/events/plaid"))
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    for (webhook, state) in item_lifecycle() {
        let response = client
            .post(server.url("/v1/webhooks/plaid"))
            .body(webhook.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{webhook}");
        let accounts: Value = client
            .get(server.url("/v1/accounts"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(item_account(&accounts)["state"], state, "{webhook}");
    }
}

const KID: &str = "bfbd5111-8e33-4643-8ced-b2e642a72f3c";

/// POSTs `body` to the Plaid webhook endpoint with `header` as `Plaid-Verification` (none:
/// no header); the status.
async fn post_webhook(
    client: &reqwest::Client,
    server: &Server,
    body: &str,
    header: Option<String>,
) -> u16 {
    let request = client
        .post(server.url("/v1/webhooks/plaid"))
        .body(body.to_owned());
    let request = match header {
        Some(header) => request.header("Plaid-Verification", header),
        None => request,
    };
    request.send().await.unwrap().status().as_u16()
}

async fn head(client: &reqwest::Client, server: &Server) -> usize {
    let sessions: Value = client
        .get(server.url("/v1/sessions"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    sessions["sessions"]
        .as_array()
        .or(sessions.as_array())
        .map_or(0, Vec::len)
}

/// With a JWK set file: a good signature is stored; a wrong key, an unknown `kid`, an old
/// `iat`, a changed body, `alg: none`, HS256 or no header at all is a 401 and nothing is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaid_webhook_is_stored_only_with_a_valid_verification_jwt() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::from_seed(KID, [3; 32]);
    let jwks = dir.path().join("plaid-keys.json");
    std::fs::write(&jwks, json!({"keys": [key.jwk()]}).to_string()).unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[("LINKFLOW_PLAID_JWKS", jwks.to_str().unwrap())],
    );
    let client = reqwest::Client::new();
    let body = json!({"webhook_type": "LINK", "webhook_code": "SESSION_FINISHED", "status": "EXITED", "link_session_id": "pl_signed_1", "link_token": "link-x", "environment": "production"}).to_string();
    let now = chrono::Utc::now().timestamp();
    let other = TestKey::from_seed(KID, [4; 32]);
    let stranger = TestKey::from_seed("a-kid-plaid-never-issued", [3; 32]);
    let changed = body.replace("EXITED", "SUCCESS");
    let refused: Vec<(&str, Option<String>, &str)> = vec![
        ("no header", None, &body),
        ("a wrong key", Some(other.sign(body.as_bytes(), now)), &body),
        (
            "an unknown kid",
            Some(stranger.sign(body.as_bytes(), now)),
            &body,
        ),
        (
            "an old iat",
            Some(key.sign(body.as_bytes(), now - 301)),
            &body,
        ),
        (
            "a changed body",
            Some(key.sign(body.as_bytes(), now)),
            &changed,
        ),
        (
            "alg none",
            Some(key.sign_with_header(
                &format!("{{\"alg\":\"none\",\"kid\":\"{KID}\"}}"),
                body.as_bytes(),
                now,
            )),
            &body,
        ),
        (
            "HS256",
            Some(key.sign_with_header(
                &format!("{{\"alg\":\"HS256\",\"kid\":\"{KID}\"}}"),
                body.as_bytes(),
                now,
            )),
            &body,
        ),
    ];
    for (what, header, sent) in refused {
        let status = post_webhook(&client, &server, sent, header).await;
        assert_eq!(status, 401, "{what}");
    }
    assert_eq!(head(&client, &server).await, 0, "nothing refused is stored");
    let status = post_webhook(
        &client,
        &server,
        &body,
        Some(key.sign(body.as_bytes(), now)),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(head(&client, &server).await, 1);
}

/// A local stand-in of Plaid's `/webhook_verification_key/get`: it knows `KID` (and an expired
/// key), answers Plaid's error for any other id, and counts the requests.
async fn stand_in(key: &TestKey, expired: &TestKey, calls: Arc<AtomicUsize>) -> String {
    use axum::routing::post;
    use axum::Json;
    let known = key.jwk();
    let mut old = expired.jwk();
    old.expired_at = Some(1_700_000_000);
    let to_json = |jwk: &linkflow_providers::plaid_jwt::Jwk| json!({"kid": jwk.kid, "kty": jwk.kty, "crv": jwk.crv, "alg": "ES256", "use": "sig", "x": jwk.x, "y": jwk.y, "created_at": jwk.created_at, "expired_at": jwk.expired_at});
    let (known, old) = (to_json(&known), to_json(&old));
    let app = axum::Router::new().route(
        "/webhook_verification_key/get",
        post(move |Json(request): Json<Value>| {
            let (known, old, calls) = (known.clone(), old.clone(), calls.clone());
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                assert_eq!(request["client_id"], "client-1");
                assert_eq!(request["secret"], "secret-1");
                let answer = if request["key_id"] == known["kid"] {
                    Some(known)
                } else if request["key_id"] == old["kid"] {
                    Some(old)
                } else {
                    None
                };
                match answer {
                    Some(key) => (axum::http::StatusCode::OK, Json(json!({"key": key, "request_id": "r1"}))),
                    None => (
                        axum::http::StatusCode::BAD_REQUEST,
                        Json(json!({"error_type": "INVALID_INPUT", "error_code": "INVALID_WEBHOOK_VERIFICATION_KEY_ID", "error_message": "invalid key_id provided", "request_id": "r2"})),
                    ),
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{address}")
}

/// Keys from (a stand-in of) Plaid's endpoint with the client id and secret: fetched once and
/// cached, an expired key refused, an unknown id refused and remembered, and an unreachable
/// Plaid a 503 (Plaid retries) rather than a 401.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaid_keys_come_from_plaids_endpoint_cached() {
    let dir = tempfile::tempdir().unwrap();
    let key = TestKey::from_seed(KID, [5; 32]);
    let expired = TestKey::from_seed("an-expired-key", [6; 32]);
    let calls = Arc::new(AtomicUsize::new(0));
    let base = stand_in(&key, &expired, calls.clone()).await;
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("LINKFLOW_PLAID_CLIENT_ID", "client-1"),
            ("LINKFLOW_PLAID_SECRET", "secret-1"),
            ("LINKFLOW_PLAID_URL", &base),
        ],
    );
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    for n in 0..3 {
        let body = json!({"webhook_type": "LINK", "webhook_code": "SESSION_FINISHED", "status": "SUCCESS", "link_session_id": format!("pl_ep_{n}"), "environment": "production"}).to_string();
        let status = post_webhook(
            &client,
            &server,
            &body,
            Some(key.sign(body.as_bytes(), now)),
        )
        .await;
        assert_eq!(status, 200, "webhook {n}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the key is fetched once");
    let body =
        json!({"webhook_type": "ITEM", "webhook_code": "LOGIN_REPAIRED", "item_id": "item_x"})
            .to_string();
    let status = post_webhook(
        &client,
        &server,
        &body,
        Some(expired.sign(body.as_bytes(), now)),
    )
    .await;
    assert_eq!(status, 401, "an expired key");
    let stranger = TestKey::from_seed("never-issued", [7; 32]);
    for _ in 0..2 {
        let status = post_webhook(
            &client,
            &server,
            &body,
            Some(stranger.sign(body.as_bytes(), now)),
        )
        .await;
        assert_eq!(status, 401, "an unknown key id");
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "an unknown id is asked once"
    );
    assert_eq!(head(&client, &server).await, 3);
    // Forged ids by the dozen: Plaid is asked at most 30 times a minute; past that the webhook
    // is answered 503 (Plaid retries a real one) and Plaid is not asked.
    let mut statuses = Vec::new();
    for n in 0..32 {
        let forged = TestKey::from_seed(&format!("forged-{n}"), [8; 32]);
        let status = post_webhook(
            &client,
            &server,
            &body,
            Some(forged.sign(body.as_bytes(), now)),
        )
        .await;
        statuses.push(status);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 30, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|status| **status == 401).count(), 27);
    assert_eq!(statuses.iter().filter(|status| **status == 503).count(), 5);
    drop(server);

    // Plaid unreachable: nothing can be verified, the webhook is answered 503.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &dir.path().join("data"),
        &[
            ("LINKFLOW_PLAID_CLIENT_ID", "client-1"),
            ("LINKFLOW_PLAID_SECRET", "secret-1"),
            ("LINKFLOW_PLAID_URL", "http://127.0.0.1:9"),
        ],
    );
    let body =
        json!({"webhook_type": "ITEM", "webhook_code": "LOGIN_REPAIRED", "item_id": "item_y"})
            .to_string();
    let status = post_webhook(
        &client,
        &server,
        &body,
        Some(key.sign(body.as_bytes(), now)),
    )
    .await;
    assert_eq!(status, 503);
}

/// A Plaid session of one of four shapes, as the client forwards it: a success, an exit after
/// an error, an abandoned flow, an OAuth success; the burst after `OPEN` shuffled by `seed`.
fn plaid_flow(n: usize, seed: &mut u64) -> Vec<Value> {
    let session = format!("pl_funnel_{n:03}");
    let at = |second: usize| format!("2026-03-07T10:{:02}:{:02}.000Z", n % 60, second);
    let event = |name: &str, second: usize, view: &str| json!({"eventName": name, "metadata": {"link_session_id": session, "timestamp": at(second), "view_name": view, "institution_id": "ins_109508"}});
    let mut burst = match n % 4 {
        0 => vec![
            event("SELECT_INSTITUTION", 2, "SELECT_INSTITUTION"),
            event("SUBMIT_CREDENTIALS", 5, "CREDENTIAL"),
            event("TRANSITION_VIEW", 7, "CONNECTED"),
            event("HANDOFF", 8, "CONNECTED"),
            json!({"public_token": "public-x", "metadata": {"institution": {"name": "Bank", "institution_id": "ins_109508"}, "accounts": [], "link_session_id": session}}),
        ],
        1 => vec![
            event("SELECT_INSTITUTION", 2, "SELECT_INSTITUTION"),
            event("SUBMIT_CREDENTIALS", 5, "CREDENTIAL"),
            json!({"eventName": "ERROR", "metadata": {"link_session_id": session, "timestamp": at(6), "view_name": "ERROR", "error_code": "INVALID_CREDENTIALS", "error_type": "ITEM_ERROR"}}),
            event("EXIT", 9, "ERROR"),
            json!({"error": {"error_code": "INVALID_CREDENTIALS", "error_type": "ITEM_ERROR"}, "metadata": {"status": "requires_credentials", "link_session_id": session}}),
        ],
        2 => vec![event("TRANSITION_VIEW", 3, "SELECT_INSTITUTION")],
        _ => vec![
            event("SELECT_INSTITUTION", 2, "SELECT_INSTITUTION"),
            event("OPEN_OAUTH", 4, "OAUTH"),
            event("HANDOFF", 30, "CONNECTED"),
        ],
    };
    shuffle(&mut burst, seed);
    let mut flow = vec![event("OPEN", 0, "CONSENT")];
    flow.extend(burst);
    flow
}

/// Plaid's conversion (sessions that reached `HANDOFF` over distinct sessions) is linkflow's
/// `succeeded` over sessions, and the funnel grouped by last screen shows where the others
/// stopped.
#[tokio::test]
async fn plaids_conversion_is_linkflows_succeeded_count_and_the_funnel_groups_by_view() {
    let mut seed = 7;
    let flows: Vec<Vec<Value>> = (0..60).map(|n| plaid_flow(n, &mut seed)).collect();
    let all: Vec<Value> = flows.concat();
    let sessions: std::collections::BTreeSet<&str> = all
        .iter()
        .filter_map(|payload| payload["metadata"]["link_session_id"].as_str())
        .collect();
    let handoff: std::collections::BTreeSet<&str> = all
        .iter()
        .filter(|payload| payload["eventName"] == "HANDOFF")
        .filter_map(|payload| payload["metadata"]["link_session_id"].as_str())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    ingest(&engine, Feed::Plaid, &all).await;
    let later = chrono::Utc::now() + chrono::Duration::days(1);
    let mut query = linkflow_core::funnel::FunnelQuery::at(later);
    query.provider = Some(linkflow_core::Provider::Plaid);
    let funnel = engine.funnel(query.clone()).await.unwrap();
    assert_eq!(funnel[0].sessions, sessions.len() as u64);
    assert_eq!(funnel[0].succeeded, handoff.len() as u64);
    assert_eq!(
        funnel[0].succeeded as f64 / funnel[0].sessions as f64,
        handoff.len() as f64 / sessions.len() as f64
    );
    query.group_by = linkflow_core::funnel::GroupBy::Screen;
    let by_screen = engine.funnel(query).await.unwrap();
    let groups: Vec<(&str, u64, u64, u64)> = by_screen
        .iter()
        .map(|group| {
            (
                group.group.as_str(),
                group.sessions,
                group.succeeded,
                group.exited,
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("CONNECTED", 30, 30, 0),
            ("ERROR", 15, 0, 15),
            ("SELECT_INSTITUTION", 15, 0, 0),
        ]
    );
    engine.shutdown().await.unwrap();
}

/// A Plaid key configuration that cannot work stops `serve` at start with a message naming
/// it, instead of serving webhooks it cannot verify.
#[test]
fn a_bad_plaid_key_configuration_stops_serve_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let bad_file = dir.path().join("keys.json");
    std::fs::write(&bad_file, "{\"nope\": 1}").unwrap();
    let missing = dir.path().join("absent.json");
    let cases: [(&[(&str, &str)], &str); 3] = [
        (
            &[("LINKFLOW_PLAID_JWKS", bad_file.to_str().unwrap())],
            "not a JWK set",
        ),
        (
            &[("LINKFLOW_PLAID_JWKS", missing.to_str().unwrap())],
            "cannot read LINKFLOW_PLAID_JWKS",
        ),
        (
            &[
                ("LINKFLOW_PLAID_CLIENT_ID", "c"),
                ("LINKFLOW_PLAID_SECRET", "s"),
                ("LINKFLOW_PLAID_ENV", "staging"),
            ],
            "LINKFLOW_PLAID_ENV is `staging`",
        ),
    ];
    for (env, expected) in cases {
        let mut command = Command::new(linkflow_bin());
        command
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env_remove("LINKFLOW_PLAID_JWKS")
            .env_remove("LINKFLOW_PLAID_CLIENT_ID")
            .env_remove("LINKFLOW_PLAID_SECRET");
        for (key, value) in env {
            command.env(key, value);
        }
        let output = command.output().unwrap();
        assert!(!output.status.success(), "{expected}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{expected}: {stderr}");
    }
}
