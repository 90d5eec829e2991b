//! Identifier newtypes shared by every crate, so that a session id, a version and a global
//! position can never be swapped by accident.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The longest session id accepted, in bytes. Ids are stored in every key of a session's
/// stream; provider ids are far shorter (MoneyKit's are ~45 bytes), so anything longer is
/// bad input rather than a real id.
pub const MAX_SESSION_ID_BYTES: usize = 256;

/// The key of one link session's event stream (MoneyKit `link_session_id`, Knot `session_id`,
/// the Benji session the integrator opened).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(Arc<str>);

/// A string that cannot be a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidSessionId {
    /// The id is empty.
    #[error("session id is empty")]
    Empty,
    /// The id is longer than [`MAX_SESSION_ID_BYTES`].
    #[error("session id is {len} bytes long; the limit is {MAX_SESSION_ID_BYTES}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
    },
    /// The id holds a control character (newlines and the like make ids unprintable in logs).
    #[error("session id holds a control character at byte {at}")]
    ControlCharacter {
        /// The byte offset of the character.
        at: usize,
    },
}

impl SessionId {
    /// Checks and wraps a session id.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidSessionId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidSessionId::Empty);
        }
        if id.len() > MAX_SESSION_ID_BYTES {
            return Err(InvalidSessionId::TooLong { len: id.len() });
        }
        if let Some((at, _)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(InvalidSessionId::ControlCharacter { at });
        }
        Ok(SessionId(Arc::from(id)))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        SessionId::new(value)
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        String::from(&*id.0)
    }
}

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::new(s)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The number of events accepted into one session's stream; the first event has version 1 and
/// versions have no gaps.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Version(pub u64);

impl Version {
    /// The version of a stream with no event.
    pub const EMPTY: Version = Version(0);

    /// The version after this one (the last one stays itself: a version read from damaged data
    /// or a caller never overflows).
    pub const fn next(self) -> Version {
        Version(self.0.saturating_add(1))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An event's place in the log of all sessions; the first event has position 1 and positions
/// have no gaps. On a shared PostgreSQL log an event is numbered shortly after its commit (by
/// the one sequencer, once every transaction older than it has ended): until then its position
/// reads [`Position::PENDING`].
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Position(pub u64);

impl Position {
    /// The position before the first event: subscribing from here replays everything.
    pub const START: Position = Position(0);

    /// An event stored but not numbered yet (PostgreSQL: committed, its position handed out by
    /// the sequencer a moment later; docs/deploy.md). No event is ever at position 0.
    pub const PENDING: Position = Position(0);

    /// True for [`Position::PENDING`].
    pub const fn is_pending(self) -> bool {
        self.0 == 0
    }

    /// [`Position::is_pending`] by reference (serde's `skip_serializing_if`: an answer leaves
    /// out a position not handed out yet rather than say 0).
    pub fn pending(position: &Position) -> bool {
        position.is_pending()
    }

    /// The position after this one (the last one stays itself: `after=18446744073709551615`
    /// from a caller reads nothing instead of overflowing).
    pub const fn next(self) -> Position {
        Position(self.0.saturating_add(1))
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The connect-flow providers linkflow understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Provider {
    /// MoneyKit Connect (`onEvent` callbacks forwarded by the frontend).
    Moneykit,
    /// Benji Connect (SDK callbacks forwarded by the frontend in linkflow's envelope).
    Benji,
    /// Knot (webhooks).
    Knot,
    /// Plaid Link (client callbacks forwarded by the frontend, and Plaid's webhooks).
    Plaid,
}

impl Provider {
    /// Every provider.
    pub const ALL: [Provider; 4] = [
        Provider::Moneykit,
        Provider::Benji,
        Provider::Knot,
        Provider::Plaid,
    ];

    /// The lowercase name, as serialized.
    pub const fn as_str(self) -> &'static str {
        match self {
            Provider::Moneykit => "moneykit",
            Provider::Benji => "benji",
            Provider::Knot => "knot",
            Provider::Plaid => "plaid",
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no provider.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown provider `{input}`; expected moneykit, benji, knot or plaid")]
pub struct ParseProviderError {
    /// The text that was not a provider name.
    pub input: String,
}

impl FromStr for Provider {
    type Err = ParseProviderError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL
            .into_iter()
            .find(|provider| provider.as_str() == s)
            .ok_or_else(|| ParseProviderError {
                input: s.to_owned(),
            })
    }
}

/// Identifies one delivery of an event: the same key twice means the same event delivered twice
/// (a webhook retry, a double-fired callback). 16 bytes of a SHA-256.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupeKey([u8; 16]);

impl DedupeKey {
    /// The key's length in bytes.
    pub const LEN: usize = 16;

    /// Derives a key from parts (for example provider, session, event name, time, payload
    /// hash). Parts are length-prefixed before hashing, so ("ab", "c") and ("a", "bc") differ.
    pub fn derive(parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let digest = hasher.finalize();
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest[..16]);
        DedupeKey(key)
    }

    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        DedupeKey(bytes)
    }

    /// The key's bytes.
    pub const fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Parses the 32-character lowercase hex form.
    pub fn from_hex(hex: &str) -> Option<Self> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut key = [0u8; 16];
        for (index, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[index * 2..index * 2 + 2], 16).ok()?;
        }
        Some(DedupeKey(key))
    }
}

impl DedupeKey {
    /// The 32-character lowercase hex form, without going through the formatter (it is written
    /// into every record).
    fn hex(&self) -> [u8; 32] {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = [0u8; 32];
        for (index, byte) in self.0.iter().enumerate() {
            out[index * 2] = DIGITS[usize::from(byte >> 4)];
            out[index * 2 + 1] = DIGITS[usize::from(byte & 0x0f)];
        }
        out
    }
}

impl fmt::Display for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = self.hex();
        f.write_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for DedupeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DedupeKey({self})")
    }
}

impl Serialize for DedupeKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let hex = self.hex();
        serializer.serialize_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for DedupeKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        DedupeKey::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("a dedupe key is 32 lowercase hex characters"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedupe_keys_round_trip_through_hex_and_separate_their_parts() {
        let key = DedupeKey::derive(&[b"ab", b"c"]);
        assert_eq!(DedupeKey::from_hex(&key.to_string()), Some(key));
        assert_ne!(key, DedupeKey::derive(&[b"a", b"bc"]));
        assert_eq!(DedupeKey::from_hex("zz"), None);
        assert_eq!(DedupeKey::from_hex(&"g".repeat(32)), None);
    }

    #[test]
    fn the_last_version_and_position_have_no_next_beyond_them() {
        assert_eq!(Version(1).next(), Version(2));
        assert_eq!(Version(u64::MAX).next(), Version(u64::MAX));
        assert_eq!(Position::START.next(), Position(1));
        assert_eq!(Position(u64::MAX).next(), Position(u64::MAX));
    }

    #[test]
    fn session_ids_are_checked() {
        assert_eq!(SessionId::new(""), Err(InvalidSessionId::Empty));
        assert_eq!(
            SessionId::new("a".repeat(MAX_SESSION_ID_BYTES + 1)),
            Err(InvalidSessionId::TooLong {
                len: MAX_SESSION_ID_BYTES + 1
            })
        );
        assert_eq!(
            SessionId::new("ab\ncd"),
            Err(InvalidSessionId::ControlCharacter { at: 2 })
        );
        assert!(serde_json::from_str::<SessionId>("\"\"").is_err());
        let id: SessionId = serde_json::from_str("\"sandbox_1\"").unwrap();
        assert_eq!(id.as_str(), "sandbox_1");
    }

    #[test]
    fn providers_parse_by_name() {
        for provider in Provider::ALL {
            assert_eq!(provider.as_str().parse::<Provider>().unwrap(), provider);
        }
        assert!("plaid-webhook".parse::<Provider>().is_err());
        assert!("Plaid".parse::<Provider>().is_err());
    }
}
