//! What the log stores: events and snapshots, and their on-disk encoding.
//!
//! Every record is `[schema version: u8][crc32 of body: u32 BE][body]`. Schema 5 (the one this
//! build reads and writes) is a binary body with the canonical event in its compact form (see
//! `binary.rs`). Decoding checks the checksum and the schema: a record of another schema is an
//! error naming it, never misread (nothing has been released, so no older schema is read).

use std::borrow::Cow;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use linkflow_core::compact::Output;
pub use linkflow_core::DedupeKey;
use linkflow_core::{EventBody, Position, Provider, SessionId, Version};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::error::{CommitError, CorruptRecord};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u8 = 6;

/// The first byte of a **compacted** event's record (in place of the schema version): what
/// [`crate::EventStore::compact`] leaves of an event of a compacted stream, its place in the
/// log (stream, version, position, dedupe key, when it was stored, whether it was rejected)
/// without its content. Reads skip such records; the log's structure checks still see them.
pub const COMPACTED: u8 = 0x40;

/// Header bytes before the body: schema version and checksum.
const HEADER_LEN: usize = 5;

/// The largest encoded record accepted, in bytes. sled 0.34 writes a tree node whose image
/// exceeds 128 KiB to a separate blob file; a leaf holds up to 17 entries, so records under
/// 6 KiB keep nodes inline in the log file. Real provider payloads are well under 2 KiB; the
/// limit stops a pathological payload from degrading every neighbour's writes.
pub const MAX_RECORD_BYTES: usize = 6 * 1024;

/// The prefix of a sealed payload's JSON form: `"lf-sealed:` + URL-safe base64 of its bytes.
pub const SEALED_PREFIX: &str = "lf-sealed:";

/// A JSON text kept exactly as it was written (no re-serialization, so a payload's bytes, key
/// order and whitespace survive), or a sealed payload.
///
/// A text holds one valid JSON value: checked when it is made from outside
/// ([`RawJson::from_string`], deserializing), and taken as is by the record decoder, whose
/// records were checked when written and carry a checksum. Serializing re-reads it as a raw JSON
/// value, so a text that somehow is not JSON is a serialization error, never invalid output.
///
/// A sealed payload ([`RawJson::sealed`], the engine's encryption at rest) is opaque bytes,
/// stored as they are (a third smaller than as text); its JSON form is the string
/// [`SEALED_PREFIX`] + URL-safe base64 of the bytes, made when it is read. Cloning shares the
/// text or the bytes (the writer copies each delivery into its record).
#[derive(Debug, Clone)]
pub struct RawJson(Repr);

#[derive(Debug, Clone)]
enum Repr {
    Text(Arc<str>),
    Sealed(Arc<[u8]>),
}

impl RawJson {
    /// Checks that `text` is one JSON value and keeps it verbatim.
    pub fn from_string(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(|raw| RawJson(Repr::Text(Box::<str>::from(raw).into())))
    }

    /// A text read back from a record: checked when the record was written, so not parsed
    /// again (folding a stream never looks at the raw payload).
    pub(crate) fn from_stored(text: &str) -> Self {
        RawJson(Repr::Text(Arc::from(text)))
    }

    /// A sealed payload's bytes.
    pub fn sealed(bytes: Vec<u8>) -> Self {
        RawJson(Repr::Sealed(bytes.into()))
    }

    /// Serializes `value` compactly.
    pub fn from_serialize<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(value)
            .map(|raw| RawJson(Repr::Text(Box::<str>::from(raw).into())))
    }

    /// The JSON text (a sealed payload's is made here).
    pub fn get(&self) -> std::borrow::Cow<'_, str> {
        match &self.0 {
            Repr::Text(text) => std::borrow::Cow::Borrowed(text),
            Repr::Sealed(bytes) => {
                use base64::Engine as _;
                let mut out = String::with_capacity(sealed_json_len(bytes.len()));
                out.push('"');
                out.push_str(SEALED_PREFIX);
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
                out.push('"');
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// A sealed payload's bytes; `None` for a JSON text.
    pub fn sealed_bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            Repr::Text(_) => None,
            Repr::Sealed(bytes) => Some(bytes),
        }
    }

    /// The bytes it takes in a record.
    pub fn stored_len(&self) -> usize {
        match &self.0 {
            Repr::Text(text) => text.len(),
            Repr::Sealed(bytes) => bytes.len(),
        }
    }
}

/// The length of the JSON form of a sealed payload of `bytes` bytes.
fn sealed_json_len(bytes: usize) -> usize {
    2 + SEALED_PREFIX.len() + (bytes * 4).div_ceil(3)
}

impl Serialize for RawJson {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            Repr::Text(text) => {
                let raw: &RawValue =
                    serde_json::from_str(text).map_err(serde::ser::Error::custom)?;
                raw.serialize(serializer)
            }
            Repr::Sealed(_) => {
                let json = self.get();
                serializer.serialize_str(&json[1..json.len() - 1])
            }
        }
    }
}

impl<'de> Deserialize<'de> for RawJson {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Box::<RawValue>::deserialize(deserializer)
            .map(|raw| RawJson(Repr::Text(Box::<str>::from(raw).into())))
    }
}

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        match (&self.0, &other.0) {
            (Repr::Sealed(left), Repr::Sealed(right)) => left == right,
            _ => self.get() == other.get(),
        }
    }
}

/// An event on its way into the log: the canonical event plus what the log keeps about its
/// delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// The event's id: the provider's where it has one, else a UUID v7 minted on receipt.
    pub event_id: Uuid,
    /// Identifies this delivery; a second append with the same key writes nothing.
    pub dedupe_key: DedupeKey,
    /// The provider that sent it.
    pub provider: Provider,
    /// What the event says (a session event, an account event, a merchant update).
    pub body: EventBody,
    /// The event name as the provider sent it (`submit_credentials`, `onSuccess`,
    /// `AUTHENTICATED`), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_name: Option<String>,
    /// The payload exactly as delivered, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<RawJson>,
    /// When linkflow received it.
    pub received_at: DateTime<Utc>,
}

/// An event as the log holds it: every event a stream received, in arrival order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredEvent {
    /// The session stream it belongs to.
    pub stream: SessionId,
    /// Its version in the stream (1-based, gap-free): its arrival number.
    pub version: Version,
    /// Its position in the log of all streams (1-based, gap-free).
    pub position: Position,
    /// When the log stored it.
    pub stored_at: DateTime<Utc>,
    /// The stream's fold rejected it when it was stored (what its ingest outcome said; a later
    /// arrival may change the verdict, which the engine derives from the whole stream).
    #[serde(default)]
    pub rejected: bool,
    /// The event and its delivery data.
    pub data: NewEvent,
}

/// What is left of an event its stream's compaction removed ([`COMPACTED`]): its place in the
/// log and its dedupe key (a redelivery of it is still a duplicate), not what it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactedEvent {
    /// Its stream.
    pub stream: SessionId,
    /// Its version in the stream.
    pub version: Version,
    /// Its position in the log.
    pub position: Position,
    /// Its dedupe key.
    pub dedupe_key: DedupeKey,
    /// When the log stored it.
    pub stored_at: DateTime<Utc>,
    /// Its stream's fold had rejected it.
    pub rejected: bool,
}

impl CompactedEvent {
    /// What compaction keeps of `event`.
    pub fn of(event: &StoredEvent) -> Self {
        CompactedEvent {
            stream: event.stream.clone(),
            version: event.version,
            position: event.position,
            dedupe_key: event.data.dedupe_key,
            stored_at: event.stored_at,
            rejected: event.rejected,
        }
    }
}

/// An event record as the log holds it: whole, or compacted.
// Most records read are events, each moved out at once: boxing the event would add an
// allocation to every read for the sake of the rare compacted one.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum LogRecord {
    /// An event.
    Event(StoredEvent),
    /// What compaction left of one.
    Compacted(CompactedEvent),
}

impl LogRecord {
    /// Its stream.
    pub fn stream(&self) -> &SessionId {
        match self {
            LogRecord::Event(event) => &event.stream,
            LogRecord::Compacted(stub) => &stub.stream,
        }
    }

    /// Its version.
    pub fn version(&self) -> Version {
        match self {
            LogRecord::Event(event) => event.version,
            LogRecord::Compacted(stub) => stub.version,
        }
    }

    /// Its position.
    pub fn position(&self) -> Position {
        match self {
            LogRecord::Event(event) => event.position,
            LogRecord::Compacted(stub) => stub.position,
        }
    }

    /// Its dedupe key.
    pub fn dedupe_key(&self) -> DedupeKey {
        match self {
            LogRecord::Event(event) => event.data.dedupe_key,
            LogRecord::Compacted(stub) => stub.dedupe_key,
        }
    }

    /// The event, unless it was compacted.
    pub fn into_event(self) -> Option<StoredEvent> {
        match self {
            LogRecord::Event(event) => Some(event),
            LogRecord::Compacted(_) => None,
        }
    }
}

/// A session's folded state as of a version, so that reading a session never replays its whole
/// history. The state is opaque to the store: the engine encodes and decodes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The provider of the session.
    pub provider: Provider,
    /// The stream version the state includes.
    pub version: Version,
    /// The version the stream was compacted at ([`crate::EventStore::compact`];
    /// [`Version::EMPTY`]: never), as the state says. A commit whose snapshot says otherwise
    /// than the store is refused ([`crate::CommitError::CompactionConflict`]): it was decided on
    /// a state read before (or without) the compaction.
    pub compacted: Version,
    /// The encoded state, as the engine wrote it.
    pub state: Vec<u8>,
}

/// Slack for what the estimate does not count.
const SIZE_SLACK: usize = 256;

/// Fails with [`CommitError::TooLarge`] when `event` could not be stored in `stream`, so that a
/// writer can refuse one event instead of failing a whole group commit.
pub fn check_event_size(stream: &SessionId, event: &NewEvent) -> Result<(), CommitError> {
    // Fast path for session events: their strings are stored as their bytes plus a length,
    // and the fixed fields (ids, times, codes) take well under 1 KiB.
    if let EventBody::Session(session_event) = &event.body {
        if fits_fast(stream, event, session_event) {
            return Ok(());
        }
    }
    let bytes = HEADER_LEN + event_body_bound(stream, event);
    if bytes + SIZE_SLACK > MAX_RECORD_BYTES {
        return Err(CommitError::TooLarge {
            stream: stream.clone(),
            bytes,
            limit: MAX_RECORD_BYTES,
        });
    }
    Ok(())
}

/// The most bytes the body of `event`'s record in `stream` can take (its version and position
/// are not known yet, so they count at their largest).
fn event_body_bound(stream: &SessionId, event: &NewEvent) -> usize {
    let strings = [Some(stream.as_str()), event.raw_name.as_deref()];
    crate::binary::EVENT_FIXED_BYTES
        + strings
            .iter()
            .flatten()
            .map(|text| text.len())
            .sum::<usize>()
        + event.raw.as_ref().map_or(0, RawJson::stored_len)
        + linkflow_core::to_compact(&event.body).len()
}

/// True when a session event is certainly small enough, without serializing it.
fn fits_fast(stream: &SessionId, event: &NewEvent, session_event: &linkflow_core::Event) -> bool {
    let attributes = &session_event.attributes;
    // Every string of `Attributes`: a new attribute must be counted here too.
    let strings = [
        attributes.screen_name.as_deref(),
        attributes.search_term.as_deref(),
        attributes.external_user_id.as_deref(),
        attributes.exit_status.as_deref(),
        attributes.exit_step.as_deref(),
        attributes
            .institution
            .as_ref()
            .map(|institution| institution.id.as_str()),
        attributes
            .institution
            .as_ref()
            .and_then(|institution| institution.name.as_deref()),
        attributes
            .error
            .as_ref()
            .and_then(|error| error.id.as_deref()),
        attributes
            .error
            .as_ref()
            .and_then(|error| error.code.as_deref()),
        attributes
            .error
            .as_ref()
            .and_then(|error| error.message.as_deref()),
        attributes
            .error
            .as_ref()
            .and_then(|error| error.request_id.as_deref()),
        event.raw_name.as_deref(),
        Some(stream.as_str()),
    ];
    let text: usize = strings.iter().flatten().map(|text| text.len()).sum();
    let unrecognized = match &session_event.kind {
        linkflow_core::EventKind::Unrecognized { raw_name } => raw_name.len(),
        _ => 0,
    };
    let raw = event.raw.as_ref().map_or(0, RawJson::stored_len);
    text + unrecognized + raw + 1024 + SIZE_SLACK <= MAX_RECORD_BYTES
}

/// A record of `schema` around the body `write` appends, with its checksum.
fn seal(schema: u8, capacity: usize, write: impl FnOnce(&mut Output)) -> Vec<u8> {
    let mut out = Output::from(Vec::with_capacity(capacity));
    out.raw(&[schema, 0, 0, 0, 0]);
    write(&mut out);
    let mut out = out.into_bytes();
    let crc = crc32fast::hash(&out[HEADER_LEN..]);
    out[1..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    out
}

/// An event record.
pub fn encode_event(event: &StoredEvent) -> Vec<u8> {
    seal(SCHEMA_VERSION, 512, |out| {
        crate::binary::write_event(out, event)
    })
}

/// A compacted event's record.
pub fn encode_compacted(stub: &CompactedEvent) -> Vec<u8> {
    seal(COMPACTED, 64, |out| {
        crate::binary::write_compacted(out, stub)
    })
}

/// True when `record` (a whole record, not a packed value) is a compacted event's: its first
/// byte, checked without the checksum (the decoders check it).
pub fn is_compacted(record: &[u8]) -> bool {
    record.first() == Some(&COMPACTED)
}

/// A snapshot record.
pub fn encode_snapshot(snapshot: &Snapshot) -> Vec<u8> {
    seal(SCHEMA_VERSION, 512, |out| {
        crate::binary::write_snapshot(out, snapshot)
    })
}

/// The first byte of an event value that packs several records: consecutive events of one
/// stream written by one commit, under the key of the first (a record's first byte is its
/// schema version, below it). The format is in `binary.rs`.
pub const PACKED: u8 = 0x80;

/// The most bytes of records one packed value holds: with sled's 17 entries per leaf, leaves
/// stay under the size sled moves to a blob file (see [`MAX_RECORD_BYTES`]).
pub const MAX_PACKED_BYTES: usize = MAX_RECORD_BYTES;

/// One value holding `records` (at least two event records, each at least its 5-byte header,
/// consecutive versions of one stream, at most [`MAX_PACKED_BYTES`] together).
pub fn pack_events(records: &[&[u8]]) -> Vec<u8> {
    debug_assert!(
        records.len() >= 2,
        "a packed value holds two records or more"
    );
    crate::binary::write_packed(records)
}

/// The event records an event value holds: itself for a record, each record of a packed
/// value. Records are not decoded here (see [`decode_event_record`]).
pub fn event_records<'a>(key: &'a str, value: &'a [u8]) -> Result<Vec<&'a [u8]>, CorruptRecord> {
    match value.first() {
        Some(&PACKED) => crate::binary::read_packed(key, value),
        _ => Ok(vec![value]),
    }
}

/// How many events an event value holds, reading only the header of a packed one.
pub fn event_count(key: &str, value: &[u8]) -> Result<usize, CorruptRecord> {
    match value.first() {
        Some(&PACKED) => crate::binary::packed_count(key, value),
        _ => Ok(1),
    }
}

/// Checks the header and checksum; returns the schema version and the body.
fn open_record<'a>(key: &str, bytes: &'a [u8]) -> Result<(u8, &'a [u8]), CorruptRecord> {
    if bytes.len() < HEADER_LEN {
        return Err(CorruptRecord::new(
            key,
            format!("{} bytes is shorter than the 5-byte header", bytes.len()),
        ));
    }
    let schema = bytes[0];
    let stored_crc = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    let body = &bytes[HEADER_LEN..];
    let actual_crc = crc32fast::hash(body);
    if stored_crc != actual_crc {
        return Err(CorruptRecord::new(
            key,
            format!("checksum mismatch: stored {stored_crc:08x}, computed {actual_crc:08x}"),
        ));
    }
    Ok((schema, body))
}

/// Turns the body of a record of an older schema into the next schema's body: how a record
/// schema changes once a linkflow with stored data has been released. Nothing has been
/// released, so none is registered ([`UPCASTERS`] is empty) and a record of another schema is
/// refused; the mechanism is kept, with a test that proves it, for the first change after a
/// release.
pub(crate) struct Upcaster {
    /// The schema it reads.
    pub(crate) from: u8,
    /// The schema it writes.
    pub(crate) to: u8,
    /// The `to` body of a `from` body, or what is wrong with it.
    pub(crate) upcast: fn(&[u8]) -> Result<Vec<u8>, String>,
}

/// The upcasters of the schemas this build reads besides [`SCHEMA_VERSION`]: none.
pub(crate) const UPCASTERS: &[Upcaster] = &[];

/// Checks the header and the checksum; returns the body as the current schema's, upcast step
/// by step with `upcasters` from an older schema.
fn open_current<'a>(
    key: &str,
    bytes: &'a [u8],
    upcasters: &[Upcaster],
) -> Result<Cow<'a, [u8]>, CorruptRecord> {
    let (mut schema, body) = open_record(key, bytes)?;
    let mut body = Cow::Borrowed(body);
    // Each step moves to another schema; a chain longer than the table would be a loop.
    for _ in 0..=upcasters.len() {
        if schema == SCHEMA_VERSION {
            return Ok(body);
        }
        let Some(step) = upcasters.iter().find(|step| step.from == schema) else {
            break;
        };
        body = Cow::Owned((step.upcast)(&body).map_err(|reason| {
            CorruptRecord::new(
                key,
                format!("upcasting schema {schema} to {}: {reason}", step.to),
            )
        })?);
        schema = step.to;
    }
    Err(CorruptRecord::new(
        key,
        format!(
            "schema version {schema}; this build reads schema {SCHEMA_VERSION} only (a record of another linkflow)"
        ),
    ))
}

/// Decodes an event record.
pub fn decode_event_record(key: &str, bytes: &[u8]) -> Result<StoredEvent, CorruptRecord> {
    decode_event_with(key, bytes, UPCASTERS)
}

fn decode_event_with(
    key: &str,
    bytes: &[u8],
    upcasters: &[Upcaster],
) -> Result<StoredEvent, CorruptRecord> {
    let body = open_current(key, bytes, upcasters)?;
    crate::binary::read_event(key, &body)
}

/// Decodes an event record, whole or compacted.
pub fn decode_log_record(key: &str, bytes: &[u8]) -> Result<LogRecord, CorruptRecord> {
    if is_compacted(bytes) {
        let (_, body) = open_record(key, bytes)?;
        return crate::binary::read_compacted(key, body).map(LogRecord::Compacted);
    }
    decode_event_record(key, bytes).map(LogRecord::Event)
}

/// Decodes a snapshot record.
pub fn decode_snapshot_record(key: &str, bytes: &[u8]) -> Result<Snapshot, CorruptRecord> {
    let body = open_current(key, bytes, UPCASTERS)?;
    crate::binary::read_snapshot(key, &body)
}

#[cfg(test)]
mod tests {

    /// The upcaster mechanism, proved with a made-up older schema: schema N - 1 is schema N without
    /// the rejected flag, its first byte (every event accepted). Its record is refused without
    /// the upcaster and read as the current schema's with it.
    #[test]
    fn an_upcaster_reads_a_record_of_an_older_schema_as_the_current_one() {
        // The schema before this one, as a test shape: the body without its first byte.
        const OLD: u8 = SCHEMA_VERSION - 1;
        fn upcast_old(body: &[u8]) -> Result<Vec<u8>, String> {
            if body.is_empty() {
                return Err("an empty body".into());
            }
            Ok([&[0][..], body].concat())
        }
        let mut event = sample(true);
        event.rejected = false;
        let current = encode_event(&event);
        let body = &current[HEADER_LEN..];
        assert_eq!(body[0], 0, "the sample is accepted");
        let old = seal(OLD, current.len(), |out| out.raw(&body[1..]));
        let refused = decode_event_record("old", &old).unwrap_err();
        assert!(
            refused.reason.contains(&format!("schema version {OLD}")),
            "{refused}"
        );
        let upcasters = [Upcaster {
            from: OLD,
            to: SCHEMA_VERSION,
            upcast: upcast_old,
        }];
        assert_eq!(decode_event_with("old", &old, &upcasters).unwrap(), event);
        // A body the upcaster cannot read is damage naming the step.
        let empty = seal(OLD, 8, |_| {});
        let error = decode_event_with("empty", &empty, &upcasters).unwrap_err();
        assert!(
            error
                .reason
                .contains(&format!("upcasting schema {OLD} to {SCHEMA_VERSION}")),
            "{error}"
        );
    }
    use super::*;

    #[test]
    fn a_flipped_bit_is_a_checksum_error_naming_the_record() {
        let mut bytes = encode_snapshot(&Snapshot {
            compacted: Version::EMPTY,
            provider: Provider::Benji,
            version: Version(1),
            state: vec![1, 2, 3],
        });
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let error = decode_snapshot_record("snapshot of `s1`", &bytes).unwrap_err();
        assert!(error.to_string().contains("snapshot of `s1`"), "{error}");
        assert!(error.to_string().contains("checksum mismatch"), "{error}");
    }

    #[test]
    fn raw_payloads_are_checked_on_the_way_in_and_a_bad_stored_one_fails_to_serialize() {
        assert!(RawJson::from_string("{nope".into()).is_err());
        let good = RawJson::from_string("{ \"a\" : [1, 2] }".into()).unwrap();
        assert_eq!(serde_json::to_string(&good).unwrap(), "{ \"a\" : [1, 2] }");
        let back: RawJson = serde_json::from_str("{ \"a\" : [1, 2] }").unwrap();
        assert_eq!(back, good);
        assert!(serde_json::from_str::<RawJson>("{nope").is_err());
        let bad = RawJson::from_stored("{nope");
        assert!(serde_json::to_string(&bad).is_err());
    }

    #[test]
    fn other_schema_versions_and_short_records_are_errors() {
        for schema in [1, 2, 3, 4, 9] {
            let mut bytes = encode_event(&sample(true));
            bytes[0] = schema;
            let error = decode_event_record("event s1@1", &bytes).unwrap_err();
            assert!(
                error
                    .to_string()
                    .contains(&format!("schema version {schema}")),
                "{error}"
            );
        }
        assert!(decode_event_record("event s1@1", &[SCHEMA_VERSION, 2]).is_err());
    }

    fn sample(raw: bool) -> StoredEvent {
        use chrono::TimeZone;
        let body = EventBody::Session(
            linkflow_core::Event::new(linkflow_core::EventKind::InstitutionSelected)
                .at(Utc.timestamp_opt(1_700_000_000, 123_456_789).unwrap())
                .with_institution("ins_1", Some("Bank \"quoted\" \u{e9}")),
        );
        StoredEvent {
            stream: SessionId::new("sess-\u{e9}-1").unwrap(),
            version: Version(7),
            position: Position(1_234_567),
            stored_at: Utc.timestamp_opt(1_700_000_001, 5).unwrap(),
            rejected: true,
            data: NewEvent {
                event_id: Uuid::now_v7(),
                dedupe_key: DedupeKey::derive(&[b"sample"]),
                provider: Provider::Knot,
                body,
                raw_name: raw.then(|| "AUTHENTICATED".to_owned()),
                raw: raw.then(|| {
                    RawJson::from_string(
                        "{ \"event\" : \"AUTHENTICATED\",\n \"n\": [1, 2] }".into(),
                    )
                    .unwrap()
                }),
                received_at: Utc.timestamp_opt(-5, 999_999_999).unwrap(),
            },
        }
    }

    #[test]
    fn records_round_trip_and_the_size_check_bounds_their_bytes() {
        for raw in [true, false] {
            let event = sample(raw);
            let bytes = encode_event(&event);
            assert_eq!(bytes[0], SCHEMA_VERSION);
            assert_eq!(decode_event_record("e", &bytes).unwrap(), event);
            assert!(
                check_event_size_len(&event) >= bytes.len(),
                "the size check counts at least what encode writes"
            );
        }
        let snapshot = Snapshot {
            compacted: Version::EMPTY,
            provider: Provider::Benji,
            version: Version(u64::MAX),
            state: vec![2, 0, 255, 7],
        };
        assert_eq!(
            decode_snapshot_record("n", &encode_snapshot(&snapshot)).unwrap(),
            snapshot
        );
    }

    /// The size `check_event_size` computes for an event record.
    fn check_event_size_len(event: &StoredEvent) -> usize {
        HEADER_LEN + event_body_bound(&event.stream, &event.data)
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// A record with every kind of field, its ids and times fixed.
    fn golden() -> StoredEvent {
        use chrono::TimeZone;
        StoredEvent {
            stream: SessionId::new("mk_sess_1").unwrap(),
            version: Version(3),
            position: Position(42),
            stored_at: Utc.timestamp_opt(1_700_000_001, 5_000).unwrap(),
            rejected: false,
            data: NewEvent {
                event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0001),
                dedupe_key: DedupeKey::derive(&[b"golden"]),
                provider: Provider::Moneykit,
                body: EventBody::Session(
                    linkflow_core::Event::new(linkflow_core::EventKind::InstitutionSelected)
                        .at(Utc.timestamp_opt(1_700_000_000, 353_000_000).unwrap())
                        .with_institution("ins_1", Some("Bank")),
                ),
                raw_name: Some("select_institution".into()),
                raw: Some(
                    RawJson::from_string("{\"event\":\"select_institution\"}".into()).unwrap(),
                ),
                received_at: Utc.timestamp_opt(1_700_000_001, 0).unwrap(),
            },
        }
    }

    /// The bytes schema 6 gives [`golden`]. A change here means stored records would change
    /// meaning: that is a new schema (and, once linkflow is released, a reader for this one).
    const GOLDEN: &str = "06c276f09b00096d6b5f736573735f31032a019000000000700080000000000000018d199e37254f0dcc491fa9462ad4d6cc008488bfaa191373656c6563745f696e737469747574696f6e3d7b226576656e74223a2273656c6563745f696e737469747574696f6e227d190002018188bfaa19c0b4a9a8010205696e735f310542616e6b018827";

    #[test]
    fn packed_values_are_pinned_and_a_record_is_its_own_value() {
        let (first, second) = (vec![3u8, 1, 2], vec![9u8; 130]);
        let packed = pack_events(&[&first, &second]);
        // PACKED, count 2, length 3, the first record, length 130 (varint 0x82 0x01), the second.
        let mut pinned = vec![0x80, 2, 3, 3, 1, 2, 0x82, 0x01];
        pinned.extend_from_slice(&second);
        assert_eq!(packed, pinned);
        assert_eq!(
            event_records("k", &packed).unwrap(),
            [&first[..], &second[..]]
        );
        assert_eq!(event_count("k", &packed).unwrap(), 2);
        let record = encode_event(&golden());
        assert_eq!(event_records("k", &record).unwrap(), [&record[..]]);
        assert_eq!(event_count("k", &record).unwrap(), 1);
        for cut in 1..packed.len() {
            assert!(event_records("k", &packed[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn a_sealed_payload_is_stored_as_its_bytes_and_reads_as_its_token() {
        let mut event = golden();
        let sealed: Vec<u8> = (0..=255u8).chain(0..40).collect();
        event.data.raw = Some(RawJson::sealed(sealed.clone()));
        let record = encode_event(&event);
        let text = encode_event(&golden());
        let text_len = golden().data.raw.unwrap().get().len();
        // The bytes as they are, not their base64.
        assert_eq!(record.len() - text.len(), sealed.len() - text_len + 1);
        let read = decode_event_record("e", &record).unwrap();
        assert_eq!(read, event);
        let raw = read.data.raw.unwrap();
        assert_eq!(raw.sealed_bytes(), Some(&sealed[..]));
        assert_eq!(raw.stored_len(), sealed.len());
        let json = serde_json::to_value(&raw).unwrap();
        let token = json.as_str().unwrap();
        use base64::Engine as _;
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token.strip_prefix(SEALED_PREFIX).unwrap())
                .unwrap(),
            sealed
        );
        assert_eq!(raw.get(), format!("\"{token}\""));
        // A record cut inside the sealed bytes is damage, not a shorter payload.
        for cut in [record.len() - 10, record.len() - 200] {
            let mut cut_record = record[..cut].to_vec();
            let checksum = crc32fast::hash(&cut_record[HEADER_LEN..]);
            cut_record[1..HEADER_LEN].copy_from_slice(&checksum.to_be_bytes());
            assert!(
                decode_event_record("e", &cut_record).is_err(),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn the_record_bytes_are_pinned_and_read() {
        let event = golden();
        assert_eq!(hex(&encode_event(&event)), GOLDEN);
        let bytes: Vec<u8> = (0..GOLDEN.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&GOLDEN[at..at + 2], 16).unwrap())
            .collect();
        assert_eq!(decode_event_record("e", &bytes).unwrap(), event);
    }

    /// A body cut short anywhere, or with a byte changed (checksum recomputed, as if written that
    /// way), is an error naming the record, never a panic.
    #[test]
    fn every_truncated_or_altered_body_is_an_error_not_a_panic() {
        let bytes = encode_event(&sample(true));
        let body = &bytes[HEADER_LEN..];
        let reseal =
            |body: &[u8]| seal(SCHEMA_VERSION, body.len() + HEADER_LEN, |out| out.raw(body));
        for len in 0..body.len() {
            let error = decode_event_record("event s@7", &reseal(&body[..len])).unwrap_err();
            assert!(error.to_string().contains("event s@7"), "{error}");
        }
        for index in 0..body.len() {
            for value in [0x00, 0x7f, 0x80, 0xff] {
                let mut altered = body.to_vec();
                altered[index] = value;
                let _ = decode_event_record("event s@7", &reseal(&altered));
                let _ = decode_snapshot_record("snapshot", &reseal(&altered));
            }
        }
        let mut longer = body.to_vec();
        longer.push(0);
        let error = decode_event_record("e", &reseal(&longer)).unwrap_err();
        assert!(error.to_string().contains("left over"), "{error}");
    }

    proptest::proptest! {
        /// Every session event the core's strategies make survives its record unchanged, and
        /// the size check counts at least its bytes.
        #[test]
        fn any_session_event_round_trips(
            event in proptest::prop_oneof![
                linkflow_core::strategy::telemetry_event(),
                linkflow_core::strategy::unrecognized_event(),
            ],
            raw_name in proptest::option::of("\\PC{0,40}"),
            version in proptest::prelude::any::<u64>(),
        ) {
            let mut stored = sample(true);
            stored.version = Version(version);
            stored.data.body = EventBody::Session(event);
            stored.data.raw_name = raw_name;
            let bytes = encode_event(&stored);
            proptest::prop_assert_eq!(decode_event_record("e", &bytes).unwrap(), stored.clone());
            proptest::prop_assert!(check_event_size_len(&stored) >= bytes.len());
        }

        /// Packing any records and splitting them again gives them back; any bytes after the
        /// packed tag are records or an error, never a panic.
        #[test]
        fn packed_values_round_trip_and_never_panic(
            records in proptest::collection::vec(
                // A record is at least its 5-byte header.
                proptest::collection::vec(proptest::prelude::any::<u8>(), 5..300),
                2..20,
            ),
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
        ) {
            let slices: Vec<&[u8]> = records.iter().map(Vec::as_slice).collect();
            let packed = pack_events(&slices);
            proptest::prop_assert_eq!(event_records("k", &packed).unwrap(), slices);
            proptest::prop_assert_eq!(event_count("k", &packed).unwrap(), records.len());
            let mut damaged = vec![PACKED];
            damaged.extend_from_slice(&noise);
            let _ = event_records("k", &damaged);
            let _ = event_count("k", &damaged);
        }
    }
}
