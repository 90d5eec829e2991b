//! A real `linkflow serve` on a loopback port (port 0), driven by a real HTTP client: every
//! endpoint, auth, signatures, limits, server-sent events, and shutdown durability.

use std::process::Command;
use std::time::Duration;

use linkflow_e2e::{
    fixtures_dir, get_json, get_text, linkflow_bin, read_sse_frames, read_sse_ids, Server,
};
use linkflow_providers::signature;
use serde_json::Value;

const SESSION: &str = "sandbox_6624ccbc-69bb-4d0d-951a-807715fe6a94";
const SECRET: &str = "knot-test-secret";
const TOKEN: &str = "test-token";

fn fixture(relative: &str) -> String {
    std::fs::read_to_string(fixtures_dir().join(relative)).unwrap()
}

#[tokio::test]
async fn every_endpoint_answers_and_bad_input_never_writes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LINKFLOW_KNOT_SECRET", SECRET)]);
    let client = reqwest::Client::new();

    let health: Value = get_json(&client, &server.url("/healthz")).await;
    assert_eq!(health["status"], "ok");
    // Ready: the engine takes writes and the data directory's disk has room.
    let ready: Value = get_json(&client, &server.url("/readyz")).await;
    assert_eq!(ready["status"], "ready");
    assert!(ready["disk_free_bytes"].as_u64().unwrap() > 0, "{ready}");

    let response = client
        .post(server.url("/v1/events/moneykit"))
        .body(fixture("moneykit/sample_flow.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["accepted"], 14);
    assert_eq!(body["results"].as_array().unwrap().len(), 14);
    assert_eq!(body["results"][0]["outcome"], "accepted");

    let response = client
        .post(server.url("/v1/events/benji?session_id=benji-http"))
        .body(r#"{"callback":"onEvent","event":"user_partner_select","metadata":{"partner_id":"p1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A page: `{"sessions": [...], "next_cursor": ...}`; one session a page, then the next.
    let sessions: Value = get_json(&client, &server.url("/v1/sessions")).await;
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 2);
    assert!(sessions["next_cursor"].is_null());
    let first: Value = get_json(&client, &server.url("/v1/sessions?limit=1")).await;
    assert_eq!(first["sessions"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second: Value = get_json(
        &client,
        &server.url(&format!("/v1/sessions?limit=1&cursor={cursor}")),
    )
    .await;
    assert_eq!(second["sessions"].as_array().unwrap().len(), 1);
    assert_ne!(second["sessions"][0], first["sessions"][0]);
    for bad in ["limit=0", "limit=1001", "cursor=nope", "cursor=s1.zz"] {
        let response = client
            .get(server.url(&format!("/v1/sessions?{bad}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
    }
    let filtered: Value = get_json(
        &client,
        &server.url("/v1/sessions?phase=succeeded&provider=moneykit"),
    )
    .await;
    assert_eq!(filtered["sessions"].as_array().unwrap().len(), 1);
    let show: Value = client
        .get(server.url(&format!("/v1/sessions/{SESSION}")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(show["phase"], "succeeded");
    assert_eq!(show["abandoned"], false);
    let history: Value = client
        .get(server.url(&format!("/v1/sessions/{SESSION}/history")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(history["history"][4]["raw_name"], "submit_credentails");
    assert_eq!(history["next_cursor"], Value::Null);
    // A page at a time: two entries, then the rest from the cursor.
    let first: Value = client
        .get(server.url(&format!("/v1/sessions/{SESSION}/history?limit=2")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first["history"].as_array().unwrap().len(), 2);
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    let rest: Value = client
        .get(server.url(&format!(
            "/v1/sessions/{SESSION}/history?limit=1000&cursor={cursor}"
        )))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(rest["history"][2]["raw_name"], "submit_credentails");
    assert_eq!(
        first["history"].as_array().unwrap().len() + rest["history"].as_array().unwrap().len(),
        history["history"].as_array().unwrap().len()
    );
    assert_eq!(
        client
            .get(server.url("/v1/sessions/nobody"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(server.url("/v1/sessions/nobody/history"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        client
            .get(server.url("/v1/sessions?phase=finished"))
            .send()
            .await
            .unwrap()
            .status(),
        400
    );

    // Malformed JSON, an invalid event in a batch, a body over 1 MiB: refused, nothing stored.
    let malformed = client
        .post(server.url("/v1/events/moneykit"))
        .body("{\"name\":")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), 400);
    let error: Value = malformed.json().await.unwrap();
    assert_eq!(error["error"], "invalid_json");
    assert!(error["detail"].as_str().unwrap().contains("not JSON"));
    // One payload not JSON: the whole request is refused, the valid one is not stored.
    let partial = format!(
        "{}\n{}",
        r#"{"name":"open","meta":{"link_session_id":"never-stored","timestamp":"2023-11-29T12:44:31.804Z"}}"#,
        r#"{"name":"open","meta":"#
    );
    let response = client
        .post(server.url("/v1/events/moneykit"))
        .body(partial)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "invalid_json");
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("line 2: not JSON"),
        "{error}"
    );
    // One payload over the record size limit: 413, and nothing stored either.
    let oversized = format!(
        "[{},{}]",
        r#"{"name":"open","meta":{"link_session_id":"never-stored","timestamp":"2023-11-29T12:44:31.804Z"}}"#,
        serde_json::json!({
            "name": "error",
            "properties": {"displayed_message": "x".repeat(8_000)},
            "meta": {"link_session_id": "never-stored"}
        })
    );
    let response = client
        .post(server.url("/v1/events/moneykit"))
        .body(oversized)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "too_large");
    assert!(
        error["detail"].as_str().unwrap().starts_with("index 1:"),
        "{error}"
    );
    assert_eq!(
        client
            .get(server.url("/v1/sessions/never-stored"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let huge = format!(
        "[{}]",
        vec![
            "{\"pad\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}";
            20_000
        ]
        .join(",")
    );
    assert!(huge.len() > 1024 * 1024);
    assert_eq!(
        client
            .post(server.url("/v1/events/moneykit"))
            .body(huge)
            .send()
            .await
            .unwrap()
            .status(),
        413
    );
    // A well-formed payload that names no session is kept in quarantine: 202, never a 4xx
    // that would make the sender retry or drop it.
    let benji_without_session = client
        .post(server.url("/v1/events/benji"))
        .body(r#"{"callback":"onExit"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(benji_without_session.status(), 202);
    let body: Value = benji_without_session.json().await.unwrap();
    assert_eq!(body["quarantined"], 1);
    assert_eq!(body["results"][0]["outcome"], "quarantined");
    let quarantine: Value = get_json(&client, &server.url("/v1/quarantine")).await;
    assert_eq!(quarantine["counts"]["pending"], 1);
    assert_eq!(
        quarantine["entries"][0]["origin"]["channel"],
        "POST /v1/events/benji"
    );

    // Knot: unsigned and forged webhooks are refused; a signed one is stored.
    let webhook = fixture("knot/authenticated.json");
    let unsigned = client
        .post(server.url("/v1/webhooks/knot"))
        .body(webhook.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(unsigned.status(), 401);
    let forged = signature::sign(b"wrong", webhook.as_bytes(), "application/json").unwrap();
    let response = client
        .post(server.url("/v1/webhooks/knot"))
        .header("Content-Type", "application/json")
        .header("Knot-Signature", forged)
        .body(webhook.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        client
            .get(server.url("/v1/sessions/fb5aa994-ed1c-4c3e-b29a-b2a53222e584"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let signed =
        signature::sign(SECRET.as_bytes(), webhook.as_bytes(), "application/json").unwrap();
    let response = client
        .post(server.url("/v1/webhooks/knot"))
        .header("Content-Type", "application/json")
        .header("Knot-Signature", signed)
        .body(webhook)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Accounts come a page at a time: `{"accounts": [...], "next_cursor": ...}`.
    let accounts: Value = get_json(&client, &server.url("/v1/accounts")).await;
    assert_eq!(accounts["accounts"][0]["state"], "active");
    assert!(accounts["next_cursor"].is_null());
    // A user's accounts and sessions in one read.
    let user = accounts["accounts"][0]["external_user_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let view: Value = get_json(&client, &server.url(&format!("/v1/users/{user}"))).await;
    assert_eq!(view["external_user_id"], user.as_str());
    assert_eq!(view["accounts"].as_array().unwrap().len(), 1, "{view}");
    assert!(view["sessions"].is_array(), "{view}");
    let nobody: Value = get_json(&client, &server.url("/v1/users/nobody")).await;
    assert_eq!(nobody["accounts"].as_array().unwrap().len(), 0);
    assert_eq!(nobody["sessions"].as_array().unwrap().len(), 0);
    let merchants: Value = get_json(&client, &server.url("/v1/merchants")).await;
    assert_eq!(merchants["merchants"].as_array().unwrap().len(), 0);
    assert!(merchants["next_cursor"].is_null());
    let parked: Value = get_json(&client, &server.url("/v1/parked")).await;
    assert_eq!(parked["events"].as_array().unwrap().len(), 0);
    assert_eq!(parked["truncated"], false);

    let metrics = get_text(&client, &server.url("/metrics")).await;
    assert!(
        metrics.contains(
            r#"linkflow_events_ingested_total{provider="moneykit",outcome="accepted"} 14"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"linkflow_sessions{phase="succeeded"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains("linkflow_ingest_duration_seconds_count"));
    assert!(metrics.contains("linkflow_rejected_events 0"));
    assert!(
        metrics.contains("linkflow_sessions_abandoned "),
        "the abandoned gauge: {metrics}"
    );
    let cached: usize = metrics
        .lines()
        .find_map(|line| line.strip_prefix("linkflow_cache_states "))
        .expect("the cache gauge")
        .parse()
        .unwrap();
    assert!(cached >= 2, "both sessions are cached: {metrics}");
    assert!(metrics.contains("linkflow_cache_bytes "), "{metrics}");
    // The write path: every stored request went through a commit and a sync.
    let counter = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{name} in {metrics}"))
            .parse()
            .unwrap()
    };
    let requests = counter("linkflow_write_requests_total");
    assert!(requests >= 2.0, "{metrics}");
    assert!(
        counter("linkflow_write_groups_total") <= requests,
        "{metrics}"
    );
    assert!(counter("linkflow_write_syncs_total") >= 1.0, "{metrics}");
    assert!(
        counter(r#"linkflow_write_request_seconds_total{stage="syncing"}"#) > 0.0,
        "{metrics}"
    );
    for stage in ["queued", "committing", "waiting_for_sync"] {
        counter(&format!(
            r#"linkflow_write_request_seconds_total{{stage="{stage}"}}"#
        ));
    }
    assert!(
        counter(r#"linkflow_write_thread_busy_seconds_total{thread="writer"}"#) > 0.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn the_token_guards_everything_but_health_and_the_signed_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[("LINKFLOW_KNOT_SECRET", SECRET), ("LINKFLOW_TOKEN", TOKEN)],
    );
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(server.url("/v1/sessions"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let wrong = client
        .get(server.url("/v1/sessions"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        client
            .get(server.url("/v1/sessions"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The scheme in any case (RFC 7235); a token that only starts like the right one, or the
    // right one with another scheme, is refused.
    for (value, status) in [
        (format!("bearer {TOKEN}"), 200),
        (format!("BEARER {TOKEN}"), 200),
        (format!("Bearer {TOKEN}x"), 401),
        (format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]), 401),
        (format!("Basic {TOKEN}"), 401),
    ] {
        let response = client
            .get(server.url("/v1/sessions"))
            .header("Authorization", &value)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{value}");
    }
    // The probes need no token.
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client
            .get(server.url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    let posted = client
        .post(server.url("/v1/events/moneykit"))
        .body(fixture("moneykit/sample_flow.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 401);
    let webhook = fixture("knot/merchant_status_update.json");
    let signed =
        signature::sign(SECRET.as_bytes(), webhook.as_bytes(), "application/json").unwrap();
    let response = client
        .post(server.url("/v1/webhooks/knot"))
        .header("Content-Type", "application/json")
        .header("Knot-Signature", signed)
        .body(webhook)
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        200,
        "the webhook authenticates by signature, not token"
    );
}

#[tokio::test]
async fn the_event_stream_catches_up_then_follows_live_and_resumes_from_last_event_id() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LINKFLOW_KNOT_SECRET", SECRET)]);
    let client = reqwest::Client::new();
    client
        .post(server.url("/v1/events/moneykit"))
        .body(fixture("moneykit/sample_flow.json"))
        .send()
        .await
        .unwrap();

    let response = client
        .get(server.url("/v1/stream?after=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let reader = tokio::spawn(read_sse_ids(response, 6));
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .post(server.url("/v1/events/benji?session_id=live"))
        .body(r#"[{"callback":"onEvent","event":"go_back_clicked","timestamp":1},{"callback":"onExit","timestamp":2}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(reader.await.unwrap(), vec![11, 12, 13, 14, 15, 16]);

    let resumed = client
        .get(server.url("/v1/stream"))
        .header("Last-Event-ID", "14")
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse_ids(resumed, 2).await, vec![15, 16]);
    // One session's events only: the two of `live`, at positions 15 and 16, after position 0.
    let one = client
        .get(server.url("/v1/stream?after=0&session=live"))
        .send()
        .await
        .unwrap();
    assert_eq!(read_sse_ids(one, 2).await, vec![15, 16]);
    let bad = client
        .get(server.url("/v1/stream?session=%01"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // Each event carries its classification as its session's fold stood when it was stored:
    // a second MoneyKit open is rejected.
    let open = |second: u32| {
        format!(
            r#"{{"name":"open","properties":{{}},"meta":{{"link_session_id":"sse-rejected","timestamp":"2023-11-29T12:44:{second:02}.000Z"}}}}"#
        )
    };
    client
        .post(server.url("/v1/events/moneykit"))
        .body(format!("[{},{}]", open(1), open(2)))
        .send()
        .await
        .unwrap();
    let classified = client
        .get(server.url("/v1/stream?after=16"))
        .send()
        .await
        .unwrap();
    let frames = read_sse_frames(classified, 2).await;
    assert_eq!(frames[0].1["session_id"], "sse-rejected");
    assert_eq!(frames[0].1["rejected"], false);
    assert_eq!(frames[1].1["rejected"], true, "{frames:?}");
    // Each session event carries the phase before and after it: the first open opens the
    // session; the second, rejected, changes nothing.
    assert_eq!(frames[0].1["phase_before"], serde_json::Value::Null);
    assert_eq!(frames[0].1["phase_after"], "opened", "{frames:?}");
    assert_eq!(frames[1].1["phase_before"], "opened");
    assert_eq!(frames[1].1["phase_after"], "opened");
    // Benji's `live` session: a go-back (telemetry), then an exit.
    let live = client
        .get(server.url("/v1/stream?after=0&session=live"))
        .send()
        .await
        .unwrap();
    let frames = read_sse_frames(live, 2).await;
    assert_eq!(frames[1].1["phase_before"], frames[0].1["phase_after"]);
    assert_eq!(frames[1].1["phase_after"], "exited", "{frames:?}");
    let bad = client
        .get(server.url("/v1/stream"))
        .header("Last-Event-ID", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    // From the last possible position: an open stream with nothing to send, not an overflow.
    let mut beyond = client
        .get(server.url(&format!("/v1/stream?after={}", u64::MAX)))
        .send()
        .await
        .unwrap();
    assert_eq!(beyond.status(), 200);
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .post(server.url("/v1/events/benji?session_id=after-the-end"))
        .body(r#"[{"callback":"onEvent","event":"go_back_clicked","timestamp":1}]"#)
        .send()
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_millis(300), beyond.chunk()).await;
    assert!(
        first.is_err(),
        "expected an open, quiet stream, got {first:?}"
    );

    // An open stream does not hold up a graceful shutdown.
    let _open = client
        .get(server.url("/v1/stream?after=16"))
        .send()
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_lets_accepted_requests_finish_and_they_are_durable() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LINKFLOW_KNOT_SECRET", SECRET)]);
    let client = reqwest::Client::new();
    // Many requests in flight when the signal arrives.
    let mut requests = Vec::new();
    for n in 0..20u32 {
        let client = client.clone();
        let url = server.url(&format!("/v1/events/benji?session_id=term-{n}"));
        requests.push(tokio::spawn(async move {
            client
                .post(url)
                .body(r#"[{"callback":"onEvent","event":"user_partner_select","metadata":{"partner_id":"p"},"timestamp":1},{"callback":"onSuccess","timestamp":2}]"#)
                .send()
                .await
        }));
    }
    tokio::time::sleep(Duration::from_millis(30)).await;
    let status = tokio::task::spawn_blocking(move || server.terminate())
        .await
        .unwrap();
    assert!(status.success());
    let mut acknowledged = Vec::new();
    for (n, request) in requests.into_iter().enumerate() {
        if let Ok(response) = request.await.unwrap() {
            if response.status() == 200 {
                acknowledged.push(n);
            }
        }
    }
    assert!(
        !acknowledged.is_empty(),
        "some requests were accepted before the signal"
    );
    for n in acknowledged {
        let output = Command::new(linkflow_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["show", &format!("term-{n}"), "--json"])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "acknowledged session term-{n} is missing"
        );
        let show: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(show["phase"], "succeeded");
    }
}
