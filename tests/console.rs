//! The web console in a real browser: Debian's Chromium driven through ChromeDriver (WebDriver,
//! with the `fantoccini` crate) against a real `linkflow serve` on a loopback port, seeded with
//! the bundled sample flows of all four providers, a population of Plaid sessions and one user's
//! failed link. The support question "why did user U's link fail yesterday?" is answered from
//! `/ui` in two clicks; the funnel page's counts are read against the API's JSON; a quarantined
//! payload is redriven (confirmed); every page's screenshot is saved
//! (`target/tmp/console-screenshots/`), and the browser's console must stay free of errors.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (`.ci/run` installs Debian's
//! `chromium` and `chromium-driver`); without them the test says so and passes, except under
//! `CI=true`, where it fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{SecondsFormat, Utc};
use fantoccini::{Client, ClientBuilder, Locator};
use linkflow_e2e::{get_json, Server};
use serde_json::{json, Value};

const TOKEN: &str = "console-browser-token";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The user whose link failed, and the session that failed.
const USER: &str = "user_1042";
const FAILED: &str = "pl_failed_1042";

/// ChromeDriver on a free loopback port, killed when dropped.
struct Driver {
    child: std::process::Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_driver() -> Option<Driver> {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI=true: {CHROMIUM} and {CHROMEDRIVER} are needed (Debian's chromium and chromium-driver)"
        );
        eprintln!("skipped: {CHROMIUM} or {CHROMEDRIVER} is not installed");
        return None;
    }
    // A free port: bound, read, released (ChromeDriver takes no port 0).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let driver = Driver {
        child,
        url: format!("http://127.0.0.1:{port}"),
    };
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if let Ok(response) = client.get(format!("{}/status", driver.url)).send().await {
            if response.status().is_success() {
                return Some(driver);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("chromedriver did not answer on {}", driver.url);
}

async fn browser(driver: &Driver, profile: &Path) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("browserName".into(), json!("chrome"));
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1366,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    // The page's console messages, read after every page.
    capabilities.insert("goog:loggingPrefs".into(), json!({"browser": "ALL"}));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session starts")
}

/// The browser's console messages since the last call; errors fail the test.
async fn assert_no_console_errors(driver: &Driver, client: &Client, page: &str) {
    let session = client.session_id().await.unwrap().expect("a session id");
    let http = reqwest::Client::new();
    let mut entries = Value::Null;
    for path in ["se/log", "log"] {
        let response = http
            .post(format!("{}/session/{session}/{path}", driver.url))
            .json(&json!({"type": "browser"}))
            .send()
            .await
            .unwrap();
        if response.status().is_success() {
            entries = response.json::<Value>().await.unwrap()["value"].clone();
            break;
        }
    }
    let entries = entries
        .as_array()
        .unwrap_or_else(|| panic!("ChromeDriver gave no browser log"));
    let errors: Vec<&Value> = entries
        .iter()
        .filter(|entry| entry["level"] == "SEVERE" || entry["level"] == "WARNING")
        .collect();
    assert!(errors.is_empty(), "console messages on {page}: {errors:#?}");
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// Types `text` into the field with `id`.
async fn type_into(client: &Client, id: &str, text: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id}: {error}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Clicks the element with `id`, then waits for the element `then` of the page it leads to.
async fn click_then(client: &Client, id: &str, then: &str) {
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id}: {error}"))
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id(then))
        .await
        .unwrap_or_else(|error| panic!("#{then} after clicking #{id}: {error}"));
}

async fn text_of(client: &Client, id: &str) -> String {
    let url = client.current_url().await.ok();
    client
        .find(Locator::Id(id))
        .await
        .unwrap_or_else(|error| panic!("#{id} on {url:?}: {error}"))
        .text()
        .await
        .unwrap()
}

fn time(minutes_ago: i64) -> String {
    (Utc::now() - chrono::Duration::minutes(minutes_ago))
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn plaid(name: &str, session: &str, minutes_ago: i64, extra: Value) -> Value {
    let mut metadata =
        json!({"link_session_id": session, "request_id": "req", "timestamp": time(minutes_ago)});
    if let (Some(metadata), Some(extra)) = (metadata.as_object_mut(), extra.as_object()) {
        metadata.extend(extra.clone());
    }
    json!({"eventName": name, "metadata": metadata})
}

async fn post(client: &reqwest::Client, server: &Server, path: &str, body: String) {
    let response = client
        .post(server.url(path))
        .bearer_auth(TOKEN)
        .body(body)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{path}: {}",
        response.status()
    );
}

/// The bundled flows of all four providers, 40 Plaid sessions stopping at every step, a
/// payload naming no session (quarantined), and the user whose link failed yesterday.
async fn seed(server: &Server) {
    let client = reqwest::Client::new();
    let flows = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/linkflow-cli/flows");
    for (file, path) in [
        (
            "moneykit_flow.jsonl",
            "/v1/events/moneykit?external_user_id=user_17",
        ),
        ("benji_callbacks.json", "/v1/events/benji"),
        ("knot_webhooks.jsonl", "/v1/webhooks/knot"),
        ("plaid_link.jsonl", "/v1/events/plaid"),
        ("plaid_webhooks.jsonl", "/v1/webhooks/plaid"),
    ] {
        post(
            &client,
            server,
            path,
            std::fs::read_to_string(flows.join(file)).unwrap(),
        )
        .await;
    }
    let institution =
        json!({"institution_id": "ins_109508", "institution_name": "First Platypus Bank"});
    let mut population = Vec::new();
    for n in 0..40i64 {
        let session = format!("pl_pop_{n:02}");
        let start = 2 * 24 * 60 - n * 30;
        population.push(plaid(
            "OPEN",
            &session,
            start,
            json!({"view_name": "CONSENT"}),
        ));
        if n % 5 >= 1 {
            population.push(plaid(
                "SELECT_INSTITUTION",
                &session,
                start - 1,
                institution.clone(),
            ));
        }
        if n % 5 >= 2 {
            population.push(plaid(
                "SUBMIT_CREDENTIALS",
                &session,
                start - 2,
                institution.clone(),
            ));
        }
        if n % 5 >= 3 {
            population.push(plaid("HANDOFF", &session, start - 3, institution.clone()));
        } else if n % 2 == 0 {
            population.push(plaid(
                "EXIT",
                &session,
                start - 3,
                json!({"exit_status": "institution_not_found"}),
            ));
        }
    }
    post(
        &client,
        server,
        "/v1/events/plaid?external_user_id=user_pop",
        serde_json::to_string(&population).unwrap(),
    )
    .await;
    // Yesterday, user_1042's link at First Platypus Bank failed on their credentials.
    let yesterday = 24 * 60;
    let failed = vec![
        plaid("OPEN", FAILED, yesterday, json!({"view_name": "CONSENT"})),
        plaid(
            "SELECT_INSTITUTION",
            FAILED,
            yesterday - 1,
            institution.clone(),
        ),
        plaid(
            "SUBMIT_CREDENTIALS",
            FAILED,
            yesterday - 2,
            institution.clone(),
        ),
        plaid(
            "ERROR",
            FAILED,
            yesterday - 3,
            json!({"view_name": "CREDENTIAL", "error_type": "ITEM_ERROR", "error_code": "INVALID_CREDENTIALS", "error_message": "the provided credentials were not correct"}),
        ),
        plaid(
            "EXIT",
            FAILED,
            yesterday - 4,
            json!({"exit_status": "requires_credentials"}),
        ),
    ];
    post(
        &client,
        server,
        &format!("/v1/events/plaid?external_user_id={USER}"),
        serde_json::to_string(&failed).unwrap(),
    )
    .await;
    // Last week the same user linked another bank, whose login broke since.
    let linked = vec![
        plaid(
            "OPEN",
            "pl_linked_1042",
            7 * 24 * 60,
            json!({"view_name": "CONSENT"}),
        ),
        json!({"public_token": "public-sandbox-1042", "item_id": "item_1042", "metadata": {"link_session_id": "pl_linked_1042", "institution": {"name": "Tattersall Federal Credit Union", "institution_id": "ins_109511"}, "accounts": [{"id": "acc_1042", "name": "Checking", "mask": "1042", "type": "depository", "subtype": "checking"}]}}),
    ];
    post(
        &client,
        server,
        &format!("/v1/events/plaid?external_user_id={USER}"),
        serde_json::to_string(&linked).unwrap(),
    )
    .await;
    let broken = json!({"webhook_type": "ITEM", "webhook_code": "ERROR", "item_id": "item_1042", "error": {"error_type": "ITEM_ERROR", "error_code": "ITEM_LOGIN_REQUIRED", "error_message": "the login details of this item have changed", "display_message": null, "status": 400}, "environment": "production"});
    post(&client, server, "/v1/webhooks/plaid", broken.to_string()).await;
    // A callback without a session id: quarantined until a redrive names one.
    let orphan =
        json!({"eventName": "OPEN", "metadata": {"request_id": "orphan", "timestamp": time(30)}});
    post(&client, server, "/v1/events/plaid", orphan.to_string()).await;
}

#[tokio::test]
async fn a_support_question_is_answered_from_the_console_in_a_real_browser() {
    let Some(driver) = start_driver().await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[("LINKFLOW_TOKEN", TOKEN)]);
    seed(&server).await;
    let profile = tempfile::tempdir().unwrap();
    let client = browser(&driver, profile.path()).await;
    let api = reqwest::Client::builder()
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

    // Sign in: /ui sends to the form, the token brings the browser back.
    client.goto(&server.url("/ui")).await.unwrap();
    assert!(client
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/ui/login"));
    screenshot(&client, "login").await;
    assert_no_console_errors(&driver, &client, "login").await;
    type_into(&client, "token", TOKEN).await;
    click_then(&client, "sign-in", "q").await;
    assert_eq!(client.current_url().await.unwrap().path(), "/ui");
    screenshot(&client, "find").await;
    assert_no_console_errors(&driver, &client, "find").await;

    // "Why did user_1042's link fail yesterday?" Click 1: search the user.
    type_into(&client, "q", USER).await;
    click_then(&client, "search", "user-id").await;
    assert_eq!(text_of(&client, "user-id").await, USER);
    // Their linked item, whose login broke, with its history.
    let account = client
        .find(Locator::Css("article.card"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        account.contains("item_1042") && account.contains("login_required"),
        "{account}"
    );
    screenshot(&client, "user").await;
    assert_no_console_errors(&driver, &client, "user").await;
    // Click 2: the failed session (its row is marked failed and shows the error code).
    let row = client
        .find(Locator::Css("table.sessions tr.failed"))
        .await
        .unwrap();
    assert!(row.text().await.unwrap().contains("INVALID_CREDENTIALS"));
    row.find(Locator::LinkText(FAILED))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id("outcome"))
        .await
        .unwrap();
    let exit_phase = text_of(&client, "exit-phase").await;
    let error_code = text_of(&client, "last-error-code").await;
    let message = text_of(&client, "last-error-message").await;
    let session = get_json(&api, &server.url(&format!("/v1/sessions/{FAILED}"))).await;
    assert_eq!(exit_phase, "authenticating");
    assert_eq!(exit_phase, session["exit"]["phase"]);
    assert_eq!(error_code, "INVALID_CREDENTIALS");
    assert_eq!(error_code, session["last_error"]["code"]);
    assert_eq!(message, session["last_error"]["message"]);
    // The path on the diagram and the timeline in event-time order.
    let diagram = client
        .find(Locator::Css("svg.diagram"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap();
    assert!(
        diagram.contains("created → opened → institution_selected → authenticating → exited"),
        "{diagram}"
    );
    let events = client
        .find_all(Locator::Css("table.timeline tbody tr"))
        .await
        .unwrap();
    assert_eq!(events.len(), 5);
    assert!(events[3]
        .text()
        .await
        .unwrap()
        .contains("INVALID_CREDENTIALS"));
    screenshot(&client, "session").await;
    // The raw payload opens in place.
    let expand = client.find(Locator::Id("expand-all")).await.unwrap();
    expand.click().await.unwrap();
    let payloads = client
        .find_all(Locator::Css("table.timeline details[open] pre"))
        .await
        .unwrap();
    // Each event's raw payload and canonical form.
    assert_eq!(payloads.len(), 10);
    assert!(payloads[6]
        .text()
        .await
        .unwrap()
        .contains(r#""error_code": "INVALID_CREDENTIALS""#));
    client
        .execute(
            "document.querySelector('table.timeline').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
    screenshot(&client, "session-payloads").await;
    assert_no_console_errors(&driver, &client, "session").await;

    // The funnel page's counts are the API's.
    let query = "by=provider";
    client
        .goto(&server.url(&format!("/ui/funnel?{query}")))
        .await
        .unwrap();
    let funnels = get_json(&api, &server.url(&format!("/v1/funnel?{query}"))).await;
    let funnels = funnels.as_array().unwrap();
    assert!(funnels.len() >= 4, "four providers: {funnels:?}");
    for funnel in funnels {
        let group = funnel["group"].as_str().unwrap();
        let cell = |step: Option<&str>, field: &str| {
            let selector = match step {
                Some(step) => {
                    format!(r#"td[data-group="{group}"][data-step="{step}"][data-field="{field}"]"#)
                }
                None => format!(r#"td[data-group="{group}"][data-field="{field}"]"#),
            };
            let client = client.clone();
            async move {
                client
                    .find(Locator::Css(&selector))
                    .await
                    .unwrap_or_else(|error| panic!("{selector}: {error}"))
                    .text()
                    .await
                    .unwrap()
            }
        };
        assert_eq!(
            cell(None, "sessions").await,
            funnel["sessions"].to_string(),
            "{group}"
        );
        for step in funnel["steps"].as_array().unwrap() {
            let phase = step["phase"].as_str().unwrap();
            assert_eq!(
                cell(Some(phase), "reached").await,
                step["reached"].to_string(),
                "{group} {phase}"
            );
        }
    }
    screenshot(&client, "funnel").await;
    assert_no_console_errors(&driver, &client, "funnel").await;
    // Two windows side by side.
    client
        .goto(&server.url(&format!(
            "/ui/funnel?since={}&compare_since={}&compare_until={}",
            time(36 * 60).replace('+', "%2B"),
            time(72 * 60).replace('+', "%2B"),
            time(36 * 60).replace('+', "%2B"),
        )))
        .await
        .unwrap();
    client
        .find(Locator::Css(r#"th[data-group="window A"]"#))
        .await
        .unwrap();
    client
        .find(Locator::Css(r#"th[data-group="window B"]"#))
        .await
        .unwrap();
    screenshot(&client, "funnel-compare").await;
    assert_no_console_errors(&driver, &client, "funnel-compare").await;

    // Attention: a quarantined payload, redriven into a session after a confirmation.
    client.goto(&server.url("/ui/attention")).await.unwrap();
    screenshot(&client, "attention").await;
    assert_no_console_errors(&driver, &client, "attention").await;
    let card = client
        .find(Locator::Css("article.quarantined"))
        .await
        .unwrap();
    let entry = card.attr("data-entry").await.unwrap().unwrap();
    card.find(Locator::Css(r#"input[name="session_id"]"#))
        .await
        .unwrap()
        .send_keys("pl_redriven_1")
        .await
        .unwrap();
    card.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Id("confirm"))
        .await
        .unwrap();
    screenshot(&client, "redrive-confirm").await;
    let pending = get_json(&api, &server.url("/v1/quarantine?pending=true")).await;
    assert_eq!(
        pending["counts"]["pending"], 1,
        "nothing happens before the confirmation"
    );
    click_then(&client, "confirm", "redrive-result").await;
    let result = text_of(&client, "redrive-result").await;
    assert!(
        result.contains(&entry) && result.contains("released"),
        "{result}"
    );
    screenshot(&client, "redrive-done").await;
    assert_no_console_errors(&driver, &client, "redrive").await;
    let quarantine = get_json(&api, &server.url("/v1/quarantine")).await;
    assert_eq!(quarantine["counts"]["released"], 1, "{quarantine}");
    let redriven = get_json(&api, &server.url("/v1/sessions/pl_redriven_1")).await;
    assert_eq!(redriven["phase"], "opened", "{redriven}");

    // Sign out: the console asks for the token again.
    click_then(&client, "logout", "token").await;
    client.goto(&server.url("/ui/funnel")).await.unwrap();
    assert!(client
        .current_url()
        .await
        .unwrap()
        .path()
        .ends_with("/ui/login"));
    assert_no_console_errors(&driver, &client, "sign-out").await;
    client.close().await.unwrap();
}
