//! What opening a PostgreSQL store says when it cannot.

use linkflow_postgres::testing::TestCluster;
use linkflow_postgres::{PgOptions, PgStore};
use linkflow_store::{DatabaseError, DatabaseFailure, StoreError};

#[test]
fn an_invalid_url_is_a_clear_error() {
    let error = PgStore::open("postgres://user@host:notaport/db").unwrap_err();
    assert!(matches!(error, StoreError::InvalidConfig(_)), "{error:?}");
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
    assert!(
        matches!(
            error,
            StoreError::Database(DatabaseError {
                failure: DatabaseFailure::Unreachable,
                sqlstate: None,
                ..
            })
        ),
        "{error:?}"
    );
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
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error:?}"
    );
    let text = error.to_string();
    assert!(text.contains("version 99"), "{text}");
    assert!(text.contains("upgrade linkflow"), "{text}");
    assert_eq!(
        cluster.psql(database, "SELECT count(*) FROM linkflow_schema"),
        "2",
        "nothing was migrated"
    );
}

/// A server error keeps its SQLSTATE, typed: here the store's events table renamed behind its
/// back, so that its read fails on the server (42P01, undefined table).
#[test]
fn a_server_error_is_typed_by_its_sqlstate() {
    use linkflow_store::EventStore;
    for (code, failure) in [
        (None, DatabaseFailure::Unreachable),
        (Some("08006"), DatabaseFailure::Unreachable),
        (Some("40001"), DatabaseFailure::SerializationFailure),
        (Some("40P01"), DatabaseFailure::DeadlockDetected),
        (Some("23505"), DatabaseFailure::UniqueViolation),
        (Some("53100"), DatabaseFailure::DiskFull),
        (Some("57P01"), DatabaseFailure::ShuttingDown),
        (Some("25006"), DatabaseFailure::ReadOnly),
        (Some("42P01"), DatabaseFailure::Other),
    ] {
        assert_eq!(DatabaseFailure::of_sqlstate(code), failure, "{code:?}");
    }
    let Some(cluster) = TestCluster::shared_or_skip("sqlstate") else {
        return;
    };
    let url = cluster.create_database();
    let store = PgStore::open(&url).unwrap();
    let database = url.rsplit('/').next().unwrap();
    cluster.psql(database, "ALTER TABLE linkflow_events RENAME TO gone");
    let error = store
        .read_all(linkflow_core::Position::START, 10)
        .unwrap_err();
    match &error {
        StoreError::Database(DatabaseError {
            failure: DatabaseFailure::Other,
            sqlstate: Some(code),
            message,
        }) => {
            assert_eq!(code, "42P01");
            assert!(message.contains("linkflow_events"), "{message}");
        }
        other => panic!("expected a typed database error, got {other:?}"),
    }
    assert!(
        error.to_string().starts_with("PostgreSQL 42P01: "),
        "{error}"
    );
}

/// A column of another type than linkflow reads (a schema changed behind its back) is a typed
/// error naming the column, never a panic.
#[test]
fn a_column_of_another_type_is_an_error_not_a_panic() {
    use linkflow_store::EventStore;
    let Some(cluster) = TestCluster::shared_or_skip("column_type") else {
        return;
    };
    let url = cluster.create_database();
    let store = PgStore::open(&url).unwrap();
    let database = url.rsplit('/').next().unwrap();
    store.set_folded_with(1).unwrap();
    cluster.psql(
        database,
        "ALTER TABLE linkflow_meta ALTER COLUMN value TYPE text USING value::text",
    );
    let error = store.folded_with().unwrap_err();
    assert!(matches!(error, StoreError::Corrupt(_)), "{error:?}");
    assert!(error.to_string().contains("column `0`"), "{error}");
}

/// `drop_schema` removes every table the migrations create (the keys' included), so that a
/// database reused by a benchmark opens again.
#[test]
fn drop_schema_leaves_no_linkflow_table_and_the_store_opens_again() {
    let Some(cluster) = TestCluster::shared_or_skip("drop_schema") else {
        return;
    };
    let url = cluster.create_database();
    drop(PgStore::open(&url).unwrap());
    let database = url.rsplit('/').next().unwrap();
    let tables = |cluster: &TestCluster| {
        cluster.psql(
            database,
            "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'linkflow%'",
        )
    };
    assert_ne!(tables(cluster), "0");
    PgStore::drop_schema(&url).unwrap();
    assert_eq!(tables(cluster), "0");
    drop(PgStore::open(&url).unwrap());
}
