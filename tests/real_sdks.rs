//! Every real SDK shape (`fixtures/real/*.json`, each citing its source) through the real
//! `linkflow` binary twice, as a user would send it: `linkflow ingest` of a JSON Lines file, and
//! a POST to the HTTP endpoint of its input. Each must give the outcomes its fixture expects
//! (stored, quarantined, never refused: no 4xx for a well-formed payload) and leave the
//! session, account or merchant it names as the fixture says.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Output};

use linkflow_e2e::{fixtures_dir, get_text, linkflow_bin, Server};
use serde_json::Value;

struct Fixture {
    name: String,
    json: Value,
}

fn fixtures() -> Vec<Fixture> {
    let mut all: Vec<Fixture> = std::fs::read_dir(fixtures_dir().join("real"))
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            Fixture {
                name: path.file_name().unwrap().to_string_lossy().into_owned(),
                json: serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            }
        })
        .collect();
    all.sort_by(|a, b| a.name.cmp(&b.name));
    assert!(all.len() >= 19);
    all
}

impl Fixture {
    fn feed(&self) -> &str {
        self.json["feed"].as_str().unwrap()
    }

    fn supplied(&self, key: &str) -> Option<&str> {
        self.json["context"][key].as_str()
    }

    /// The line of each payload as the intake decodes them (a Plaid EVENTS webhook is one per
    /// event, all on its line).
    fn decoded_lines(&self) -> Vec<usize> {
        let feed: linkflow_providers::Feed = self.feed().parse().unwrap();
        let mut lines = Vec::new();
        for (index, payload) in self.json["payloads"].as_array().unwrap().iter().enumerate() {
            let count = linkflow_providers::expand(feed, payload.to_string()).len();
            lines.extend(std::iter::repeat_n(index + 1, count));
        }
        lines
    }

    fn json_lines(&self) -> String {
        self.json["payloads"]
            .as_array()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn expect(&self) -> &Value {
        &self.json["expect"]
    }

    fn expected_outcomes(&self) -> Vec<&str> {
        self.expect()["outcomes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|outcome| outcome.as_str().unwrap())
            .collect()
    }

    fn expected_warnings(&self, index: usize) -> Vec<String> {
        self.expect()["warnings"][index.to_string()]
            .as_array()
            .map(|paths| {
                paths
                    .iter()
                    .map(|p| p.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn warning_paths(result: &Value) -> Vec<String> {
    result["warnings"]
        .as_array()
        .map(|warnings| {
            warnings
                .iter()
                .map(|w| w["path"].as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn account_stream(account: &Value) -> String {
    let user = account["user"].as_str().unwrap();
    format!(
        "account:{}:{}:{}:{}",
        account["provider"].as_str().unwrap(),
        user.len(),
        user,
        account["institution"].as_str().unwrap()
    )
}

/// Where the views are read: the CLI on a data directory, or the HTTP API.
enum Views<'a> {
    Cli(&'a Path),
    Http(&'a reqwest::Client, &'a str),
}

impl Views<'_> {
    /// `session ID`, `history ID`, `accounts` or `merchants`, as JSON.
    async fn get(&self, what: &str, id: &str) -> Value {
        match self {
            Views::Cli(dir) => match what {
                "session" => cli_json(dir, &["show", id, "--json"]),
                "history" => cli_json(dir, &["history", id, "--json"]),
                // Accounts come a page at a time from the CLI too.
                "accounts" => cli_json(dir, &["accounts", "--json"])["accounts"].take(),
                other => cli_json(dir, &[other, "--json"]),
            },
            Views::Http(client, base) => {
                let url = match what {
                    "session" => format!("{base}/v1/sessions/{id}"),
                    "history" => format!("{base}/v1/sessions/{id}/history"),
                    other => format!("{base}/v1/{other}"),
                };
                let response = client.get(&url).send().await.unwrap();
                assert!(
                    response.status().is_success(),
                    "{url}: {}",
                    response.status()
                );
                let mut body: Value = response.json().await.unwrap();
                // Accounts and merchants come a page at a time over HTTP; the fixtures hold a
                // page's worth.
                match what {
                    "accounts" | "merchants" | "history" => body[what].take(),
                    _ => body,
                }
            }
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Views::Cli(_) => "the CLI",
            Views::Http(..) => "HTTP",
        }
    }
}

/// Checks what the fixture expects of the session, account or merchant it names.
async fn check_state(fixture: &Fixture, views: &Views<'_>) {
    let name = format!("{} via {}", fixture.name, views.name());
    let expect = fixture.expect();
    if let Some(session) = expect.get("session") {
        let id = session["id"].as_str().unwrap();
        let view = views.get("session", id).await;
        assert_eq!(view["phase"], session["phase"], "{name}: {view}");
        if let Some(institution) = session.get("institution") {
            let got = view["institution"]["id"].clone();
            let got = if view["institution"].is_null() {
                Value::Null
            } else {
                got
            };
            assert_eq!(&got, institution, "{name}: institution");
        }
        for (key, path) in [
            ("link_type", ["link_type", ""]),
            ("exit_phase", ["exit", "phase"]),
            ("exit_status", ["exit", "status"]),
            ("exit_step", ["exit", "step"]),
            ("last_error_code", ["last_error", "code"]),
            ("last_error_id", ["last_error", "id"]),
            ("last_error_message", ["last_error", "message"]),
            ("errors", ["counts", "errors"]),
            ("unrecognized", ["counts", "unrecognized"]),
        ] {
            if let Some(wanted) = session.get(key) {
                let got = if path[1].is_empty() {
                    &view[path[0]]
                } else {
                    &view[path[0]][path[1]]
                };
                assert_eq!(got, wanted, "{name}: {key} in {view}");
            }
        }
        for phase in session["visited"].as_array().into_iter().flatten() {
            assert!(
                view["visited"].as_array().unwrap().contains(phase),
                "{name}: {phase} not visited: {view}"
            );
        }
        // What has no canonical place is in the stored payload, shown by history.
        let history = views.get("history", id).await;
        assert!(
            history
                .as_array()
                .unwrap()
                .iter()
                .all(|entry| !entry["raw"].is_null()),
            "{name}: history shows each payload"
        );
        for secret in expect["stored_raw_lacks"].as_array().into_iter().flatten() {
            assert!(
                !history.to_string().contains(secret.as_str().unwrap()),
                "{name}: a token is stored"
            );
        }
    }
    if let Some(account) = expect.get("account") {
        let stream = account_stream(account);
        if account["state"] != "absent" {
            let accounts = views.get("accounts", "").await;
            let view = accounts
                .as_array()
                .unwrap()
                .iter()
                .find(|view| {
                    view["external_user_id"] == account["user"]
                        && view["institution_id"] == account["institution"]
                })
                .unwrap_or_else(|| panic!("{name}: no account in {accounts}"));
            assert_eq!(view["state"], account["state"], "{name}");
            if let Some(operations) = account["operations"].as_array() {
                let got: Vec<Value> = view["operations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|op| serde_json::json!([op["kind"], op["outcome"], op["reason"]]))
                    .collect();
                assert_eq!(&got, operations, "{name}: operations");
            }
        }
        if let Some(names) = account["history"].as_array() {
            let history = views.get("history", &stream).await;
            let got: Vec<&Value> = history
                .as_array()
                .unwrap()
                .iter()
                .map(|entry| &entry["event"])
                .collect();
            assert_eq!(
                got,
                names.iter().collect::<Vec<_>>(),
                "{name}: account history"
            );
        }
        if let Some(ids) = account["updated_ids"].as_array() {
            let history = views.get("history", &stream).await;
            let found = history.as_array().unwrap().iter().any(|entry| {
                entry["canonical"]["account"]["event"]["transaction_ids"].as_array() == Some(ids)
            });
            assert!(found, "{name}: updated ids in {history}");
        }
    }
    if let Some(merchant) = expect.get("merchant") {
        let merchants = views.get("merchants", "").await;
        let found = merchants.as_array().unwrap().iter().any(|view| {
            view["merchant_id"] == merchant["id"]
                && view["type"] == merchant["type"]
                && view["platform"] == merchant["platform"]
                && view["status"] == merchant["status"]
        });
        assert!(found, "{name}: {merchant} not in {merchants}");
    }
}

fn cli(data_dir: &Path, args: &[&str]) -> Output {
    Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn cli_json(data_dir: &Path, args: &[&str]) -> Value {
    let output = cli(data_dir, args);
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test]
async fn every_real_sdk_shape_through_linkflow_ingest() {
    for fixture in fixtures() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("payloads.jsonl");
        std::fs::File::create(&input)
            .unwrap()
            .write_all(fixture.json_lines().as_bytes())
            .unwrap();
        let mut args = vec!["ingest", "--provider", fixture.feed(), "--json", "--quiet"];
        if let Some(session) = fixture.supplied("session_id") {
            args.extend(["--session", session]);
        }
        if let Some(user) = fixture.supplied("external_user_id") {
            args.extend(["--user", user]);
        }
        args.push(input.to_str().unwrap());
        let output = cli(dir.path(), &args);
        assert!(
            output.status.success(),
            "{}: {}",
            fixture.name,
            String::from_utf8_lossy(&output.stdout)
        );
        let lines: Vec<Value> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let (summary, results) = lines.split_last().unwrap();
        let expected = fixture.expected_outcomes();
        for outcome in [
            "accepted",
            "quarantined",
            "rejected",
            "duplicate",
            "refused",
        ] {
            let count = expected.iter().filter(|o| **o == outcome).count();
            assert_eq!(
                summary["summary"][outcome], count,
                "{}: {outcome} in {summary}",
                fixture.name
            );
        }
        // Every payload not simply accepted, or with warnings, is named by its line (all the
        // events of a split Plaid EVENTS webhook share its line), and no other is shown.
        let lines = fixture.decoded_lines();
        assert_eq!(lines.len(), expected.len(), "{}", fixture.name);
        let simple = |index: usize| {
            expected[index] == "accepted" && fixture.expected_warnings(index).is_empty()
        };
        let shown_expected = (0..expected.len()).filter(|index| !simple(*index)).count();
        assert_eq!(
            results.len(),
            shown_expected,
            "{}: {results:?}",
            fixture.name
        );
        for (index, outcome) in expected.iter().enumerate() {
            if simple(index) {
                continue;
            }
            let line = lines[index];
            let before = (0..index)
                .filter(|earlier| !simple(*earlier) && lines[*earlier] == line)
                .count();
            let shown = results
                .iter()
                .filter(|r| r["at"]["line"] == line)
                .nth(before)
                .unwrap_or_else(|| panic!("{}: line {line} not shown", fixture.name));
            assert_eq!(shown["outcome"], *outcome, "{}: line {line}", fixture.name);
            assert_eq!(
                warning_paths(shown),
                fixture.expected_warnings(index),
                "{}: line {line}",
                fixture.name
            );
        }
        check_state(&fixture, &Views::Cli(dir.path())).await;
        let verify = cli(dir.path(), &["verify"]);
        assert!(verify.status.success(), "{}: verify", fixture.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_real_sdk_shape_through_http() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let client = reqwest::Client::new();
    for fixture in fixtures() {
        let path = match fixture.feed() {
            "moneykit" => "/v1/events/moneykit",
            "benji" => "/v1/events/benji",
            "knot" => "/v1/webhooks/knot",
            "knot-sdk" => "/v1/events/knot",
            "plaid" => "/v1/events/plaid",
            "plaid-webhook" => "/v1/webhooks/plaid",
            other => panic!("unknown feed {other}"),
        };
        let mut query = Vec::new();
        for key in ["session_id", "external_user_id"] {
            if let Some(value) = fixture.supplied(key) {
                query.push((key, value.to_owned()));
            }
        }
        let response = client
            .post(server.url(path))
            .query(&query)
            .body(fixture.json_lines())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        let expected = fixture.expected_outcomes();
        let all_quarantined = expected.iter().all(|o| *o == "quarantined");
        assert_eq!(
            status,
            if all_quarantined { 202 } else { 200 },
            "{}: {body}",
            fixture.name
        );
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), expected.len(), "{}", fixture.name);
        for (index, (result, outcome)) in results.iter().zip(&expected).enumerate() {
            assert_eq!(
                result["outcome"], *outcome,
                "{}[{index}]: {result}",
                fixture.name
            );
            assert_eq!(
                warning_paths(result),
                fixture.expected_warnings(index),
                "{}[{index}]",
                fixture.name
            );
        }
        check_state(&fixture, &Views::Http(&client, &server.base)).await;
    }
}

/// A payload that names no session, quarantined over HTTP, survives a restart of the server,
/// is listed, and is released by a redrive that supplies the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_payload_survives_a_restart_and_is_redriven_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let server = Server::start(dir.path(), &[]);
    let payload = r#"{"name":"select_institution","properties":{"institution_id":"chase"}}"#;
    let response = client
        .post(server.url("/v1/events/moneykit?external_user_id=u-1"))
        .body(payload)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    // The sender retries: the same payload is one entry.
    let retry: Value = client
        .post(server.url("/v1/events/moneykit?external_user_id=u-1"))
        .body(payload)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(retry["duplicate"], 1, "{retry}");
    assert!(server.terminate().success());

    let server = Server::start(dir.path(), &[]);
    let list: Value = client
        .get(server.url("/v1/quarantine?pending=true&provider=moneykit"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["counts"]["pending"], 1, "{list}");
    let entry = list["entries"][0]["entry"].as_str().unwrap().to_owned();
    assert_eq!(list["entries"][0]["feed"], "moneykit");
    assert_eq!(
        list["entries"][0]["origin"]["params"][0],
        serde_json::json!(["external_user_id", "u-1"])
    );
    let metrics = get_text(&client, &server.url("/metrics")).await;
    assert!(
        metrics.contains(r#"linkflow_quarantined_payloads{state="pending"} 1"#),
        "{metrics}"
    );

    // Still no session: it stays in quarantine.
    let still: Value = client
        .post(server.url("/v1/quarantine/redrive"))
        .body("{}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        still["results"][0]["result"], "still_quarantined",
        "{still}"
    );
    // An unknown entry is a 404; a body with an unknown field a 400.
    let missing = client
        .post(server.url("/v1/quarantine/redrive"))
        .body(r#"{"entry":"quarantine:moneykit:00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let unknown = client
        .post(server.url("/v1/quarantine/redrive"))
        .body(r#"{"sesion_id":"typo"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 400);

    let released: Value = client
        .post(server.url("/v1/quarantine/redrive"))
        .json(&serde_json::json!({"entry": entry, "session_id": "mk-later"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(released["results"][0]["result"], "released", "{released}");
    let session: Value = client
        .get(server.url("/v1/sessions/mk-later"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(session["phase"], "institution_selected");
    assert_eq!(session["institution"]["id"], "chase");
    // The user given with the original request came along.
    assert_eq!(session["external_user_id"], "u-1");
    let list: Value = client
        .get(server.url("/v1/quarantine"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["counts"]["released"], 1);
    assert_eq!(list["entries"][0]["released"], "mk-later");
}

mod any_json_over_http {
    use super::*;
    use proptest::prelude::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let keys = prop_oneof![
            Just("name".to_owned()),
            Just("meta".to_owned()),
            Just("event".to_owned()),
            Just("callback".to_owned()),
            Just("session_id".to_owned()),
            Just("link_session_id".to_owned()),
            Just("external_user_id".to_owned()),
            Just("merchant".to_owned()),
            Just("id".to_owned()),
            Just("timestamp".to_owned()),
            Just("data".to_owned()),
            Just("eventName".to_owned()),
            Just("metadata".to_owned()),
            Just("webhook_type".to_owned()),
            Just("webhook_code".to_owned()),
            Just("events".to_owned()),
            Just("item_id".to_owned()),
            ".{0,6}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("onEvent".to_owned()),
                Just("AUTHENTICATED".to_owned()),
                Just("open".to_owned()),
                Just("LINK".to_owned()),
                Just("EVENTS".to_owned()),
                Just("ITEM".to_owned()),
                ".{0,12}",
                // Now and then far past the record size limit: a 413, never a partial write.
                "x{9000}",
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 5, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map(keys.clone(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// Any JSON value POSTed to any provider endpoint is stored (an event, accepted or rejected,
    /// quarantined: 200 or 202) or refused with a 4xx whose body names why (413 past the
    /// record size limit); the server never answers 5xx and never stops.
    #[test]
    fn any_json_value_is_stored_or_refused_with_a_4xx_that_names_why() {
        let dir = tempfile::tempdir().unwrap();
        let server = Server::start(dir.path(), &[]);
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let client = reqwest::Client::new();
        let endpoints = [
            "/v1/events/moneykit",
            "/v1/events/benji",
            "/v1/events/knot",
            "/v1/webhooks/knot",
            "/v1/events/plaid",
            "/v1/webhooks/plaid",
        ];
        let config = ProptestConfig {
            cases: 96,
            ..ProptestConfig::default()
        };
        proptest::test_runner::TestRunner::new(config)
            .run(&(any_json(), 0..endpoints.len()), |(value, endpoint)| {
                let body = value.to_string();
                let (status, answer): (u16, Value) = runtime.block_on(async {
                    let response = client
                        .post(server.url(endpoints[endpoint]))
                        .body(body.clone())
                        .send()
                        .await
                        .expect("the server answers");
                    let status = response.status().as_u16();
                    (status, response.json().await.expect("a JSON body"))
                });
                match status {
                    200 | 202 => {
                        for result in answer["results"].as_array().unwrap() {
                            let outcome = result["outcome"].as_str().unwrap();
                            prop_assert!(
                                ["accepted", "rejected", "duplicate", "quarantined"]
                                    .contains(&outcome),
                                "{body}: {result}"
                            );
                        }
                    }
                    400..=499 => {
                        prop_assert!(
                            answer["error"].is_string() && answer["detail"].is_string(),
                            "{answer}"
                        );
                        prop_assert!(
                            status == 413 || body.trim_start().starts_with('['),
                            "{status} for {body}: {answer}"
                        );
                    }
                    other => prop_assert!(false, "{other} for {body}: {answer}"),
                }
                Ok(())
            })
            .unwrap();
        assert!(server.terminate().success(), "the server never stopped");
    }
}
