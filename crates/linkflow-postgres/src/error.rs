//! PostgreSQL errors as [`StoreError`]s.

use linkflow_store::{CorruptRecord, StoreError};

/// A driver or server error, with the server's code, message, detail and constraint when there
/// are some.
pub(crate) fn backend(error: tokio_postgres::Error) -> StoreError {
    match error.as_db_error() {
        Some(db) => {
            let mut text = format!("PostgreSQL {}: {}", db.code().code(), db.message());
            if let Some(detail) = db.detail() {
                text.push_str(&format!(" ({detail})"));
            }
            if let Some(constraint) = db.constraint() {
                text.push_str(&format!(" [constraint {constraint}]"));
            }
            StoreError::Backend(text)
        }
        None => StoreError::Backend(format!("PostgreSQL: {error}")),
    }
}

pub(crate) fn schema_too_new(found: i32, known: i32) -> StoreError {
    StoreError::Backend(format!(
        "the database's linkflow schema is at version {found}; this build knows up to {known}: \
         upgrade linkflow before opening it"
    ))
}

/// A column that does not fit the type linkflow reads it as.
pub(crate) fn bad_column(record: impl Into<String>, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt(CorruptRecord {
        key: record.into(),
        reason: reason.into(),
    })
}
