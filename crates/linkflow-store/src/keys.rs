//! The key layout of the sled tree. Everything lives in one tree so that one `sled::Batch` (atomic
//! within a tree) covers every key an append touches.
//!
//! | prefix | key                                          | value                         |
//! |--------|----------------------------------------------|-------------------------------|
//! | `S`    | `S` len:u16 session version:u64              | event record                  |
//! | `G`    | `G` position:u64                             | len:u16 session version:u64   |
//! | `D`    | `D` dedupe key (16 bytes)                    | dedupe target (see below)     |
//! | `P`    | `P` len:u16 session event id (16 bytes)      | parked record                 |
//! | `N`    | `N` len:u16 session                          | snapshot record               |
//!
//! Integers are big-endian so that byte order is numeric order; session ids are length-prefixed
//! so that `acct-1` is not a prefix of `acct-10`. A dedupe target is `A` position:u64
//! version:u64 len:u16 session (accepted) or `P` event-id:16 len:u16 session (parked).

use linkflow_core::{Position, SessionId, Version};
use uuid::Uuid;

use crate::error::CorruptRecord;
use crate::record::DedupeKey;
use crate::store::DedupeHit;

pub(crate) const EVENT: u8 = b'S';
pub(crate) const GLOBAL: u8 = b'G';
pub(crate) const DEDUPE: u8 = b'D';
pub(crate) const PARKED: u8 = b'P';
pub(crate) const SNAPSHOT: u8 = b'N';

/// `tag len session`: the prefix of every key of one session under `tag`.
pub(crate) fn session_prefix(tag: u8, session: &SessionId) -> Vec<u8> {
    let id = session.as_str().as_bytes();
    let len = u16::try_from(id.len()).expect("session ids are at most 256 bytes (SessionId::new)");
    let mut key = Vec::with_capacity(3 + id.len() + 16);
    key.push(tag);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(id);
    key
}

pub(crate) fn event_key(session: &SessionId, version: Version) -> Vec<u8> {
    let mut key = session_prefix(EVENT, session);
    key.extend_from_slice(&version.0.to_be_bytes());
    key
}

pub(crate) fn global_key(position: Position) -> [u8; 9] {
    let mut key = [0u8; 9];
    key[0] = GLOBAL;
    key[1..].copy_from_slice(&position.0.to_be_bytes());
    key
}

pub(crate) fn dedupe_key(dedupe: &DedupeKey) -> [u8; 17] {
    let mut key = [0u8; 17];
    key[0] = DEDUPE;
    key[1..].copy_from_slice(dedupe.as_bytes());
    key
}

pub(crate) fn parked_key(session: &SessionId, event_id: Uuid) -> Vec<u8> {
    let mut key = session_prefix(PARKED, session);
    key.extend_from_slice(event_id.as_bytes());
    key
}

pub(crate) fn snapshot_key(session: &SessionId) -> Vec<u8> {
    session_prefix(SNAPSHOT, session)
}

/// `len session version`, the value of a `G` key.
pub(crate) fn global_value(session: &SessionId, version: Version) -> Vec<u8> {
    let mut value = session_prefix(0, session);
    value.remove(0);
    value.extend_from_slice(&version.0.to_be_bytes());
    value
}

pub(crate) fn dedupe_value(hit: &DedupeHit) -> Vec<u8> {
    match hit {
        DedupeHit::Accepted {
            stream,
            version,
            position,
        } => {
            let mut value = vec![b'A'];
            value.extend_from_slice(&position.0.to_be_bytes());
            value.extend_from_slice(&version.0.to_be_bytes());
            value.extend_from_slice(&session_prefix(0, stream)[1..]);
            value
        }
        DedupeHit::Parked { stream, event_id } => {
            let mut value = vec![b'P'];
            value.extend_from_slice(event_id.as_bytes());
            value.extend_from_slice(&session_prefix(0, stream)[1..]);
            value
        }
    }
}

/// Reads a `len session` field at the start of `bytes`; returns the session and the rest.
fn read_session<'a>(what: &str, bytes: &'a [u8]) -> Result<(SessionId, &'a [u8]), CorruptRecord> {
    let bad = |reason: String| CorruptRecord::new(what, reason);
    if bytes.len() < 2 {
        return Err(bad("truncated session length".into()));
    }
    let len = usize::from(u16::from_be_bytes([bytes[0], bytes[1]]));
    let rest = &bytes[2..];
    if rest.len() < len {
        return Err(bad(format!(
            "session length {len} runs past the end ({} bytes left)",
            rest.len()
        )));
    }
    let text =
        std::str::from_utf8(&rest[..len]).map_err(|_| bad("session id is not UTF-8".into()))?;
    let session = SessionId::new(text).map_err(|error| bad(format!("bad session id: {error}")))?;
    Ok((session, &rest[len..]))
}

fn read_u64(what: &str, bytes: &[u8]) -> Result<u64, CorruptRecord> {
    let array: [u8; 8] = bytes.try_into().map_err(|_| {
        CorruptRecord::new(what, format!("expected 8 bytes, found {}", bytes.len()))
    })?;
    Ok(u64::from_be_bytes(array))
}

/// Splits an `S` key into its session and version.
pub(crate) fn parse_event_key(key: &[u8]) -> Result<(SessionId, Version), CorruptRecord> {
    let what = "event key";
    let (session, rest) = read_session(what, key.get(1..).unwrap_or_default())?;
    Ok((session, Version(read_u64(what, rest)?)))
}

/// Reads a `G` key's position.
pub(crate) fn parse_global_key(key: &[u8]) -> Result<Position, CorruptRecord> {
    Ok(Position(read_u64(
        "global key",
        key.get(1..).unwrap_or_default(),
    )?))
}

/// Reads a `G` value: the session and version the position points at.
pub(crate) fn parse_global_value(
    position: Position,
    value: &[u8],
) -> Result<(SessionId, Version), CorruptRecord> {
    let what = format!("global index entry at position {position}");
    let (session, rest) = read_session(&what, value)?;
    Ok((session, Version(read_u64(&what, rest)?)))
}

/// Reads a `D` value.
pub(crate) fn parse_dedupe_value(
    key: &DedupeKey,
    value: &[u8],
) -> Result<DedupeHit, CorruptRecord> {
    let what = format!("dedupe entry {key}");
    match value.first() {
        Some(b'A') if value.len() >= 17 => {
            let position = Position(read_u64(&what, &value[1..9])?);
            let version = Version(read_u64(&what, &value[9..17])?);
            let (stream, rest) = read_session(&what, &value[17..])?;
            if !rest.is_empty() {
                return Err(CorruptRecord::new(what, "trailing bytes"));
            }
            Ok(DedupeHit::Accepted {
                stream,
                version,
                position,
            })
        }
        Some(b'P') if value.len() >= 17 => {
            let event_id = Uuid::from_slice(&value[1..17])
                .map_err(|_| CorruptRecord::new(&what, "bad event id"))?;
            let (stream, rest) = read_session(&what, &value[17..])?;
            if !rest.is_empty() {
                return Err(CorruptRecord::new(what, "trailing bytes"));
            }
            Ok(DedupeHit::Parked { stream, event_id })
        }
        _ => Err(CorruptRecord::new(what, "unknown dedupe target tag")),
    }
}

/// Splits an `N` key into its session.
pub(crate) fn parse_snapshot_key(key: &[u8]) -> Result<SessionId, CorruptRecord> {
    let (session, rest) = read_session("snapshot key", key.get(1..).unwrap_or_default())?;
    if !rest.is_empty() {
        return Err(CorruptRecord::new("snapshot key", "trailing bytes"));
    }
    Ok(session)
}

/// Splits a `P` key into its session and event id.
pub(crate) fn parse_parked_key(key: &[u8]) -> Result<(SessionId, Uuid), CorruptRecord> {
    let (session, rest) = read_session("parked key", key.get(1..).unwrap_or_default())?;
    let event_id =
        Uuid::from_slice(rest).map_err(|_| CorruptRecord::new("parked key", "bad event id"))?;
    Ok((session, event_id))
}

/// Describes an `S` record for error messages.
pub(crate) fn describe_event(session: &SessionId, version: Version) -> String {
    format!("event `{session}` version {version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(text: &str) -> SessionId {
        SessionId::new(text).unwrap()
    }

    #[test]
    fn a_session_id_is_never_a_key_prefix_of_another() {
        let short = session_prefix(EVENT, &id("acct-1"));
        let long = event_key(&id("acct-10"), Version(1));
        assert!(!long.starts_with(&short));
    }

    #[test]
    fn versions_sort_numerically_and_keys_round_trip() {
        let session = id("s");
        assert!(event_key(&session, Version(2)) < event_key(&session, Version(10)));
        assert_eq!(
            parse_event_key(&event_key(&session, Version(300))).unwrap(),
            (session.clone(), Version(300))
        );
        let value = global_value(&session, Version(7));
        assert_eq!(
            parse_global_value(Position(1), &value).unwrap(),
            (session.clone(), Version(7))
        );
        let hit = DedupeHit::Parked {
            stream: session.clone(),
            event_id: Uuid::now_v7(),
        };
        let key = DedupeKey::derive(&[b"x"]);
        assert_eq!(parse_dedupe_value(&key, &dedupe_value(&hit)).unwrap(), hit);
    }

    #[test]
    fn truncated_values_are_errors_not_panics() {
        for bytes in [&b""[..], &[0, 9, b'a'], &[b'A', 1, 2], &[0xff; 40]] {
            let _ = parse_global_value(Position(1), bytes);
            let _ = parse_dedupe_value(&DedupeKey::derive(&[]), bytes);
            let _ = parse_event_key(bytes);
            let _ = parse_parked_key(bytes);
            let _ = parse_snapshot_key(bytes);
        }
        assert!(parse_global_value(Position(1), &[0, 9, b'a']).is_err());
    }
}
