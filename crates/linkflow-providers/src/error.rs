//! Why a payload could not be read at all. A payload that is JSON is never refused for what it
//! says: fields the adapter cannot read are [`crate::Warning`]s, and a payload that names no
//! stream is quarantined.

/// A payload that is not JSON, or breaks a size or count limit. Nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is not JSON.
    #[error("not JSON (line {line}, column {column}): {message}")]
    NotJson {
        /// 1-based line of the problem, within the payload.
        line: usize,
        /// 1-based column of the problem.
        column: usize,
        /// What the JSON parser said.
        message: String,
    },
    /// The input's structure is broken around the payload (an unterminated value, an empty
    /// array element, an array never closed).
    #[error("not JSON: {reason}")]
    Malformed {
        /// What is broken, and where it starts.
        reason: String,
    },
    /// The payload's bytes are not UTF-8.
    #[error("not UTF-8: invalid bytes after {at} valid ones")]
    NotUtf8 {
        /// The number of valid bytes before the first invalid one.
        at: usize,
    },
    /// The payload is larger than the limit.
    #[error("the payload is larger than {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// One delivery holds more payloads than allowed.
    #[error("more than {limit} payloads in one delivery")]
    TooManyPayloads {
        /// The limit.
        limit: usize,
    },
}

impl DecodeError {
    pub(crate) fn not_json(error: &serde_json::Error) -> Self {
        DecodeError::NotJson {
            line: error.line(),
            column: error.column(),
            message: error.to_string(),
        }
    }

    pub(crate) fn invalid_input(reason: impl Into<String>) -> Self {
        DecodeError::Malformed {
            reason: reason.into(),
        }
    }

    /// True when the payload broke a size or count limit (an HTTP 413), not the JSON syntax.
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            DecodeError::TooLarge { .. } | DecodeError::TooManyPayloads { .. }
        )
    }
}
