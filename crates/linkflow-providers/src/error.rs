//! Why a payload could not be decoded.

use serde_json::Value;

use crate::json::type_name;

/// A payload that is not a valid event of its provider. Names the JSON path of the problem;
/// nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecodeError {
    /// The input is not JSON.
    #[error("not JSON (line {line}, column {column}): {message}")]
    NotJson {
        /// 1-based line of the problem.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// A required field is missing (or null).
    #[error("{path} is missing")]
    Missing {
        /// Where the field should be (`$.meta.link_session_id`).
        path: String,
    },
    /// A field has the wrong JSON type.
    #[error("{path} must be {expected}, found {found}")]
    WrongType {
        /// Where the field is.
        path: String,
        /// What it must be.
        expected: String,
        /// What it is.
        found: String,
    },
    /// A field has the right type but a value that cannot be used.
    #[error("{path}: {reason}")]
    InvalidValue {
        /// Where the field is.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
}

impl DecodeError {
    pub(crate) fn wrong_type(path: &str, expected: &str, found: &Value) -> Self {
        DecodeError::WrongType {
            path: path.to_owned(),
            expected: expected.to_owned(),
            found: type_name(found).to_owned(),
        }
    }

    pub(crate) fn invalid(path: impl Into<String>, reason: impl Into<String>) -> Self {
        DecodeError::InvalidValue {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn not_json(error: &serde_json::Error) -> Self {
        DecodeError::NotJson {
            line: error.line(),
            column: error.column(),
            message: error.to_string(),
        }
    }

    /// The JSON path of the problem (`$` for input that is not JSON).
    pub fn path(&self) -> &str {
        match self {
            DecodeError::NotJson { .. } => "$",
            DecodeError::Missing { path }
            | DecodeError::WrongType { path, .. }
            | DecodeError::InvalidValue { path, .. } => path,
        }
    }
}
