//! Embedding: the API and the operator's routes merged into an app that has its own
//! `/healthz` (issue 28's finding: this panicked with overlapping routes), served by the app.

use axum::routing::get;
use axum::Router;
use linkflow_http::{api_router, ops_router, HttpConfig};

#[tokio::test]
async fn the_routers_merge_into_an_app_with_its_own_health_route() {
    let dir = tempfile::tempdir().unwrap();
    let engine = linkflow::Engine::open(dir.path()).unwrap();
    let config = HttpConfig::default();
    let app: Router = Router::new()
        .route("/healthz", get(|| async { "my app is fine" }))
        .merge(api_router(engine.clone(), config.clone()))
        .nest("/linkflow", ops_router(engine.clone(), config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let get_text = |path: &str| {
        let request = client.get(format!("{base}{path}"));
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    assert_eq!(get_text("/healthz").await, (200, "my app is fine".into()));
    let (status, body) = get_text("/linkflow/healthz").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""status":"ok""#), "{body}");
    assert_eq!(get_text("/linkflow/readyz").await.0, 200);
    let posted = client
        .post(format!("{base}/v1/events/benji?session_id=embedded"))
        .body(r#"{"callback":"onEvent","event":"user_partner_select","metadata":{"partner_id":"p1"}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 200);
    let (status, metrics) = get_text("/linkflow/metrics").await;
    assert_eq!(status, 200);
    // The ops router counts what the API router did: they share the config's counters.
    assert!(
        metrics
            .contains(r#"linkflow_events_ingested_total{provider="benji",outcome="accepted"} 1"#),
        "{metrics}"
    );
    // A refusal of the API is JSON in the embedding app too.
    let (status, body) = get_text("/v1/sessions?limit=abc").await;
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "bad_request", "{body}");
    server.abort();
    engine.shutdown().await.unwrap();
}

/// `/readyz` says `disk_full` when the data directory's disk has less free space than the
/// config asks for (here: more than any disk has), while `/healthz` still says the engine is
/// alive; and `disk_unknown` when the directory cannot be read.
#[tokio::test]
async fn readyz_names_a_full_or_unreadable_disk() {
    use tower::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let engine = linkflow::Engine::open(dir.path()).unwrap();
    let probe = |config: HttpConfig, path: &'static str| {
        let app = ops_router(engine.clone(), config);
        async move {
            let request = axum::http::Request::builder()
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap();
            (
                status,
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
            )
        }
    };
    let mut full = HttpConfig::default();
    full.data_dir = Some(dir.path().to_owned());
    full.min_free_disk_bytes = u64::MAX;
    let (status, body) = probe(full.clone(), "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "disk_full", "{body}");
    assert_eq!(probe(full, "/healthz").await.0, 200);
    let mut gone = HttpConfig::default();
    gone.data_dir = Some(dir.path().join("no-such-directory"));
    let (status, body) = probe(gone, "/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "disk_unknown", "{body}");
    let mut roomy = HttpConfig::default();
    roomy.data_dir = Some(dir.path().to_owned());
    roomy.min_free_disk_bytes = 0;
    assert_eq!(probe(roomy, "/readyz").await.0, 200);
    engine.shutdown().await.unwrap();
}
