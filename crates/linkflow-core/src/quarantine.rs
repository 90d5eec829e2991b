//! Payloads that name no stream they can go to: kept whole, listed, and released into a stream
//! once they can be decoded into one (a newer adapter, or a session id supplied later).
//!
//! Each quarantined payload is its own small stream: its first event ([`Quarantined`]) holds
//! why and where it came from (the payload itself is the stored event's raw text), and a
//! second one ([`Released`]) records the stream the payload went to. [`QuarantineEntry`] is
//! that stream folded.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::compact::{Compact, CompactError, Input, Output};
use crate::ids::{SessionId, Version};

/// The most request parameters an [`Origin`] keeps; a request with more keeps the first ones.
pub const MAX_ORIGIN_PARAMS: usize = 16;

/// The longest text an [`Origin`] keeps per field, in bytes; longer text is cut at a character
/// boundary and ends with `…`. Keeps a quarantined record well under the record size limit
/// whatever the request carried.
pub const MAX_ORIGIN_TEXT_BYTES: usize = 256;

/// Where a payload came in: which input, where in the delivery, and the request parameters
/// that decoding uses (`session_id`, `external_user_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The input it came through (`POST /v1/events/benji`, `linkflow ingest events.jsonl`).
    pub channel: String,
    /// Where it was in its delivery (`line 12`, `index 3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// The request's parameters, in the order given.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub params: Vec<(String, String)>,
}

impl Origin {
    /// An origin for `channel`, its text bounded by [`MAX_ORIGIN_TEXT_BYTES`].
    pub fn new(channel: &str) -> Self {
        Origin {
            channel: bounded(channel),
            location: None,
            params: Vec::new(),
        }
    }

    /// Sets where in the delivery the payload was.
    pub fn at(mut self, location: &str) -> Self {
        self.location = Some(bounded(location));
        self
    }

    /// Adds a request parameter; past [`MAX_ORIGIN_PARAMS`] it is dropped.
    pub fn with_param(mut self, name: &str, value: &str) -> Self {
        if self.params.len() < MAX_ORIGIN_PARAMS {
            self.params.push((bounded(name), bounded(value)));
        }
        self
    }

    /// The value of the first parameter called `name`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.channel)?;
        if let Some(location) = &self.location {
            write!(f, " at {location}")?;
        }
        for (index, (name, value)) in self.params.iter().enumerate() {
            let separator = if index == 0 { '?' } else { '&' };
            write!(f, "{separator}{name}={value}")?;
        }
        Ok(())
    }
}

/// `text` cut to [`MAX_ORIGIN_TEXT_BYTES`] at a character boundary.
fn bounded(text: &str) -> String {
    if text.len() <= MAX_ORIGIN_TEXT_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ORIGIN_TEXT_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// A payload put in quarantine: why no stream could take it, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantined {
    /// The input the payload came from (`moneykit`, `benji`, `knot`, `knot-sdk`): what decodes
    /// it again.
    pub feed: String,
    /// Why the payload names no stream (`no session id: ...`).
    pub reason: String,
    /// Where it came in.
    pub origin: Origin,
}

/// A quarantined payload decoded again and stored in a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The stream it went to.
    pub stream: SessionId,
}

/// A quarantined payload's stream, folded: pending until released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantineEntry {
    /// Why and from where, as quarantined.
    pub quarantined: Quarantined,
    /// Where it went, once released.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released: Option<SessionId>,
}

/// What a quarantine stream refuses: anything but its one payload, then one release.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QuarantineRejection {
    /// The stream already holds its payload.
    #[error("the quarantine entry already holds its payload")]
    AlreadyQuarantined,
    /// A release of a payload that is not there yet.
    #[error("a release needs the quarantined payload first")]
    NothingToRelease,
    /// The payload was released already.
    #[error("the quarantined payload was already released into `{0}`")]
    AlreadyReleased(SessionId),
}

impl QuarantineEntry {
    /// The entry a quarantined payload starts.
    pub fn new(quarantined: Quarantined) -> Self {
        QuarantineEntry {
            quarantined,
            released: None,
        }
    }

    /// True until the payload is released.
    pub fn is_pending(&self) -> bool {
        self.released.is_none()
    }

    /// Events in the entry's stream: 1 pending, 2 released.
    pub fn version(&self) -> Version {
        Version(if self.released.is_some() { 2 } else { 1 })
    }

    /// Records the release; refused when already released.
    pub fn release(&mut self, release: &Released) -> Result<(), QuarantineRejection> {
        if let Some(stream) = &self.released {
            return Err(QuarantineRejection::AlreadyReleased(stream.clone()));
        }
        self.released = Some(release.stream.clone());
        Ok(())
    }
}

/// One event of a quarantine stream.
#[derive(Debug, Clone, Copy)]
pub enum QuarantineEvent<'a> {
    /// The payload went into quarantine.
    Quarantined(&'a Quarantined),
    /// The payload was released into a stream.
    Released(&'a Released),
}

/// Folds one event into a quarantine stream's state (`None` before its payload). On a
/// rejection the state is unchanged.
pub fn apply_quarantine(
    state: &mut Option<QuarantineEntry>,
    event: QuarantineEvent<'_>,
) -> Result<(), QuarantineRejection> {
    match (state.as_mut(), event) {
        (None, QuarantineEvent::Quarantined(quarantined)) => {
            *state = Some(QuarantineEntry::new(quarantined.clone()));
            Ok(())
        }
        (Some(_), QuarantineEvent::Quarantined(_)) => Err(QuarantineRejection::AlreadyQuarantined),
        (None, QuarantineEvent::Released(_)) => Err(QuarantineRejection::NothingToRelease),
        (Some(entry), QuarantineEvent::Released(release)) => entry.release(release),
    }
}

impl Compact for Origin {
    fn encode_compact(&self, out: &mut Output) {
        out.str(&self.channel);
        out.opt_str(self.location.as_deref());
        out.varint(self.params.len() as u64);
        for (name, value) in &self.params {
            out.str(name);
            out.str(value);
        }
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        let channel = input.str("origin channel")?;
        let location = input.opt_str("origin location")?;
        let count = input.count("origin parameters")?;
        if count > MAX_ORIGIN_PARAMS {
            return Err(input.error(
                "origin parameters",
                format!("{count}, at most {MAX_ORIGIN_PARAMS}"),
            ));
        }
        let mut params = Vec::with_capacity(count);
        for _ in 0..count {
            params.push((
                input.str("origin parameter name")?,
                input.str("origin parameter value")?,
            ));
        }
        Ok(Origin {
            channel,
            location,
            params,
        })
    }
}

impl Compact for Quarantined {
    fn encode_compact(&self, out: &mut Output) {
        out.str(&self.feed);
        out.str(&self.reason);
        self.origin.encode_compact(out);
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        Ok(Quarantined {
            feed: input.str("quarantine feed")?,
            reason: input.str("quarantine reason")?,
            origin: Origin::decode_compact(input)?,
        })
    }
}

impl Compact for QuarantineEntry {
    fn encode_compact(&self, out: &mut Output) {
        self.quarantined.encode_compact(out);
        out.opt_str(self.released.as_ref().map(SessionId::as_str));
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        let quarantined = Quarantined::decode_compact(input)?;
        let released = input
            .opt_str("released into")?
            .map(|stream| {
                SessionId::new(stream)
                    .map_err(|error| input.error("released into", error.to_string()))
            })
            .transpose()?;
        Ok(QuarantineEntry {
            quarantined,
            released,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compact::{from_compact, to_compact};

    fn entry() -> QuarantineEntry {
        QuarantineEntry::new(Quarantined {
            feed: "benji".into(),
            reason: "no session id".into(),
            origin: Origin::new("POST /v1/events/benji")
                .at("line 3")
                .with_param("external_user_id", "u1"),
        })
    }

    #[test]
    fn an_entry_is_released_once() {
        let mut entry = entry();
        assert!(entry.is_pending());
        assert_eq!(entry.version(), Version(1));
        let into = SessionId::new("s1").unwrap();
        entry
            .release(&Released {
                stream: into.clone(),
            })
            .unwrap();
        assert_eq!(entry.version(), Version(2));
        assert_eq!(
            entry.release(&Released {
                stream: into.clone()
            }),
            Err(QuarantineRejection::AlreadyReleased(into))
        );
    }

    #[test]
    fn a_quarantine_stream_takes_one_payload_then_one_release() {
        let into = SessionId::new("s1").unwrap();
        let release = Released { stream: into };
        let mut state = None;
        assert_eq!(
            apply_quarantine(&mut state, QuarantineEvent::Released(&release)),
            Err(QuarantineRejection::NothingToRelease)
        );
        let quarantined = entry().quarantined;
        apply_quarantine(&mut state, QuarantineEvent::Quarantined(&quarantined)).unwrap();
        assert_eq!(
            apply_quarantine(&mut state, QuarantineEvent::Quarantined(&quarantined)),
            Err(QuarantineRejection::AlreadyQuarantined)
        );
        apply_quarantine(&mut state, QuarantineEvent::Released(&release)).unwrap();
        assert!(!state.unwrap().is_pending());
    }

    #[test]
    fn origins_are_bounded_and_printable() {
        let long = "é".repeat(400);
        let mut origin = Origin::new(&long);
        assert!(origin.channel.len() <= MAX_ORIGIN_TEXT_BYTES);
        assert!(origin.channel.ends_with('…'));
        for index in 0..MAX_ORIGIN_PARAMS + 4 {
            origin = origin.with_param(&format!("p{index}"), "v");
        }
        assert_eq!(origin.params.len(), MAX_ORIGIN_PARAMS);
        assert_eq!(origin.param("p1"), Some("v"));
        let shown = Origin::new("POST /v1/events/benji")
            .at("line 2")
            .with_param("session_id", "s1")
            .to_string();
        assert_eq!(shown, "POST /v1/events/benji at line 2?session_id=s1");
    }

    #[test]
    fn entries_round_trip_and_every_truncation_is_an_error() {
        let mut released = entry();
        released
            .release(&Released {
                stream: SessionId::new("s1").unwrap(),
            })
            .unwrap();
        for state in [entry(), released] {
            let bytes = to_compact(&state);
            assert_eq!(from_compact::<QuarantineEntry>(&bytes).unwrap(), state);
            for cut in 0..bytes.len() {
                assert!(from_compact::<QuarantineEntry>(&bytes[..cut]).is_err());
            }
        }
    }
}
