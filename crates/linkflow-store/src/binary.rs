//! Record bodies (schema 6), in the core's compact form (`linkflow_core::compact`): integers
//! as varints, ids as their 16 bytes, strings and the raw payload length-prefixed and verbatim,
//! and the canonical event as its own compact form (`EventBody`'s, its bytes pinned by a test
//! in `record.rs`).
//!
//! ```text
//! event     = u8(rejected) str(stream) varint(version) varint(position) new_event
//!             time(stored_at, from received_at)
//! new_event = [16](event id) [16](dedupe key) provider time(received_at, from the epoch)
//!             opt_str(raw name) raw(raw payload) bytes(compact EventBody)
//! raw       = varint(0) | varint(2 * len + 1) [len](JSON text) | varint(2 * len + 2) [len](sealed)
//! snapshot  = provider varint(version) varint(compacted at, 0: never) bytes(state, opaque
//!             to the store)
//! packed    = u8(PACKED) varint(count >= 2) bytes(record) per record
//! compacted = u8(rejected) str(stream) varint(version) varint(position) [16](dedupe key)
//!             time(stored_at, from the epoch)
//! ```
//!
//! A compacted event's record has the same header with [`crate::record::COMPACTED`] in
//! place of the schema version.
//!
//! No field names, no hex or text forms of ids and times, no escaping of the raw payload: ~30
//! bytes of canonical event for the bench workload's average event (178 as JSON).

use linkflow_core::compact::{Input, Output};
use linkflow_core::{
    from_compact, Compact, CompactError, DedupeKey, Position, Provider, SessionId, Version,
};
use uuid::Uuid;

use crate::error::CorruptRecord;
use crate::record::{CompactedEvent, NewEvent, RawJson, Snapshot, StoredEvent, PACKED};

/// The most bytes an event record's body takes besides its strings and canonical event (each
/// varint at most 10 bytes, a time at most 15): what the size check adds to them.
pub(crate) const EVENT_FIXED_BYTES: usize = 1 + 10 + 10 + 16 + 16 + 1 + 15 + 15 + 6 * 10;

pub(crate) fn write_event(out: &mut Output, event: &StoredEvent) {
    out.u8(u8::from(event.rejected));
    out.str(event.stream.as_str());
    out.varint(event.version.0);
    out.varint(event.position.0);
    let data = &event.data;
    out.raw(data.event_id.as_bytes());
    out.raw(data.dedupe_key.as_bytes());
    data.provider.encode_compact(out);
    out.time(data.received_at, 0);
    out.opt_str(data.raw_name.as_deref());
    write_raw(out, data.raw.as_ref());
    // Its length prefix comes first, so the body is encoded aside.
    out.bytes(&linkflow_core::to_compact(&data.body));
    out.time(event.stored_at, data.received_at.timestamp());
}

/// The raw payload: `varint(0)` none, `varint(2 * len + 1)` then a JSON text of `len` bytes,
/// or `varint(2 * len + 2)` then a sealed payload's `len` bytes.
fn write_raw(out: &mut Output, raw: Option<&RawJson>) {
    match raw {
        None => out.varint(0),
        Some(raw) => match raw.sealed_bytes() {
            Some(bytes) => {
                out.varint(2 * bytes.len() as u64 + 2);
                out.raw(bytes);
            }
            None => {
                let text = raw.get();
                out.varint(2 * text.len() as u64 + 1);
                out.raw(text.as_bytes());
            }
        },
    }
}

fn read_raw(input: &mut Input<'_>) -> Result<Option<RawJson>, CompactError> {
    const WHAT: &str = "raw payload";
    let tag = input.varint(WHAT)?;
    if tag == 0 {
        return Ok(None);
    }
    let len = usize::try_from((tag - 1) / 2)
        .map_err(|_| input.error(WHAT, "length exceeds the address space"))?;
    if tag % 2 == 1 {
        // UTF-8 is checked here; the JSON was when the record was written.
        Ok(Some(RawJson::from_stored(input.utf8(WHAT, len)?)))
    } else {
        Ok(Some(RawJson::sealed(input.take(WHAT, len)?.to_vec())))
    }
}

pub(crate) fn write_snapshot(out: &mut Output, snapshot: &Snapshot) {
    snapshot.provider.encode_compact(out);
    out.varint(snapshot.version.0);
    out.varint(snapshot.compacted.0);
    out.bytes(&snapshot.state);
}

fn corrupt(key: &str, part: &str, error: CompactError) -> CorruptRecord {
    CorruptRecord::new(key, format!("{part}: {error}"))
}

/// Reads the whole of `bytes` (the `part` of what `key` names: a record's body, a value) with
/// `read`; a failure names the key, the part, the field and the byte.
pub(crate) fn read_whole<T>(
    key: &str,
    part: &str,
    bytes: &[u8],
    read: impl FnOnce(&mut Input<'_>) -> Result<T, CompactError>,
) -> Result<T, CorruptRecord> {
    let mut input = Input::new(bytes);
    read(&mut input)
        .and_then(|value| input.finish().map(|()| value))
        .map_err(|error| corrupt(key, part, error))
}

pub(crate) fn read_event(key: &str, body: &[u8]) -> Result<StoredEvent, CorruptRecord> {
    read_whole(key, "body", body, |input| {
        let rejected = input.present("rejected")?;
        let stream = input.str("stream")?;
        let stream =
            SessionId::new(stream).map_err(|error| input.error("stream", error.to_string()))?;
        let version = Version(input.varint("version")?);
        let position = Position(input.varint("position")?);
        let event_id = Uuid::from_bytes(input.array("event id")?);
        let dedupe_key = DedupeKey::from_bytes(input.array("dedupe key")?);
        let provider = Provider::decode_compact(input)?;
        let received_at = input.time("received_at", 0)?;
        let raw_name = input.opt_str("raw name")?;
        let raw = read_raw(input)?;
        let body = input.bytes("event body")?;
        let body =
            from_compact(body).map_err(|error| input.error("event body", error.to_string()))?;
        let stored_at = input.time("stored_at", received_at.timestamp())?;
        Ok(StoredEvent {
            stream,
            version,
            position,
            stored_at,
            rejected,
            data: NewEvent {
                event_id,
                dedupe_key,
                provider,
                body,
                raw_name,
                raw,
                received_at,
            },
        })
    })
}

pub(crate) fn write_compacted(out: &mut Output, stub: &CompactedEvent) {
    out.u8(u8::from(stub.rejected));
    out.str(stub.stream.as_str());
    out.varint(stub.version.0);
    out.varint(stub.position.0);
    out.raw(stub.dedupe_key.as_bytes());
    out.time(stub.stored_at, 0);
}

pub(crate) fn read_compacted(key: &str, body: &[u8]) -> Result<CompactedEvent, CorruptRecord> {
    read_whole(key, "compacted body", body, |input| {
        let rejected = input.present("rejected")?;
        let stream = input.str("stream")?;
        let stream =
            SessionId::new(stream).map_err(|error| input.error("stream", error.to_string()))?;
        Ok(CompactedEvent {
            rejected,
            stream,
            version: Version(input.varint("version")?),
            position: Position(input.varint("position")?),
            dedupe_key: DedupeKey::from_bytes(input.array("dedupe key")?),
            stored_at: input.time("stored_at", 0)?,
        })
    })
}

pub(crate) fn read_snapshot(key: &str, body: &[u8]) -> Result<Snapshot, CorruptRecord> {
    read_whole(key, "body", body, |input| {
        let provider = Provider::decode_compact(input)?;
        let version = Version(input.varint("version")?);
        let compacted = Version(input.varint("compacted at")?);
        if compacted > version {
            return Err(input.error(
                "compacted at",
                format!("version {compacted}, after the snapshot's {version}"),
            ));
        }
        Ok(Snapshot {
            provider,
            version,
            compacted,
            state: input.bytes("state")?.to_vec(),
        })
    })
}

/// Several consecutive event records of one stream as one value, each record whole (its own
/// header and checksum).
pub(crate) fn write_packed(records: &[&[u8]]) -> Vec<u8> {
    let bytes: usize = records.iter().map(|record| record.len() + 2).sum();
    let mut out = Output::from(Vec::with_capacity(bytes + 3));
    out.u8(PACKED);
    out.varint(records.len() as u64);
    for record in records {
        out.bytes(record);
    }
    out.into_bytes()
}

/// A packed value's record count (at least two), read past its first byte.
fn packed_header(input: &mut Input<'_>) -> Result<usize, CompactError> {
    input.u8("packed marker")?;
    match input.count("packed record count")? {
        count @ 2.. => Ok(count),
        count => Err(input.error("packed record count", format!("{count} is fewer than 2"))),
    }
}

/// The records of a packed value, filling it exactly.
pub(crate) fn read_packed<'a>(key: &str, value: &'a [u8]) -> Result<Vec<&'a [u8]>, CorruptRecord> {
    let mut input = Input::new(value);
    packed_header(&mut input)
        .and_then(|count| {
            (0..count)
                .map(|_| input.bytes("packed record"))
                .collect::<Result<Vec<_>, _>>()
        })
        .and_then(|records| input.finish().map(|()| records))
        .map_err(|error| corrupt(key, "packed value", error))
}

/// How many records a packed value holds, from its header alone.
pub(crate) fn packed_count(key: &str, value: &[u8]) -> Result<usize, CorruptRecord> {
    packed_header(&mut Input::new(value)).map_err(|error| corrupt(key, "packed value", error))
}
