//! PostgreSQL errors as [`StoreError`]s.

use linkflow_store::{CorruptRecord, DatabaseError, DatabaseFailure, StoreError};

/// A driver or server error, typed by the server's SQLSTATE, with its message, detail and
/// constraint when there are some.
pub(crate) fn backend(error: tokio_postgres::Error) -> StoreError {
    let (sqlstate, message) = match error.as_db_error() {
        Some(db) => {
            let mut text = db.message().to_owned();
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(constraint) = db.constraint() {
                text.push_str(&format!(" [constraint {constraint}]"));
            }
            (Some(db.code().code().to_owned()), text)
        }
        None => (None, error.to_string()),
    };
    StoreError::Database(DatabaseError {
        failure: DatabaseFailure::of_sqlstate(sqlstate.as_deref()),
        sqlstate,
        message,
    })
}

/// The database is unreachable for a reason the driver does not give as an error.
pub(crate) fn unreachable(message: &str) -> StoreError {
    StoreError::Database(DatabaseError {
        failure: DatabaseFailure::Unreachable,
        sqlstate: None,
        message: message.to_owned(),
    })
}

pub(crate) fn schema_too_new(found: i32, known: i32) -> StoreError {
    StoreError::SchemaTooNew { found, known }
}

/// A column that does not fit the type linkflow reads it as.
pub(crate) fn bad_column(record: impl Into<String>, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt(CorruptRecord {
        key: record.into(),
        reason: reason.into(),
    })
}

/// Column `index` of `row` as `T`: a typed error naming the column, not a panic, when the
/// database holds another type there (a schema changed behind linkflow's back).
pub(crate) fn col<'a, T, I>(row: &'a tokio_postgres::Row, index: I) -> Result<T, StoreError>
where
    T: tokio_postgres::types::FromSql<'a>,
    I: tokio_postgres::row::RowIndex + std::fmt::Display,
{
    let name = index.to_string();
    row.try_get(index)
        .map_err(|error| bad_column(format!("column `{name}`"), error.to_string()))
}
