//! Erasure through the product's doors (issue 29): `linkflow serve` with a master key seals
//! what it stores and opens it in responses and the event stream, `DELETE /v1/users/{id}`
//! erases one user (token required), `linkflow erase --user` another, and no byte of the data
//! directory holds any user's strings in the clear.

use std::path::Path;
use std::process::{Command, Output};

use linkflow_e2e::{get_json, linkflow_bin, read_sse_frames, Server};

const MASTER: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const TOKEN: &str = "privacy-test-token";

fn linkflow(data_dir: &Path, args: &[&str], master: bool) -> Output {
    let mut command = Command::new(linkflow_bin());
    command.arg("--data-dir").arg(data_dir).args(args);
    command.env_remove("LINKFLOW_MASTER_KEY_FILE");
    if master {
        command.env("LINKFLOW_MASTER_KEY", MASTER);
    } else {
        command.env_remove("LINKFLOW_MASTER_KEY");
    }
    command.output().expect("the binary runs")
}

/// A MoneyKit session of `user` whose personal fields name them.
fn payloads(user: &str, session: &str) -> String {
    let meta = |second: u32| {
        format!(
            r#""meta":{{"link_session_id":"{session}","timestamp":"2023-11-29T12:44:{second:02}.000Z"}}"#
        )
    };
    [
        format!(r#"{{"name":"open","properties":{{"note":"{user}-raw-secret"}},{}}}"#, meta(1)),
        format!(
            r#"{{"name":"search_institution","properties":{{"search_term":"{user}-searches"}},{}}}"#,
            meta(2)
        ),
        format!(
            r#"{{"name":"error","properties":{{"error_code":"INVALID_CREDENTIALS","displayed_message":"{user}-wrong-password"}},{}}}"#,
            meta(3)
        ),
    ]
    .join("\n")
}

fn secrets(user: &str) -> Vec<String> {
    ["raw-secret", "searches", "wrong-password"]
        .iter()
        .map(|suffix| format!("{user}-{suffix}"))
        .chain([user.to_owned()])
        .collect()
}

fn files_holding(dir: &Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if std::fs::read(&path)
                .unwrap()
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[tokio::test]
async fn serve_and_the_cli_seal_open_and_erase() {
    let dir = tempfile::tempdir().unwrap();
    let (server, logs) = Server::start_with_logs(
        dir.path(),
        &[("LINKFLOW_MASTER_KEY", MASTER), ("LINKFLOW_TOKEN", TOKEN)],
    );
    assert!(linkflow_e2e::line_with(&logs, "erasure").contains("erasure available"));
    let client = reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {TOKEN}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap();
    for (user, session) in [
        ("alice-zebra", "a1"),
        ("bob-yak", "b1"),
        ("carol-ibis", "c1"),
    ] {
        let response = client
            .post(server.url(&format!("/v1/events/moneykit?external_user_id={user}")))
            .body(payloads(user, session))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
    }
    // Responses open the sealed fields.
    let user = get_json(&client, &server.url("/v1/users/alice-zebra")).await;
    assert_eq!(
        user["sessions"][0]["external_user_id"], "alice-zebra",
        "{user}"
    );
    let history = get_json(&client, &server.url("/v1/sessions/a1/history")).await;
    let text = history.to_string();
    for secret in secrets("alice-zebra") {
        assert!(text.contains(&secret), "{secret} in {text}");
    }
    assert_eq!(
        history["history"][0]["raw"]["properties"]["note"],
        "alice-zebra-raw-secret"
    );

    // Erasure over HTTP.
    let erased = client
        .delete(server.url("/v1/users/alice-zebra?requested_by=ticket-17"))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    let report: serde_json::Value = erased.json().await.unwrap();
    assert_eq!(
        (report["erased"].as_bool(), report["streams"].as_u64()),
        (Some(true), Some(1))
    );
    let text = get_json(&client, &server.url("/v1/sessions/a1/history"))
        .await
        .to_string();
    for secret in secrets("alice-zebra") {
        assert!(!text.contains(&secret), "{secret} still in {text}");
    }
    assert!(
        text.contains("[erased]") && text.contains("INVALID_CREDENTIALS"),
        "{text}"
    );
    let user = get_json(&client, &server.url("/v1/users/alice-zebra")).await;
    assert_eq!(user["sessions"], serde_json::json!([]), "{user}");
    // The event stream opens what it sends too, and shows the erasure at once.
    let stream = client.get(server.url("/v1/stream")).send().await.unwrap();
    let frames = read_sse_frames(stream, 9).await;
    let text =
        serde_json::to_string(&frames.iter().map(|(_, data)| data).collect::<Vec<_>>()).unwrap();
    assert!(
        text.contains("bob-yak-searches") && !text.contains("alice-zebra-searches"),
        "{text}"
    );
    assert!(server.terminate().success());

    // Erasure from the command line; reads from it open and show `[erased]`.
    let output = linkflow(
        dir.path(),
        &["erase", "--user", "bob-yak", "--requested-by", "ops"],
        true,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("erased: the keys of 1"));
    let output = linkflow(dir.path(), &["--json", "history", "b1"], true);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("[erased]") && !text.contains("bob-yak-searches"),
        "{text}"
    );
    let output = linkflow(dir.path(), &["--json", "history", "c1"], true);
    assert!(String::from_utf8_lossy(&output.stdout).contains("carol-ibis-wrong-password"));
    // Retention from the command line: today's payloads are within a day's retention.
    let output = linkflow(dir.path(), &["--raw-retention-days", "1", "expire"], true);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("of 0 days"));
    let output = linkflow(dir.path(), &["expire"], true);
    assert!(String::from_utf8_lossy(&output.stderr).contains("--raw-retention-days"));
    // Without the master key the sealed store is not opened.
    let output = linkflow(dir.path(), &["history", "c1"], false);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("master key"));

    // Rotation: every key rewrapped under a new master key, which opens what the old one did.
    let new = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
    let output = Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("rotate-master-key")
        .env("LINKFLOW_MASTER_KEY", MASTER)
        .env("LINKFLOW_NEW_MASTER_KEY", new)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("rewrapped"));
    let output = linkflow(dir.path(), &["history", "c1"], true);
    assert!(
        !output.status.success(),
        "the old master key still opens the store"
    );
    let output = Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--json", "history", "c1"])
        .env("LINKFLOW_MASTER_KEY", new)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&output.stdout).contains("carol-ibis-wrong-password"));

    // Not one byte in the clear, erased or not.
    for user in ["alice-zebra", "bob-yak", "carol-ibis"] {
        for secret in secrets(user) {
            assert_eq!(
                files_holding(dir.path(), &secret),
                Vec::<String>::new(),
                "{secret}"
            );
        }
    }
}

#[tokio::test]
async fn erasure_over_http_needs_the_token_and_a_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    // A master key but no token: refused, nothing erased.
    let server = Server::start(dir.path(), &[("LINKFLOW_MASTER_KEY", MASTER)]);
    let response = client
        .delete(server.url("/v1/users/alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "token_required");
    drop(server);
    // A token but no master key (another store): erasure is unavailable, and says why.
    let other = tempfile::tempdir().unwrap();
    let (server, logs) = Server::start_with_logs(other.path(), &[("LINKFLOW_TOKEN", TOKEN)]);
    assert!(linkflow_e2e::line_with(&logs, "erasure").contains("erasure unavailable"));
    let response = client
        .delete(server.url("/v1/users/alice"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"], "erasure_unavailable", "{body}");
}

/// An erasure killed (SIGKILL) at random points and run again ends as one run would: every
/// session of the user reads `[erased]`, one tombstone, the store verifies.
#[test]
fn an_erasure_killed_anywhere_finishes_when_run_again() {
    let seed = tempfile::tempdir().unwrap();
    let sessions = 3_000;
    let lines: Vec<String> = (0..sessions)
        .map(|n| {
            format!(
                r#"{{"name":"open","properties":{{"note":"alice-secret-{n}"}},"meta":{{"link_session_id":"k{n}","timestamp":"2023-11-29T12:44:01.000Z"}}}}"#
            )
        })
        .collect();
    let input = seed.path().join("alice.jsonl");
    std::fs::write(&input, lines.join("\n")).unwrap();
    let store = seed.path().join("store");
    let output = linkflow(
        &store,
        &[
            "ingest",
            "--provider",
            "moneykit",
            "--user",
            "alice",
            "--quiet",
            input.to_str().unwrap(),
        ],
        true,
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut killed_running = 0;
    for round in 0..12u64 {
        let dir = tempfile::tempdir().unwrap();
        let copy = dir.path().join("store");
        let status = Command::new("cp")
            .arg("-r")
            .arg(&store)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        let mut child = Command::new(linkflow_bin())
            .arg("--data-dir")
            .arg(&copy)
            .args(["erase", "--user", "alice"])
            .env("LINKFLOW_MASTER_KEY", MASTER)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10 + round * 12));
        if child.try_wait().unwrap().is_none() {
            killed_running += 1;
        }
        let _ = child.kill();
        let _ = child.wait();
        let output = linkflow(&copy, &["--json", "erase", "--user", "alice"], true);
        assert!(
            output.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let tombstone = report["tombstone"]
            .as_str()
            .unwrap_or_else(|| panic!("round {round}: {report}"))
            .to_owned();
        let output = linkflow(&copy, &["--json", "history", &tombstone], true);
        let entries: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            entries.as_array().map(Vec::len),
            Some(1),
            "round {round}: one tombstone: {entries}"
        );
        for session in ["k0", "k1499", "k2999"] {
            let output = linkflow(&copy, &["--json", "history", session], true);
            let text = String::from_utf8_lossy(&output.stdout);
            assert!(
                text.contains("[erased]") && !text.contains("alice-secret"),
                "round {round} {session}: {text}"
            );
        }
        let output = linkflow(&copy, &["verify"], true);
        assert!(
            output.status.success(),
            "round {round}: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    assert!(killed_running > 0, "no erasure was killed while it ran");
}
