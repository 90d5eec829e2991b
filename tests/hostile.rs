//! A real `linkflow serve` under hostile traffic (issue 28's findings, each reproduced): slow
//! and idle clients, too many connections from one address, a client stalling shutdown,
//! requests the API refuses (every refusal `{"error", "detail"}` JSON), invalid UTF-8, and
//! event-stream subscribers past the limit or not reading.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use linkflow_e2e::{get_json, get_text, linkflow_bin, Server};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

fn moneykit_open(session: &str, second: u32) -> String {
    format!(
        r#"{{"name":"open","properties":{{}},"meta":{{"link_session_id":"{session}","timestamp":"2023-11-29T12:44:{second:02}.000Z"}}}}"#
    )
}

fn address(server: &Server) -> SocketAddr {
    server
        .base
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap()
}

/// A connection to `to` from the loopback address `127.0.0.<from>`.
async fn connect_from(from: u8, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, from)),
            0,
        ))
        .unwrap();
    socket.connect(to).await.unwrap()
}

/// A slowloris client: the start of a request whose headers never end.
async fn slow_client(from: u8, to: SocketAddr) -> TcpStream {
    let mut stream = connect_from(from, to).await;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: linkflow\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

/// Whether the server closed `stream` within `wait` (reading what it sent first).
async fn closed_within(stream: &mut TcpStream, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut buffer = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buffer)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// The value of an unlabelled or labelled sample in Prometheus text.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(client: &reqwest::Client, server: &Server) -> String {
    get_text(client, &server.url("/metrics")).await
}

/// Issue 28's finding: 1,100 slow partial requests exhausted the descriptors and `/healthz`
/// went unanswered for 40 s. Now 2,000 slow clients (from four addresses, 500 each) stay open
/// and `/healthz` from a fifth answers at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_slow_clients_do_not_stop_healthz() {
    // This process holds 2,000 sockets too.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LINKFLOW_HEADER_TIMEOUT_SECS", "120")]);
    let to = address(&server);
    let mut slow = Vec::new();
    for n in 0..2_000u32 {
        slow.push(slow_client(2 + (n % 4) as u8, to).await);
    }
    let client = reqwest::Client::new();
    // Every one of them is open (plus the scrape's own connection).
    let mut open = 0.0;
    for _ in 0..50 {
        open = sample(
            &metrics(&client, &server).await,
            "linkflow_http_connections_open",
        )
        .unwrap();
        if open >= 2_001.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(open >= 2_001.0, "{open} connections open");
    // The issue's bound: /healthz answers within 100 ms. The best of five fresh connections is
    // taken, so that one scheduling hiccup of this shared machine does not decide it.
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let fresh = reqwest::Client::new();
        let started = Instant::now();
        let response = fresh.get(server.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        best = best.min(started.elapsed());
    }
    assert!(best < Duration::from_millis(100), "/healthz took {best:?}");
    // The slow clients were never answered: still open.
    assert!(!closed_within(&mut slow[0], Duration::from_millis(200)).await);
}

/// One address cannot take every connection: past its share its new connections are closed at
/// once, while another address is served.
#[tokio::test]
async fn one_client_address_is_held_to_its_share() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[("LINKFLOW_MAX_CONNECTIONS_PER_CLIENT", "20")]);
    let to = address(&server);
    let mut held = Vec::new();
    for _ in 0..25 {
        held.push(slow_client(2, to).await);
    }
    let mut closed = 0;
    for stream in &mut held {
        if closed_within(stream, Duration::from_millis(300)).await {
            closed += 1;
        }
    }
    assert_eq!(
        closed, 5,
        "the connections past 20 from 127.0.0.2 are closed"
    );
    let client = reqwest::Client::new();
    let health: Value = get_json(&client, &server.url("/healthz")).await;
    assert_eq!(health["status"], "ok");
    let text = metrics(&client, &server).await;
    assert_eq!(
        sample(
            &text,
            "linkflow_http_connections_refused_total{reason=\"max_connections_per_client\"}"
        ),
        Some(5.0),
        "{text}"
    );
}

/// A client that never finishes its headers, and a keep-alive connection left idle after a
/// request, are both closed after the header timeout; a body that does not arrive in time is
/// a 408 in the API's error shape.
#[tokio::test]
async fn slow_headers_idle_connections_and_slow_bodies_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("LINKFLOW_HEADER_TIMEOUT_SECS", "1"),
            ("LINKFLOW_BODY_TIMEOUT_SECS", "1"),
        ],
    );
    let to = address(&server);
    let mut slow = slow_client(1, to).await;
    assert!(closed_within(&mut slow, Duration::from_secs(10)).await);

    let mut idle = connect_from(1, to).await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: linkflow\r\n\r\n")
        .await
        .unwrap();
    let mut response = vec![0u8; 1024];
    let read = idle.read(&mut response).await.unwrap();
    assert!(String::from_utf8_lossy(&response[..read]).starts_with("HTTP/1.1 200"));
    assert!(closed_within(&mut idle, Duration::from_secs(10)).await);

    let mut trickle = connect_from(1, to).await;
    trickle
        .write_all(
            b"POST /v1/events/moneykit HTTP/1.1\r\nHost: linkflow\r\nContent-Length: 100\r\n\r\n{\"na",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), trickle.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""error":"body_timeout""#), "{answer}");
}

/// Issue 28's finding: after SIGTERM the server kept running as long as one client stalled a
/// request. Now it exits once the shutdown deadline passes, and what it acknowledged before is
/// durable.
#[tokio::test]
async fn sigterm_with_a_stalled_client_exits_within_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("LINKFLOW_SHUTDOWN_DEADLINE_SECS", "1"),
            ("LINKFLOW_BODY_TIMEOUT_SECS", "600"),
        ],
    );
    let client = reqwest::Client::new();
    let accepted = client
        .post(server.url("/v1/events/moneykit"))
        .body(moneykit_open("stalled-before", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 200);
    // A request whose body stops after 10 of its 1,000 bytes, and an idle connection.
    let to = address(&server);
    let mut stalled = connect_from(1, to).await;
    stalled
        .write_all(b"POST /v1/events/moneykit HTTP/1.1\r\nHost: linkflow\r\nContent-Length: 1000\r\n\r\n[{\"name\":\"")
        .await
        .unwrap();
    let _idle = connect_from(1, to).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, took) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let status = server.terminate();
        (status, started.elapsed())
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    // The deadline is 1 s; the rest is the engine's shutdown and the process's exit.
    assert!(took < Duration::from_secs(10), "exit took {took:?}");
    assert!(closed_within(&mut stalled, Duration::from_secs(1)).await);
    let output = std::process::Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["show", "stalled-before", "--json"])
        .output()
        .unwrap();
    assert!(output.status.success(), "the acknowledged session is kept");
}

/// Issue 28's finding: 413, bad query values, unknown routes, 405/414/431 answered plain text
/// or nothing. Every refusal is now `{"error", "detail"}` with a JSON content type, and none of
/// them stores anything.
#[tokio::test]
async fn every_refusal_is_json_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let long_query = format!("/v1/sessions?institution={}", "a".repeat(9_000));
    // One event that fits and one whose record would be over the size limit.
    let big = format!(
        r#"{{"name":"open","properties":{{"note":"{}"}},"meta":{{"link_session_id":"mixed-2","timestamp":"2023-11-29T12:44:02.000Z"}}}}"#,
        "x".repeat(20_000)
    );
    let over_size = format!("[{},{big}]", moneykit_open("mixed-1", 1));
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (client.get(server.url("/nope")), 404, "not_found"),
        (client.get(server.url("/v1/nope")), 404, "not_found"),
        (
            client.get(server.url("/v1/events/moneykit")),
            405,
            "method_not_allowed",
        ),
        (
            client.delete(server.url("/v1/sessions")),
            405,
            "method_not_allowed",
        ),
        (
            client
                .post(server.url("/v1/events/moneykit"))
                .body(vec![b' '; 1024 * 1024 + 1]),
            413,
            "too_large",
        ),
        (
            // Read and dropped before the answer: the client, still writing, gets the 413
            // rather than a reset connection.
            client
                .post(server.url("/v1/events/moneykit"))
                .body(vec![b' '; 6 * 1024 * 1024]),
            413,
            "too_large",
        ),
        (
            client.get(server.url("/v1/sessions?limit=abc")),
            400,
            "bad_request",
        ),
        (
            client.get(server.url("/v1/sessions?limit=1&limit=2")),
            400,
            "bad_request",
        ),
        (
            // A mistyped filter is refused, naming it, instead of listing every session.
            client.get(server.url("/v1/sessions?phse=succeeded")),
            400,
            "bad_request",
        ),
        (
            client.get(server.url("/v1/stream?after=abc")),
            400,
            "bad_request",
        ),
        (
            client.get(server.url("/v1/sessions?first_event_from=yesterday")),
            400,
            "bad_request",
        ),
        (client.get(server.url(&long_query)), 414, "uri_too_long"),
        (
            (0..40).fold(client.get(server.url("/v1/sessions")), |request, n| {
                request.header(format!("x-filler-{n}"), "f".repeat(1_000))
            }),
            431,
            "headers_too_large",
        ),
        (
            client
                .post(server.url("/v1/events/moneykit?session_id=%FF"))
                .body(moneykit_open("utf8", 1)),
            400,
            "invalid_utf8",
        ),
        (
            client
                .post(server.url("/v1/events/moneykit"))
                .header(
                    "content-type",
                    reqwest::header::HeaderValue::from_bytes(b"application/json; caf\xe9").unwrap(),
                )
                .body(moneykit_open("utf8-header", 1)),
            400,
            "invalid_utf8",
        ),
        (
            client
                .post(server.url("/v1/events/moneykit"))
                .body(over_size),
            413,
            "too_large",
        ),
        (
            client
                .post(server.url("/v1/events/moneykit"))
                .body("{not json"),
            400,
            "invalid_json",
        ),
    ];
    let unknown = get_text(&client, &server.url("/v1/sessions?phse=succeeded")).await;
    assert!(unknown.contains("phse"), "{unknown}");
    for (request, status, code) in cases {
        let request = request.build().unwrap();
        let what = format!(
            "{} {}",
            request.method(),
            &request.url().as_str()[..60.min(request.url().as_str().len())]
        );
        let response = client.execute(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{what}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{what}: {body}");
        assert!(
            !body["detail"].as_str().unwrap().is_empty(),
            "{what}: {body}"
        );
    }
    // Nothing of any of them was stored.
    let sessions: Value = get_json(&client, &server.url("/v1/sessions")).await;
    assert_eq!(sessions["sessions"], serde_json::json!([]), "{sessions}");
    // A header linkflow does not read is not its business: a payload with an odd byte there
    // is stored (nothing a provider sends is lost).
    let odd = client
        .post(server.url("/v1/events/moneykit"))
        .header(
            "x-note",
            reqwest::header::HeaderValue::from_bytes(b"caf\xe9").unwrap(),
        )
        .body(moneykit_open("odd-header", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(odd.status(), 200);
    let text = metrics(&client, &server).await;
    assert_eq!(
        sample(
            &text,
            "linkflow_http_refused_total{status=\"405\",error=\"method_not_allowed\"}"
        ),
        Some(2.0),
        "{text}"
    );
}

/// Issue 28's findings: no subscriber limit, and subscribers that stop reading held their
/// memory. Past the limit a subscriber gets a 503 in the error shape, a place frees when one
/// leaves, and a subscriber that reads nothing while its buffer is full is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_are_limited_and_a_reader_that_stops_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("LINKFLOW_MAX_SUBSCRIBERS", "2"),
            ("LINKFLOW_SUBSCRIBER_STALL_SECS", "1"),
        ],
    );
    let client = reqwest::Client::new();
    let first = client.get(server.url("/v1/stream")).send().await.unwrap();
    assert_eq!(first.status(), 200);
    let to = address(&server);
    // The second subscriber never reads.
    let mut stalled = connect_from(1, to).await;
    stalled
        .write_all(b"GET /v1/stream HTTP/1.1\r\nHost: linkflow\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let third = client.get(server.url("/v1/stream")).send().await.unwrap();
    assert_eq!(third.status(), 503);
    let body: Value = third.json().await.unwrap();
    assert_eq!(body["error"], "too_many_subscribers", "{body}");
    // A place frees when a subscriber leaves.
    drop(first);
    let mut admitted = false;
    for _ in 0..50 {
        let again = client.get(server.url("/v1/stream")).send().await.unwrap();
        if again.status() == 200 {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(admitted, "a subscriber is admitted after one left");
    // Enough events to fill the stalled subscriber's socket and buffer several times over:
    // 8,000 of ~2.3 KB each as server-sent events (the screen name is 2,000 bytes).
    let screen = "S".repeat(2_000);
    for batch in 0..40 {
        let body: Vec<String> = (0..200)
            .map(|n| {
                format!(
                    r#"{{"name":"change_screen","properties":{{"current_screen_name":"{screen}"}},"meta":{{"link_session_id":"flood-{batch}-{n}","timestamp":"2023-11-29T12:44:{:02}.000Z"}}}}"#,
                    n % 60
                )
            })
            .collect();
        let response = client
            .post(server.url("/v1/events/moneykit"))
            .body(format!("[{}]", body.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    let mut cut = None;
    for _ in 0..100 {
        cut = sample(&metrics(&client, &server).await, "linkflow_sse_cut_total");
        if cut == Some(1.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        cut,
        Some(1.0),
        "the subscriber that stopped reading is cut off"
    );
    assert!(closed_within(&mut stalled, Duration::from_secs(10)).await);
}

/// Issue 28's finding: a captured Knot signature replayed on a body of the same length with
/// other content (merchant 10 UP -> merchant 77 DOWN) was accepted. Knot's scheme signs only
/// the length, content type, event and session id, so the replay is caught by remembering each
/// signature's body; and an allow-list of source networks keeps webhooks from anywhere else.
#[tokio::test]
async fn a_replayed_knot_signature_over_another_body_is_refused() {
    const SECRET: &str = "knot-test-secret";
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        dir.path(),
        &[
            ("LINKFLOW_KNOT_SECRET", SECRET),
            ("LINKFLOW_WEBHOOK_SOURCES", "127.0.0.1/32, 127.0.0.3"),
        ],
    );
    let client = reqwest::Client::new();
    let original = std::fs::read_to_string(
        linkflow_e2e::fixtures_dir().join("knot/merchant_status_update.json"),
    )
    .unwrap();
    let forged = original
        .replace(r#""id": 10,"#, r#""id": 77,"#)
        .replace(r#""status": "UP","#, r#""status": "DN","#);
    assert_eq!(forged.len(), original.len());
    assert_ne!(forged, original);
    let signed = linkflow_providers::signature::sign(
        SECRET.as_bytes(),
        original.as_bytes(),
        "application/json",
    )
    .unwrap();
    let post = |body: &str, client: &reqwest::Client| {
        client
            .post(server.url("/v1/webhooks/knot"))
            .header("Content-Type", "application/json")
            .header("Knot-Signature", &signed)
            .body(body.to_owned())
            .send()
    };
    assert_eq!(post(&original, &client).await.unwrap().status(), 200);
    // Knot's retry of the same webhook: the same body, accepted (and deduplicated).
    let retry: Value = post(&original, &client)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retry["results"][0]["outcome"], "duplicate", "{retry}");
    let replay = post(&forged, &client).await.unwrap();
    assert_eq!(replay.status(), 401);
    let body: Value = replay.json().await.unwrap();
    assert_eq!(body["error"], "signature_replayed", "{body}");
    // Merchant 77 was never stored.
    let merchants: Value = get_json(&client, &server.url("/v1/merchants")).await;
    assert_eq!(
        merchants["merchants"].as_array().unwrap().len(),
        1,
        "{merchants}"
    );
    let text = metrics(&client, &server).await;
    assert_eq!(
        sample(
            &text,
            "linkflow_webhook_signature_failures_total{route=\"/v1/webhooks/knot\"}"
        ),
        Some(1.0),
        "{text}"
    );
    // From an address outside the allow-list: 403 before any signature is read; the API's
    // other routes are not affected.
    let outsider = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
        .build()
        .unwrap();
    let refused = post(&original, &outsider).await.unwrap();
    assert_eq!(refused.status(), 403);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "source_not_allowed", "{body}");
    assert_eq!(
        outsider
            .get(server.url("/v1/sessions"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let insider = reqwest::Client::builder()
        .local_address(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)))
        .build()
        .unwrap();
    assert_eq!(post(&original, &insider).await.unwrap().status(), 200);
}

/// `LINKFLOW_LOG_FORMAT=json`: one JSON object per line, each request in a span with its id,
/// method and path (the id is the `x-request-id` header), each commit group in a span with its
/// sizes and outcomes, and a line for a duplicate.
#[tokio::test]
async fn json_logs_carry_request_and_commit_group_spans() {
    let dir = tempfile::tempdir().unwrap();
    let (server, logs) = Server::start_with_logs(
        dir.path(),
        &[("LINKFLOW_LOG_FORMAT", "json"), ("RUST_LOG", "debug")],
    );
    let client = reqwest::Client::new();
    let mut request_ids = Vec::new();
    for _ in 0..2 {
        let response = client
            .post(server.url("/v1/events/moneykit"))
            .body(moneykit_open("logged", 1))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        request_ids.push(
            response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    drop(server);
    let lines: Vec<Value> = logs
        .iter()
        .filter_map(|line| serde_json::from_str(&line).ok())
        .collect();
    let answered = lines
        .iter()
        .find(|line| {
            line["fields"]["message"] == "request answered"
                && line["span"]["id"] == request_ids[0].as_str()
        })
        .unwrap_or_else(|| panic!("no request line among {lines:#?}"));
    assert_eq!(answered["fields"]["status"], 200);
    assert_eq!(answered["span"]["name"], "request");
    assert_eq!(answered["span"]["method"], "POST");
    assert_eq!(answered["span"]["path"], "/v1/events/moneykit");
    let duplicate = lines
        .iter()
        .find(|line| line["fields"]["message"] == "duplicate event: already stored")
        .unwrap_or_else(|| panic!("no duplicate line among {lines:#?}"));
    assert_eq!(duplicate["fields"]["session"], "logged");
    assert_eq!(duplicate["span"]["name"], "commit_group");
    assert_eq!(duplicate["span"]["events"], 1);
}

/// Subscribers share what they render (an event is rendered once, and one subscriber can send
/// positions another rendered without reading the log): a crowd catching up together, some
/// filtered to one session, each still sees every position once and in order, and a late
/// joiner too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_subscribers_each_sees_every_position_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    let mut total = 0;
    for batch in 0..6 {
        let body: Vec<String> = (0..100)
            .map(|n| moneykit_open(&format!("crowd-{}", n % 7), (batch * 7 + n % 60) as u32))
            .collect();
        let response: Value = client
            .post(server.url("/v1/events/moneykit"))
            .body(format!("[{}]", body.join(",")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        total += response["results"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|result| result["outcome"] != "duplicate")
            .count();
    }
    let read_all = |query: String, count: usize| {
        let request = client.get(server.url(&format!("/v1/stream{query}")));
        async move {
            let response = request.send().await.unwrap();
            linkflow_e2e::read_sse_frames(response, count).await
        }
    };
    let mut crowd = Vec::new();
    for _ in 0..8 {
        crowd.push(tokio::spawn(read_all("?after=0".into(), total)));
    }
    let one_session = tokio::spawn(read_all("?after=0&session=crowd-3".into(), 1));
    for reader in crowd {
        let frames = reader.await.unwrap();
        let ids: Vec<u64> = frames.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, (1..=total as u64).collect::<Vec<_>>());
        for (id, data) in &frames {
            assert_eq!(data["position"], *id);
        }
    }
    let frames = one_session.await.unwrap();
    assert_eq!(frames[0].1["session_id"], "crowd-3");
    // A late joiner from the middle.
    let late = read_all(format!("?after={}", total / 2), total - total / 2).await;
    assert_eq!(late[0].0, (total / 2 + 1) as u64);
    assert_eq!(late.last().unwrap().0, total as u64);
}
