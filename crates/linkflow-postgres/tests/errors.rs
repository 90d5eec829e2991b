//! What opening a PostgreSQL store says when it cannot.

use linkflow_postgres::testing::TestCluster;
use linkflow_postgres::{PgOptions, PgStore};

#[test]
fn an_invalid_url_is_a_clear_error() {
    let error = PgStore::open("postgres://user@host:notaport/db").unwrap_err();
    assert!(
        error.to_string().contains("invalid PostgreSQL URL"),
        "{error}"
    );
}

#[test]
fn a_server_that_does_not_answer_is_an_error_not_a_hang_or_panic() {
    // A loopback port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut options = PgOptions::new(format!("postgres://postgres@127.0.0.1:{port}/x"));
    options.connect_timeout = std::time::Duration::from_secs(2);
    let error = PgStore::open_with(options).unwrap_err();
    assert!(error.to_string().contains("PostgreSQL"), "{error}");
}

#[test]
fn a_schema_from_a_newer_linkflow_is_refused_and_left_alone() {
    let Some(cluster) = TestCluster::shared_or_skip("schema_too_new") else {
        return;
    };
    let url = cluster.create_database();
    drop(PgStore::open(&url).unwrap());
    let database = url.rsplit('/').next().unwrap();
    cluster.psql(
        database,
        "INSERT INTO linkflow_schema (version) VALUES (99)",
    );
    let error = PgStore::open(&url).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("version 99"), "{text}");
    assert!(text.contains("upgrade linkflow"), "{text}");
    assert_eq!(
        cluster.psql(database, "SELECT count(*) FROM linkflow_schema"),
        "2",
        "nothing was migrated"
    );
}
