//! The real `linkflow` binary on temporary data directories: every command, its output
//! contract and its exit status.

use std::io::Write;
use std::process::{Command, Output, Stdio};

use linkflow_e2e::{fixtures_dir, linkflow_bin};
use serde_json::Value;

fn linkflow(data_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn json(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "not JSON ({error}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The summary of `ingest --json`: its last line, `{"summary": counts}`; every line before it
/// is one payload's result and must be JSON too.
fn ingest_summary(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    lines.last().expect("a summary line")["summary"].clone()
}

fn fixture(relative: &str) -> String {
    fixtures_dir().join(relative).display().to_string()
}

const SESSION: &str = "sandbox_6624ccbc-69bb-4d0d-951a-807715fe6a94";

#[test]
fn demo_runs_on_a_fresh_temporary_store_and_reports_a_consistent_log() {
    let output = Command::new(linkflow_bin()).arg("demo").output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("verify: consistent"), "{text}");
    assert!(text.contains("duplicate 1"), "{text}");
    let output = Command::new(linkflow_bin())
        .args(["demo", "--json"])
        .output()
        .unwrap();
    let report = json(&output);
    assert_eq!(report["verify_clean"], true);
    assert_eq!(report["sessions"].as_array().unwrap().len(), 5);
    assert_eq!(report["accounts"].as_array().unwrap().len(), 4);
    // The Plaid burst arrived shuffled and its EVENTS webhook repeated three of its events:
    // stored once, the session succeeded, its item linked, then warned of its expiry.
    assert_eq!(
        report["ingest"]["flows/plaid_webhooks.jsonl"]["duplicate"],
        3
    );
    let plaid = report["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|session| session["session_id"] == "plaid_demo_1")
        .unwrap();
    assert_eq!(plaid["phase"], "succeeded");
    assert_eq!(plaid["rejected"], 0);
    let item = report["accounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|account| account["institution_id"] == "item_demo_1")
        .unwrap();
    assert_eq!(item["state"], "pending_expiration");
    assert_eq!(report["merchants"][0]["status"], "down");
    // The second MoneyKit open is rejected. Benji's partner choice, delivered after the
    // authentication with no time of its own, takes its place before it and is accepted.
    let rejected = report["rejected"]["events"].as_array().unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["event"], "opened");
    assert_eq!(report["rejected"]["truncated"], false);
}

/// `ingest --json` of the MoneyKit sample flow into `data_dir`: its summary.
fn ingest_sample_flow(data_dir: &std::path::Path) -> Value {
    ingest_summary(&linkflow(
        data_dir,
        &[
            "ingest",
            "--provider",
            "moneykit",
            &fixture("moneykit/sample_flow.json"),
            "--json",
        ],
    ))
}

#[test]
fn ingest_then_every_query_command_speaks_the_json_contract() {
    let dir = tempfile::tempdir().unwrap();
    let report = ingest_sample_flow(dir.path());
    assert_eq!(report["accepted"], 14);
    assert_eq!(report["unrecognized"], 1);
    assert_eq!(report["refused"], 0);
    assert_eq!(report["quarantined"], 0);

    // `sessions --json` is one page: `{"sessions": [...], "next_cursor": ...}`.
    let sessions = json(&linkflow(dir.path(), &["sessions", "--json"]));
    assert_eq!(sessions["sessions"][0]["session_id"], SESSION);
    assert!(sessions["next_cursor"].is_null());
    let filtered = json(&linkflow(
        dir.path(),
        &["sessions", "--phase", "exited", "--json"],
    ));
    assert_eq!(filtered["sessions"].as_array().unwrap().len(), 0);
    let by_provider = json(&linkflow(
        dir.path(),
        &["sessions", "--provider", "moneykit", "--json"],
    ));
    assert_eq!(by_provider["sessions"].as_array().unwrap().len(), 1);

    let show = json(&linkflow(dir.path(), &["show", SESSION, "--json"]));
    for field in [
        "session_id",
        "provider",
        "phase",
        "link_type",
        "institution",
        "version",
        "last_error",
        "exit",
        "first_event_at",
        "last_event_at",
        "abandoned",
    ] {
        assert!(show.get(field).is_some(), "show lacks `{field}`: {show}");
    }
    assert_eq!(show["phase"], "succeeded");
    assert_eq!(show["link_type"], "link");
    assert_eq!(show["institution"]["id"], "moneykit-creds-bank");
    assert_eq!(show["version"], 14);
    assert_eq!(show["last_error"], Value::Null);
    assert_eq!(show["abandoned"], false);
    let early = json(&linkflow(
        dir.path(),
        &["show", SESSION, "--at", "1", "--json"],
    ));
    assert_eq!(early["phase"], "opened");

    let history = json(&linkflow(dir.path(), &["history", SESSION, "--json"]));
    let entries = history.as_array().unwrap();
    assert_eq!(entries.len(), 14);
    assert_eq!(entries[4]["event"], "unrecognized");
    assert_eq!(entries[4]["raw_name"], "submit_credentails");
    for field in [
        "version",
        "position",
        "event",
        "raw_name",
        "event_time",
        "phase_before",
        "phase_after",
    ] {
        assert!(entries[0].get(field).is_some(), "history lacks `{field}`");
    }
    assert_eq!(entries[1]["phase_before"], entries[1]["phase_after"]);

    let text = linkflow(dir.path(), &["show", SESSION]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("phase          succeeded"));
    assert!(linkflow(dir.path(), &["history", SESSION]).status.success());
    assert!(linkflow(dir.path(), &["sessions"]).status.success());
    let verify = linkflow(dir.path(), &["verify"]);
    assert!(verify.status.success());
    assert!(String::from_utf8_lossy(&verify.stdout).contains("consistent"));
    assert_eq!(
        json(&linkflow(dir.path(), &["verify", "--json"]))["problems"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn a_refused_input_exits_1_names_its_line_and_the_others_are_stored_or_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("mixed.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"name":"open","properties":{},"meta":{"link_session_id":"s1","timestamp":"2023-11-29T12:44:31.804Z"}}"#, "\n",
            r#"{"name":"select_institution","properties":{"institution_id":"ins_1"}}"#, "\n",
            "not json\n",
            r#"{"name":"open","properties":{},"meta":{"link_session_id":"s1","timestamp":"2023-11-29T12:45:31.804Z"}}"#, "\n",
        ),
    )
    .unwrap();
    let output = linkflow(
        dir.path(),
        &[
            "ingest",
            "--provider",
            "moneykit",
            "--quiet",
            input.to_str().unwrap(),
        ],
    );
    assert_eq!(output.status.code(), Some(1));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.contains(
            "accepted 1, rejected 1, duplicate 0, quarantined 1, refused 1, unrecognized 0"
        ),
        "{text}"
    );
    assert!(
        text.contains("quarantined at line 2 as quarantine:moneykit:"),
        "{text}"
    );
    assert!(text.contains("no session id"), "{text}");
    assert!(text.contains("refused at line 3: not JSON"), "{text}");
    assert!(text.contains("rejected (for now) at line 4:"), "{text}");
    assert!(
        output.stderr.is_empty(),
        "--quiet: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // Without --quiet, and standard error not a terminal: a progress line at the end.
    let again = linkflow(
        dir.path(),
        &["ingest", "--provider", "moneykit", input.to_str().unwrap()],
    );
    let progress = String::from_utf8_lossy(&again.stderr);
    assert!(
        progress.contains("linkflow ingest: 4 payloads") && progress.contains("MiB read"),
        "{progress}"
    );
    assert!(
        String::from_utf8_lossy(&again.stdout)
            .contains("accepted 0, rejected 0, duplicate 3, quarantined 0, refused 1"),
        "a second run stores nothing twice: {}",
        String::from_utf8_lossy(&again.stdout)
    );
    let parked = json(&linkflow(dir.path(), &["parked", "--json"]));
    assert_eq!(parked["truncated"], false);
    let rejected = &parked["events"][0];
    assert_eq!(rejected["session_id"], "s1");
    assert_eq!(rejected["event"], "opened");
    assert_eq!(rejected["version"], 2);
    assert!(rejected["reason"]
        .as_str()
        .unwrap()
        .contains("not accepted"));
    assert!(rejected.get("received_at").is_some());
    assert!(linkflow(dir.path(), &["parked"]).status.success());
    // A page of one event: no cursor, since it is the only one; a bad cursor is refused.
    let page = json(&linkflow(dir.path(), &["parked", "--limit", "1", "--json"]));
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    assert!(page.get("next_cursor").is_none(), "{page}");
    assert!(!linkflow(dir.path(), &["parked", "--cursor", "nope"])
        .status
        .success());

    // The quarantined payload is listed, then released into the session supplied later.
    let quarantine = json(&linkflow(
        dir.path(),
        &["quarantine", "--pending", "--json"],
    ));
    assert_eq!(quarantine["counts"]["pending"], 1);
    let entry = &quarantine["entries"][0];
    assert_eq!(entry["raw_name"], "select_institution");
    assert_eq!(entry["origin"]["location"], "line 2");
    assert_eq!(entry["payload"]["name"], "select_institution");
    let released = json(&linkflow(
        dir.path(),
        &["redrive", "--session", "s1", "--json"],
    ));
    assert_eq!(released["results"][0]["result"], "released");
    assert_eq!(released["results"][0]["outcome"]["outcome"], "accepted");
    let show = json(&linkflow(dir.path(), &["show", "s1", "--json"]));
    assert_eq!(show["phase"], "institution_selected");
    assert_eq!(show["institution"]["id"], "ins_1");
    let quarantine = json(&linkflow(dir.path(), &["quarantine", "--json"]));
    assert_eq!(quarantine["counts"]["pending"], 0);
    assert_eq!(quarantine["counts"]["released"], 1);
    assert_eq!(quarantine["entries"][0]["released"], "s1");
    assert!(linkflow(dir.path(), &["quarantine"]).status.success());
}

#[test]
fn ingest_reads_standard_input_and_benji_takes_the_session_flag() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .args([
            "ingest",
            "--provider",
            "benji",
            "--session",
            "benji-cli",
            "-",
            "--json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(br#"[{"callback":"onEvent","event":"user_partner_select","metadata":{"partner_id":"p1"}},{"callback":"onExit"}]"#)
        .unwrap();
    let report = ingest_summary(&child.wait_with_output().unwrap());
    assert_eq!(report["accepted"], 2);
    let show = json(&linkflow(dir.path(), &["show", "benji-cli", "--json"]));
    assert_eq!(show["phase"], "exited");
    assert_eq!(show["exit"]["phase"], "institution_selected");
}

#[test]
fn knot_webhooks_show_up_as_accounts_and_merchants() {
    let dir = tempfile::tempdir().unwrap();
    let examples = fixtures_dir().join("../../crates/linkflow-cli/flows/knot_webhooks.jsonl");
    let report = ingest_summary(&linkflow(
        dir.path(),
        &[
            "ingest",
            "--provider",
            "knot",
            examples.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(report["duplicate"], 1);
    let page = json(&linkflow(dir.path(), &["accounts", "--json"]));
    assert_eq!(page["next_cursor"], Value::Null);
    let accounts = &page["accounts"];
    assert_eq!(accounts[0]["provider"], "knot");
    assert_eq!(accounts[0]["institution_id"], "10");
    assert_eq!(accounts[0]["state"], "active");
    assert_eq!(accounts[0]["operations"][0]["kind"], "checkout");
    assert_eq!(accounts[0]["operations"][0]["outcome"], "succeeded");
    assert!(accounts[0]["operations"][0].get("event_time").is_some());
    let merchants = json(&linkflow(dir.path(), &["merchants", "--json"]));
    for field in [
        "merchant_id",
        "name",
        "type",
        "platform",
        "sdk",
        "status",
        "since",
    ] {
        assert!(
            merchants[0].get(field).is_some(),
            "merchants lack `{field}`"
        );
    }
    assert_eq!(merchants[0]["status"], "down");
    assert!(linkflow(dir.path(), &["accounts"]).status.success());
    assert!(linkflow(dir.path(), &["merchants"]).status.success());
}

#[test]
fn diagrams_come_from_the_tables() {
    let dir = tempfile::tempdir().unwrap();
    let mermaid = linkflow(dir.path(), &["diagram"]);
    assert!(String::from_utf8_lossy(&mermaid.stdout).starts_with("stateDiagram-v2"));
    let dot = linkflow(
        dir.path(),
        &["diagram", "--format", "dot", "--machine", "account"],
    );
    let dot = String::from_utf8_lossy(&dot.stdout).to_string();
    assert!(dot.starts_with("digraph account"), "{dot}");
    assert!(dot.contains("login_required -> active"));
}

#[test]
fn errors_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = linkflow(dir.path(), &["show", "nobody"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no session `nobody`"));
    let unreadable = linkflow(
        dir.path(),
        &["ingest", "--provider", "knot", "/nonexistent/file.json"],
    );
    assert_eq!(unreadable.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&unreadable.stderr).contains("cannot read /nonexistent/file.json")
    );
    let bad_flag = linkflow(dir.path(), &["sessions", "--phase", "finished"]);
    assert_eq!(bad_flag.status.code(), Some(2));
    let bad_store = linkflow(
        dir.path(),
        &["--store", "mysql://app:s3cret@db/x", "sessions"],
    );
    assert_eq!(bad_store.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&bad_store.stderr);
    assert!(
        stderr.contains("only postgres:// and postgresql:// URLs are supported"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("s3cret"),
        "the password is redacted: {stderr}"
    );
}

#[test]
fn the_data_dir_comes_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(linkflow_bin())
        .env("LINKFLOW_DATA_DIR", dir.path())
        .args([
            "ingest",
            "--provider",
            "knot",
            &fixture("knot/authenticated.json"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(dir.path().join("db").exists());
}

/// Issue 28's finding: a mistyped `--data-dir` on a read command silently created an empty store
/// and answered "0 sessions". Read commands now refuse a data directory that does not exist,
/// naming it, and create nothing; `ingest` still creates one.
#[test]
fn read_commands_refuse_a_data_directory_that_does_not_exist() {
    let parent = tempfile::tempdir().unwrap();
    let missing = parent.path().join("mistyped");
    for args in [
        &["sessions"][..],
        &["funnel"],
        &["show", "s1"],
        &["parked"],
        &["quarantine"],
        &["accounts"],
        &["verify"],
    ] {
        let output = linkflow(&missing, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains("does not exist") && stderr.contains("mistyped"),
            "{args:?}: {stderr}"
        );
        assert!(!missing.exists(), "{args:?} created the directory");
    }
}

/// `linkflow completions SHELL` prints a completion script that knows the subcommands.
#[test]
fn completions_are_generated_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let output = Command::new(linkflow_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(output.status.success(), "{shell}");
        let script = String::from_utf8_lossy(&output.stdout);
        for subcommand in ["ingest", "sessions", "serve", "funnel"] {
            assert!(script.contains(subcommand), "{shell}: {subcommand}");
        }
    }
}

/// `serve` refuses a configuration it cannot honour, naming it, before it listens: an unknown
/// log format, a webhook source list that is not networks.
#[test]
fn serve_refuses_a_bad_log_format_or_webhook_source_list() {
    let dir = tempfile::tempdir().unwrap();
    for (name, value, expected) in [
        ("LINKFLOW_LOG_FORMAT", "xml", "LINKFLOW_LOG_FORMAT is `xml`"),
        (
            "LINKFLOW_WEBHOOK_SOURCES",
            "10.0.0.0/33",
            "LINKFLOW_WEBHOOK_SOURCES",
        ),
    ] {
        let output = Command::new(linkflow_bin())
            .arg("--data-dir")
            .arg(dir.path())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env(name, value)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{name}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{name}: {stderr}");
        assert!(!stderr.contains("listening on"), "{name}: {stderr}");
    }
}

/// `linkflow compact`: refused without `--compact-after-days`; with it, the old terminal
/// session is compacted (`show` says so and reads as before, `history` is empty, `verify` is
/// clean), and a second run compacts nothing.
#[test]
fn compact_turns_old_terminal_sessions_into_their_final_state() {
    let dir = tempfile::tempdir().unwrap();
    ingest_sample_flow(dir.path());
    let refused = linkflow(dir.path(), &["compact"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--compact-after-days"));
    let before = json(&linkflow(dir.path(), &["show", SESSION, "--json"]));
    assert!(before.get("compacted_at").is_none(), "{before}");

    let report = json(&linkflow(
        dir.path(),
        &["--compact-after-days", "30", "compact", "--json"],
    ));
    assert_eq!(report["sessions"], 1, "{report}");
    assert_eq!(report["events"], 14, "{report}");
    let mut after = json(&linkflow(dir.path(), &["show", SESSION, "--json"]));
    assert_eq!(after["compacted_at"], 14, "{after}");
    after.as_object_mut().unwrap().remove("compacted_at");
    assert_eq!(after, before, "the session reads as before");
    let history = json(&linkflow(dir.path(), &["history", SESSION, "--json"]));
    assert_eq!(history.as_array().unwrap().len(), 0);
    let text = linkflow(dir.path(), &["show", SESSION]);
    assert!(String::from_utf8_lossy(&text.stdout).contains("compacted at   version 14"));
    assert!(linkflow(dir.path(), &["verify"]).status.success());
    let again = json(&linkflow(
        dir.path(),
        &["--compact-after-days", "30", "compact", "--json"],
    ));
    assert_eq!(
        (again["sessions"].as_u64(), again["examined"].as_u64()),
        (Some(0), Some(1))
    );
}
