//! Figure 16: the web console's pages at 100,000 sessions (`--quick`: 2,000). A fresh store
//! takes that many sessions of the standard workload (starting evenly over seven days), the
//! server's router (API and console) is served in-process on a loopback port, and each page is
//! fetched over HTTP 60 times after one untimed fetch, as a browser would (signed in, the
//! cookie sent): the find page with and without a filter, a session page, a user page, the
//! funnel (plain, by institution, two windows side by side), the attention page. Each page's
//! baseline is the API's JSON read behind it, fetched the same way in the same run, so
//! `console_<page>_vs_api_p50_ratio` is what rendering the page adds.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use linkflow::{Engine, EngineConfig};
use linkflow_core::Provider;
use linkflow_providers::DecodeContext;

use crate::figures::{incoming, percentile_us, BATCH, SEED};
use crate::workload::Workload;
use crate::Options;

/// Timed fetches of each page.
const REPEATS: usize = 60;
/// The days the sessions start over.
const SPAN_MS: i64 = 7 * 24 * 3_600_000;
const TOKEN: &str = "bench-token";

/// p50 and p99 (microseconds) of `REPEATS` fetches of `path` (`{n}` replaced by the repeat's
/// number), after one untimed fetch; every answer must be 200.
async fn fetch_times(
    client: &reqwest::Client,
    base: &str,
    path: &dyn Fn(usize) -> String,
    headers: &reqwest::header::HeaderMap,
) -> (f64, f64) {
    let mut times = Vec::with_capacity(REPEATS);
    for repeat in 0..=REPEATS {
        let url = format!("{base}{}", path(repeat));
        let started = Instant::now();
        let response = client
            .get(&url)
            .headers(headers.clone())
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let body = response.bytes().await.expect("a body");
        let elapsed = started.elapsed();
        assert!(status.is_success(), "{url}: {status}");
        std::hint::black_box(body);
        if repeat > 0 {
            times.push(elapsed);
        }
    }
    times.sort();
    (percentile_us(&times, 0.5), percentile_us(&times, 0.99))
}

pub async fn figures(options: &Options, results: &mut BTreeMap<String, f64>) {
    let size = if options.quick { 2_000 } else { 100_000 };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let engine = Engine::open_with(EngineConfig::new(dir.path())).expect("the engine opens");
    let context = DecodeContext::received_at(Utc::now());
    let mut workload = Workload::spread(SEED + 16, size, SPAN_MS).peekable();
    // Each workload session's id, and its user's for Benji's (`user_<n>`).
    let mut sessions: Vec<String> = Vec::with_capacity(size);
    let mut users: Vec<String> = Vec::new();
    loop {
        let mut batch = Vec::with_capacity(BATCH);
        while batch.len() < BATCH {
            match workload.peek() {
                Some(delivery) if delivery.session < size => {
                    let delivery = workload.next().expect("peeked");
                    if sessions.len() == delivery.session {
                        let n = delivery.session;
                        sessions.push(match delivery.provider {
                            Provider::Moneykit => format!("mk_{n:09}"),
                            Provider::Benji => {
                                users.push(format!("user_{n}"));
                                format!("bj_{n:09}")
                            }
                            Provider::Knot => format!("kn_{n:09}"),
                            Provider::Plaid => format!("pl_{n:09}"),
                        });
                    }
                    batch.push(incoming(&delivery, &context));
                }
                _ => break,
            }
        }
        if batch.is_empty() {
            break;
        }
        engine.ingest_batch(batch).await.expect("ingest succeeds");
    }
    let mut config = linkflow_http::HttpConfig::default();
    config.token = Some(TOKEN.to_owned());
    let app = linkflow_http::router(engine.clone(), config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .expect("a client");
    // Signed in as a browser is: the login's cookie.
    let login = client
        .post(format!("{base}/ui/login"))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("the sign-in answers");
    let cookie = login
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .expect("a login cookie")
        .to_owned();
    let mut browser = reqwest::header::HeaderMap::new();
    browser.insert(
        reqwest::header::COOKIE,
        cookie.parse().expect("a header value"),
    );
    let mut api = reqwest::header::HeaderMap::new();
    api.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {TOKEN}").parse().expect("a header value"),
    );
    // A session (and a user) every 7,919th, so that the reads miss the cache too.
    let session = |repeat: usize| sessions[(repeat * 7_919) % sessions.len()].clone();
    let session = &session;
    let user = |repeat: usize| users[(repeat * 7_919) % users.len()].clone();
    let user = &user;
    type Path<'a> = Box<dyn Fn(usize) -> String + 'a>;
    let pages: Vec<(&str, Path, Path)> = vec![
        (
            "find",
            Box::new(|_| "/ui".to_owned()),
            Box::new(|_| "/v1/sessions?limit=50&order=newest".to_owned()),
        ),
        (
            "find_exited",
            Box::new(|_| "/ui?phase=exited".to_owned()),
            Box::new(|_| "/v1/sessions?limit=50&phase=exited&order=newest".to_owned()),
        ),
        (
            "session",
            Box::new(move |repeat| format!("/ui/sessions/{}", session(repeat))),
            Box::new(move |repeat| format!("/v1/sessions/{}/history?limit=200", session(repeat))),
        ),
        (
            "user",
            Box::new(move |repeat| format!("/ui/users/{}", user(repeat))),
            Box::new(move |repeat| format!("/v1/users/{}?limit=50", user(repeat))),
        ),
        (
            "funnel",
            Box::new(|_| "/ui/funnel".to_owned()),
            Box::new(|_| "/v1/funnel".to_owned()),
        ),
        (
            "funnel_by_institution",
            Box::new(|_| "/ui/funnel?by=institution".to_owned()),
            Box::new(|_| "/v1/funnel?by=institution".to_owned()),
        ),
        (
            "funnel_compare",
            // Two funnels on the page against one in the API.
            Box::new(|_| {
                "/ui/funnel?since=2023-11-14T00:00:00Z&until=2023-11-18T00:00:00Z&compare_since=2023-11-18T00:00:00Z&compare_until=2023-11-22T00:00:00Z".to_owned()
            }),
            Box::new(|_| {
                "/v1/funnel?since=2023-11-14T00:00:00Z&until=2023-11-18T00:00:00Z".to_owned()
            }),
        ),
        (
            "attention",
            Box::new(|_| "/ui/attention".to_owned()),
            Box::new(|_| "/v1/parked?limit=50".to_owned()),
        ),
    ];
    for (name, page, read) in &pages {
        let (page50, page99) = fetch_times(&client, &base, page.as_ref(), &browser).await;
        let (api50, api99) = fetch_times(&client, &base, read.as_ref(), &api).await;
        results.insert(format!("console_{name}_p50_us"), page50);
        results.insert(format!("console_{name}_p99_us"), page99);
        results.insert(format!("console_{name}_api_p50_us"), api50);
        results.insert(format!("console_{name}_api_p99_us"), api99);
        results.insert(format!("console_{name}_vs_api_p50_ratio"), page50 / api50);
    }
    results.insert("console_sessions".into(), size as f64);
    server.abort();
    engine.shutdown().await.expect("shutdown");
}
