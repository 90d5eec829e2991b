//! The OpenAPI document: `docs/openapi.json` is what the code generates (`LINKFLOW_BLESS=1`
//! writes it), every operation in it is routed, and the README's table of routes lists each
//! route's status codes as the document does.

use std::collections::BTreeSet;
use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Method, Request};
use linkflow_http::{openapi, router, HttpConfig};
use tower::ServiceExt;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Each operation of the document: method, path and its status codes.
fn operations() -> Vec<(String, String, BTreeSet<u16>)> {
    let doc = serde_json::to_value(openapi()).unwrap();
    let mut found = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let statuses = operation["responses"]
                .as_object()
                .unwrap()
                .keys()
                .map(|status| status.parse().unwrap())
                .collect();
            found.push((method.to_uppercase(), path.clone(), statuses));
        }
    }
    found
}

#[test]
fn the_checked_in_document_is_what_the_code_generates() {
    let generated = openapi().to_pretty_json().unwrap() + "\n";
    let path = repo().join("docs/openapi.json");
    if std::env::var_os("LINKFLOW_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "docs/openapi.json is not what the code generates: run LINKFLOW_BLESS=1 cargo test -p linkflow-http --test openapi"
    );
}

#[tokio::test]
async fn every_operation_in_the_document_is_routed() {
    let dir = tempfile::tempdir().unwrap();
    let engine = linkflow::Engine::open(dir.path()).unwrap();
    let app = router(engine.clone(), HttpConfig::default());
    let operations = operations();
    assert_eq!(operations.len(), 27, "{operations:?}");
    for (method, path, _) in &operations {
        let uri = path.replace("{id}", "some-id");
        let request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).unwrap())
            .uri(&uri)
            .body(Body::empty())
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        // Only a refusal's body is read (the event stream's never ends).
        let text = if status == 404 {
            let body = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .unwrap_or_default();
            String::from_utf8_lossy(&body).into_owned()
        } else {
            String::new()
        };
        assert!(
            status != 405 && !text.contains("no route"),
            "{method} {path}: {status} {text}"
        );
    }
    engine.shutdown().await.unwrap();
}

/// Statuses every route can give, listed once under the README's table.
const SHARED: [u16; 5] = [405, 408, 413, 414, 431];

#[test]
fn the_readme_lists_each_routes_status_codes() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let section = readme
        .split("## The HTTP API")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    let mut rows = std::collections::BTreeMap::new();
    for line in section.lines().filter(|line| line.starts_with("| `")) {
        let cells: Vec<&str> = line.split(" | ").collect();
        let route = cells[0]
            .trim_start_matches("| ")
            .trim_matches('`')
            .to_owned();
        let statuses: BTreeSet<u16> = cells[1]
            .split(", ")
            .map(|status| {
                status
                    .trim()
                    .parse()
                    .unwrap_or_else(|_| panic!("{route}: `{status}` is not a status"))
            })
            .collect();
        rows.insert(route, statuses);
    }
    for (method, path, statuses) in operations() {
        let route = format!("{method} {path}");
        let expected: BTreeSet<u16> = statuses
            .into_iter()
            .filter(|status| !SHARED.contains(status))
            .collect();
        assert_eq!(rows.remove(&route), Some(expected), "README row of {route}");
    }
    assert!(
        rows.is_empty(),
        "README rows of routes that do not exist: {rows:?}"
    );
}
