//! The web console over HTTP (the browser tests are `tests/console.rs` at the workspace's
//! top): sign-in with the token, the cookie's attributes, CSRF and origin checks on every
//! action, escaping of what providers and users sent, bounded pages, and the pages' answers to
//! bad input.

use linkflow_http::{router, HttpConfig};
use reqwest::header;
use reqwest::redirect::Policy;
use serde_json::json;

struct Console {
    base: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    engine: linkflow::Engine,
    _dir: tempfile::TempDir,
}

const TOKEN: &str = "console-test-token";

async fn start(token: Option<&str>) -> Console {
    start_with(token, None).await
}

/// A console over an engine with `master_key` (hex) sealing personal fields, if given.
async fn start_with(token: Option<&str>, master_key: Option<&str>) -> Console {
    let dir = tempfile::tempdir().unwrap();
    let mut engine_config = linkflow::EngineConfig::new(dir.path());
    engine_config.master_key = master_key
        .map(|hex| std::sync::Arc::new(linkflow::privacy::MasterKey::from_hex(hex).unwrap()));
    let engine = linkflow::Engine::open_with(engine_config).unwrap();
    let mut config = HttpConfig::default();
    config.token = token.map(str::to_owned);
    let app = router(engine.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .redirect(Policy::none())
        .build()
        .unwrap();
    Console {
        base,
        client,
        server,
        engine,
        _dir: dir,
    }
}

impl Console {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs in with `token` and returns the cookie header value.
    async fn sign_in(&self, token: &str) -> reqwest::Response {
        self.client
            .post(self.url("/ui/login"))
            .form(&[("token", token), ("next", "/ui/funnel")])
            .send()
            .await
            .unwrap()
    }

    async fn cookie(&self) -> String {
        let response = self.sign_in(TOKEN).await;
        assert_eq!(response.status(), 303);
        let set = response
            .headers()
            .get(header::SET_COOKIE)
            .expect("a cookie is set")
            .to_str()
            .unwrap()
            .to_owned();
        set.split(';').next().unwrap().to_owned()
    }

    async fn page(&self, path: &str, cookie: &str) -> (u16, String) {
        let response = self
            .client
            .get(self.url(path))
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// `GET path` of the API (no token: these consoles run without one) as JSON.
    async fn json(&self, path: &str) -> serde_json::Value {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn post_events(&self, path: &str, body: serde_json::Value) {
        let response = self
            .client
            .post(self.url(path))
            .bearer_auth(TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
    }

    async fn stop(self) {
        self.server.abort();
        self.engine.shutdown().await.unwrap();
    }
}

/// The CSRF token in a page's forms.
fn csrf_of(page: &str) -> String {
    let start = page
        .find(r#"name="csrf" value=""#)
        .expect("a form with a CSRF token")
        + 19;
    page[start..start + 64].to_owned()
}

#[tokio::test]
async fn with_a_token_pages_need_a_sign_in_and_the_cookie_is_strict() {
    let console = start(Some(TOKEN)).await;
    let response = console
        .client
        .get(console.url("/ui/sessions/s1?cursor="))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(
        response.headers()[header::LOCATION],
        "/ui/login?next=%2Fui%2Fsessions%2Fs1%3Fcursor%3D"
    );
    // A wrong token: the form again, with why; no cookie.
    let response = console.sign_in("not-the-token").await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().get(header::SET_COOKIE).is_none());
    assert!(response.text().await.unwrap().contains("not the API token"));
    // The right one: a cookie only scripts cannot read, sent to the console alone, never
    // cross-site; back to where the sign-in was asked from.
    let response = console.sign_in(TOKEN).await;
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[header::LOCATION], "/ui/funnel");
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attribute), "{set}");
    }
    assert!(!set.contains("Secure"), "plain HTTP: {set}");
    let cookie = set.split(';').next().unwrap();
    let (status, page) = console.page("/ui", cookie).await;
    assert_eq!(status, 200);
    assert!(page.contains("Find a session"));
    // The API still wants its bearer token: the console's cookie is not one.
    let (status, _) = console.page("/v1/sessions", cookie).await;
    assert_eq!(status, 401);
    // Signing out ends the login on the server: the cookie no longer works.
    let response = console
        .client
        .post(console.url("/ui/logout"))
        .header(header::COOKIE, cookie)
        .form(&[("csrf", csrf_of(&page).as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 303);
    assert_eq!(response.headers()[header::LOCATION], "/ui/login");
    let (status, _) = console.page("/ui", cookie).await;
    assert_eq!(status, 303);
    console.stop().await;
}

#[tokio::test]
async fn behind_an_https_proxy_the_cookie_is_secure() {
    let console = start(Some(TOKEN)).await;
    let response = console
        .client
        .post(console.url("/ui/login"))
        .header("x-forwarded-proto", "https")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    let set = response.headers()[header::SET_COOKIE].to_str().unwrap();
    assert!(set.contains("Secure"), "{set}");
    console.stop().await;
}

#[tokio::test]
async fn every_action_needs_the_csrf_token_and_this_origin() {
    let console = start(Some(TOKEN)).await;
    // A payload naming no session: quarantined, so there is something to redrive.
    console
        .post_events(
            "/v1/events/plaid",
            json!({"eventName": "OPEN", "metadata": {"timestamp": "2026-12-06T09:05:00.000Z"}}),
        )
        .await;
    let cookie = console.cookie().await;
    let (status, page) = console.page("/ui/attention", &cookie).await;
    assert_eq!(status, 200);
    let entry_start = page.find(r#"name="entry" value=""#).unwrap() + 20;
    let entry = page[entry_start..page[entry_start..].find('"').unwrap() + entry_start].to_owned();
    let csrf = csrf_of(&page);
    let redrive = |csrf: String, origin: Option<String>, cookie: Option<String>| {
        let mut request = console
            .client
            .post(console.url("/ui/quarantine/redrive"))
            .form(&[
                ("csrf", csrf.as_str()),
                ("entry", entry.as_str()),
                ("session_id", "pl_redriven"),
                ("confirm", "yes"),
            ]);
        if let Some(origin) = origin {
            request = request.header(header::ORIGIN, origin);
        }
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // Without the login, with another login's token, from another site's page: refused.
    assert_eq!(redrive(csrf.clone(), None, None).await, 403);
    assert_eq!(
        redrive("0".repeat(64), None, Some(cookie.clone())).await,
        403
    );
    assert_eq!(
        redrive(
            csrf.clone(),
            Some("http://evil.example".to_owned()),
            Some(cookie.clone())
        )
        .await,
        403
    );
    let listed = console
        .engine
        .quarantine(Default::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(listed.counts.pending, 1, "nothing was redriven");
    // From this origin with the token: done.
    assert_eq!(
        redrive(csrf, Some(console.base.clone()), Some(cookie)).await,
        200
    );
    let listed = console
        .engine
        .quarantine(Default::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(listed.counts.released, 1);
    let session = linkflow_core::SessionId::new("pl_redriven").unwrap();
    assert!(console.engine.session(&session).await.unwrap().is_some());
    console.stop().await;
}

#[tokio::test]
async fn a_redrive_asks_before_it_does_anything() {
    let console = start(None).await;
    console
        .post_events(
            "/v1/events/plaid",
            json!({"eventName": "OPEN", "metadata": {"timestamp": "2026-12-06T09:05:00.000Z"}}),
        )
        .await;
    // No token: the first visit makes a login, which carries the CSRF token.
    let response = console
        .client
        .get(console.url("/ui/attention"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let page = response.text().await.unwrap();
    let entry_start = page.find(r#"name="entry" value=""#).unwrap() + 20;
    let entry = page[entry_start..page[entry_start..].find('"').unwrap() + entry_start].to_owned();
    let response = console
        .client
        .post(console.url("/ui/quarantine/redrive"))
        .header(header::COOKIE, &cookie)
        .form(&[
            ("csrf", csrf_of(&page).as_str()),
            ("entry", entry.as_str()),
            ("session_id", "pl_asked"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let confirm = response.text().await.unwrap();
    assert!(confirm.contains("Confirm the redrive"), "{confirm}");
    assert!(confirm.contains(r#"name="confirm" value="yes""#));
    let listed = console
        .engine
        .quarantine(Default::default(), 10, None)
        .await
        .unwrap();
    assert_eq!(listed.counts.pending, 1, "asking changed nothing");
    console.stop().await;
}

#[tokio::test]
async fn what_providers_and_users_sent_is_escaped_and_nothing_loads_from_elsewhere() {
    let console = start(None).await;
    let hostile = "<script>alert(1)</script>";
    console
        .post_events(
            &format!(
                "/v1/events/plaid?external_user_id={}",
                "%3Cscript%3Ealert(1)%3C%2Fscript%3E"
            ),
            json!({"eventName": "ERROR", "metadata": {"link_session_id": "pl_hostile", "timestamp": "2026-12-06T09:05:00.000Z", "error_code": hostile, "error_message": "<img src=x onerror=alert(2)>"}}),
        )
        .await;
    let response = console
        .client
        .get(console.url("/ui/sessions/pl_hostile"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let csp = response.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert_eq!(response.headers()[header::X_FRAME_OPTIONS], "DENY");
    let page = response.text().await.unwrap();
    assert!(!page.contains(hostile), "the error code is escaped");
    assert!(!page.contains("<img src=x"), "the message is escaped");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    // The user link is percent-encoded, its text escaped.
    assert!(
        page.contains(r#"href="/ui/users/%3Cscript%3Ealert%281%29%3C%2Fscript%3E""#),
        "{page}"
    );
    // Nothing on the page names another host.
    for reference in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.contains(reference), "{reference} in the page");
    }
    console.stop().await;
}

#[tokio::test]
async fn search_goes_to_the_session_the_user_or_the_institution() {
    let console = start(None).await;
    console
        .post_events(
            "/v1/events/plaid?external_user_id=user_9",
            json!({"eventName": "SELECT_INSTITUTION", "metadata": {"link_session_id": "pl_s9", "timestamp": "2026-12-06T09:05:00.000Z", "institution_id": "ins_9", "institution_name": "Ninth Bank"}}),
        )
        .await;
    let go = |q: &'static str| {
        let request = console
            .client
            .get(console.url("/ui/search"))
            .query(&[("q", q)]);
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 303, "{q}");
            response.headers()[header::LOCATION]
                .to_str()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(go("pl_s9").await, "/ui/sessions/pl_s9");
    assert_eq!(go(" user_9 ").await, "/ui/users/user_9");
    assert_eq!(go("ins_9").await, "/ui?institution=ins_9");
    assert_eq!(go("nobody").await, "/ui?missing=nobody");
    let (status, page) = console.page("/ui?missing=nobody", "").await;
    assert_eq!(status, 200);
    assert!(page.contains("Nothing found for"), "{page}");
    let (status, page) = console.page("/ui?institution=ins_9", "").await;
    assert_eq!(status, 200);
    assert!(page.contains(r#"href="/ui/sessions/pl_s9""#));
    console.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_page_saying_what_was_wrong() {
    let console = start(None).await;
    for (path, status, says) in [
        ("/ui/sessions/nope", 404, "no session `nope`"),
        ("/ui?window=2w", 400, "window: `2w`"),
        ("/ui?phase=sideways", 400, "sideways"),
        ("/ui?cursor=%21%21", 400, "cursor"),
        ("/ui/funnel?since=yesterday", 400, "since: `yesterday`"),
        ("/ui/funnel?by=colour", 400, "by: `colour`"),
    ] {
        let (got, page) = console.page(path, "").await;
        assert_eq!(got, status, "{path}: {page}");
        assert!(page.contains(says), "{path}: {page}");
        assert!(page.starts_with("<!DOCTYPE html>"), "{path}");
    }
    let long = "x".repeat(600);
    let (status, page) = console.page(&format!("/ui/search?q={long}"), "").await;
    assert_eq!(status, 400);
    assert!(page.contains("at most 512"));
    console.stop().await;
}

#[tokio::test]
async fn the_funnel_page_shows_the_apis_counts_and_two_windows_side_by_side() {
    let console = start(None).await;
    for (session, day, name) in [
        ("pl_a", "01", "OPEN"),
        ("pl_b", "01", "OPEN"),
        ("pl_c", "05", "OPEN"),
    ] {
        console
            .post_events(
                "/v1/events/plaid",
                json!({"eventName": name, "metadata": {"link_session_id": session, "timestamp": format!("2026-12-{day}T09:00:00.000Z")}}),
            )
            .await;
    }
    let api = console
        .json("/v1/funnel?since=2026-12-01T00:00:00Z&until=2026-12-03T00:00:00Z")
        .await;
    assert_eq!(api[0]["sessions"], 2);
    let (status, page) = console
        .page(
            "/ui/funnel?since=2026-12-01T00:00:00Z&until=2026-12-03T00:00:00Z&compare_since=2026-12-04T00:00:00Z&compare_until=2026-12-06T00:00:00Z",
            "",
        )
        .await;
    assert_eq!(status, 200);
    assert!(
        page.contains(r#"data-group="window A" data-field="sessions">2<"#),
        "{page}"
    );
    assert!(
        page.contains(r#"data-group="window B" data-field="sessions">1<"#),
        "{page}"
    );
    assert!(page.contains(r#"data-group="window A" data-step="opened" data-field="reached">2<"#));
    console.stop().await;
}

#[tokio::test]
async fn the_assets_are_served_from_the_binary_and_revalidate() {
    let console = start(Some(TOKEN)).await;
    // Assets and the sign-in form need no login (the form uses them).
    let response = console
        .client
        .get(console.url("/ui/assets/console.css"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/css; charset=utf-8"
    );
    let etag = response.headers()[header::ETAG].clone();
    assert_eq!(response.text().await.unwrap(), linkflow_http::CONSOLE_CSS);
    let again = console
        .client
        .get(console.url("/ui/assets/console.css"))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let script = console
        .client
        .get(console.url("/ui/assets/console.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(script.status(), 200);
    let (status, form) = console.page("/ui/login", "").await;
    assert_eq!(status, 200);
    assert!(
        form.contains(r#"<label for="token">"#),
        "the token field is labelled"
    );
    console.stop().await;
}

#[tokio::test]
async fn behind_a_proxy_the_forwarded_host_is_this_origin() {
    let console = start(Some(TOKEN)).await;
    let cookie = console.cookie().await;
    let (_, page) = console.page("/ui", &cookie).await;
    let sign_out = |forwarded: Option<&'static str>| {
        let mut request = console
            .client
            .post(console.url("/ui/logout"))
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, "https://console.example")
            .form(&[("csrf", csrf_of(&page))]);
        if let Some(host) = forwarded {
            request = request.header("x-forwarded-host", host);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(sign_out(None).await, 403);
    assert_eq!(sign_out(Some("elsewhere.example")).await, 403);
    assert_eq!(sign_out(Some("console.example")).await, 303);
    console.stop().await;
}

/// With a master key the pages show personal fields opened, as the API does; after an erasure
/// they show `[erased]`, the raw payloads too.
#[tokio::test]
async fn sealed_fields_are_opened_and_erased_ones_say_so() {
    let console = start_with(
        Some(TOKEN),
        Some("5f1e0c6a3b2d4e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8"),
    )
    .await;
    console
        .post_events(
            "/v1/events/plaid?external_user_id=user_private",
            json!({"eventName": "ERROR", "metadata": {"link_session_id": "pl_private", "timestamp": "2026-12-06T09:05:00.000Z", "error_code": "INVALID_CREDENTIALS", "error_message": "wrong password for jane@example.com"}}),
        )
        .await;
    let cookie = console.cookie().await;
    let (status, page) = console.page("/ui/sessions/pl_private", &cookie).await;
    assert_eq!(status, 200);
    assert!(
        page.contains("wrong password for jane@example.com"),
        "opened: {page}"
    );
    assert!(page.contains(r#"href="/ui/users/user_private""#));
    let (status, user) = console.page("/ui/users/user_private", &cookie).await;
    assert_eq!(status, 200);
    assert!(user.contains(r#"href="/ui/sessions/pl_private""#), "{user}");
    let erased = console
        .client
        .delete(console.url("/v1/users/user_private"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), 200);
    let (status, page) = console.page("/ui/sessions/pl_private", &cookie).await;
    assert_eq!(status, 200);
    assert!(!page.contains("jane@example.com"), "{page}");
    assert!(page.contains(linkflow::privacy::ERASED), "{page}");
    assert!(
        page.contains("INVALID_CREDENTIALS"),
        "the error code is not personal"
    );
    console.stop().await;
}

/// The find page lists the newest sessions first (by their first event), as
/// `GET /v1/sessions?order=newest` does, and pages below its cursor.
#[tokio::test]
async fn the_find_page_lists_the_newest_first() {
    let console = start(None).await;
    for (session, day) in [("pl_old", "01"), ("pl_new", "05"), ("pl_mid", "03")] {
        console
            .post_events(
                "/v1/events/plaid",
                json!({"eventName": "OPEN", "metadata": {"link_session_id": session, "timestamp": format!("2026-12-{day}T09:00:00.000Z")}}),
            )
            .await;
    }
    let (status, page) = console.page("/ui", "").await;
    assert_eq!(status, 200);
    let at = |id: &str| page.find(&format!(r#"href="/ui/sessions/{id}""#)).unwrap();
    assert!(
        at("pl_new") < at("pl_mid") && at("pl_mid") < at("pl_old"),
        "{page}"
    );
    let api = console.json("/v1/sessions?order=newest&limit=2").await;
    assert_eq!(api["sessions"][0]["session_id"], "pl_new");
    assert_eq!(api["sessions"][1]["session_id"], "pl_mid");
    let cursor = api["next_cursor"].as_str().unwrap();
    let rest = console
        .json(&format!(
            "/v1/sessions?{}",
            serde_urlencoded::to_string([("order", "newest"), ("cursor", cursor)]).unwrap()
        ))
        .await;
    assert_eq!(rest["sessions"][0]["session_id"], "pl_old");
    assert!(rest["next_cursor"].is_null());
    let (status, _) = console.page("/v1/sessions?order=sideways", "").await;
    assert_eq!(status, 400);
    console.stop().await;
}
