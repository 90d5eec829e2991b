//! Record bodies (schema 4): fixed-width fields in binary, strings length-prefixed, the raw
//! payload as its verbatim bytes, and the canonical event in the core's compact form
//! (`linkflow_core::EventBody`'s `Compact` impl, its bytes pinned by a test here).
//!
//! ```text
//! event    = str(stream) u64(version) u64(position) time(stored_at) u8(rejected) new_event
//! snapshot = u8(provider) u64(version) str(state bytes, opaque to the store)
//! new_event = [16](event id) [16](dedupe key) u8(provider) time(received_at)
//!             opt(str(raw name)) opt(str(raw payload)) str(compact EventBody)
//! str  = varint(length) bytes            opt(x) = u8(0) | u8(1) x
//! time = i64(seconds since the epoch) u32(nanoseconds)     integers big-endian
//! ```
//!
//! No field names, no hex or text forms of ids and times, no escaping of the raw payload: ~30
//! bytes of canonical event for the bench workload's average event (178 as JSON).

use chrono::{DateTime, Utc};
use linkflow_core::compact::{put_varint, take_varint, VARINT_ERROR};
use linkflow_core::{from_compact, DedupeKey, EventBody, Position, Provider, SessionId, Version};
use uuid::Uuid;

use crate::error::CorruptRecord;
use crate::record::{NewEvent, RawJson, Snapshot, StoredEvent};

fn provider_byte(provider: Provider) -> u8 {
    match provider {
        Provider::Moneykit => 1,
        Provider::Benji => 2,
        Provider::Knot => 3,
    }
}

/// Appends record fields to a buffer.
pub(crate) struct Writer<'a> {
    out: &'a mut Vec<u8>,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(out: &'a mut Vec<u8>) -> Self {
        Writer { out }
    }

    fn u8(&mut self, value: u8) {
        self.out.push(value);
    }

    fn u64(&mut self, value: u64) {
        self.out.extend_from_slice(&value.to_be_bytes());
    }

    fn varint(&mut self, value: usize) {
        put_varint(self.out, value as u64);
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len());
        self.out.extend_from_slice(bytes);
    }

    fn time(&mut self, time: &DateTime<Utc>) {
        self.out.extend_from_slice(&time.timestamp().to_be_bytes());
        self.out
            .extend_from_slice(&time.timestamp_subsec_nanos().to_be_bytes());
    }

    fn opt_str(&mut self, text: Option<&str>) {
        match text {
            None => self.u8(0),
            Some(text) => {
                self.u8(1);
                self.bytes(text.as_bytes());
            }
        }
    }

    fn new_event(&mut self, event: &NewEvent) {
        self.out.extend_from_slice(event.event_id.as_bytes());
        self.out.extend_from_slice(event.dedupe_key.as_bytes());
        self.u8(provider_byte(event.provider));
        self.time(&event.received_at);
        self.opt_str(event.raw_name.as_deref());
        self.opt_str(event.raw.as_ref().map(RawJson::get));
        // Its length prefix comes first, so the body is encoded aside.
        self.bytes(&linkflow_core::to_compact(&event.body));
    }

    pub(crate) fn event(&mut self, event: &StoredEvent) {
        self.bytes(event.stream.as_str().as_bytes());
        self.u64(event.version.0);
        self.u64(event.position.0);
        self.time(&event.stored_at);
        self.u8(u8::from(event.rejected));
        self.new_event(&event.data);
    }

    pub(crate) fn snapshot(&mut self, snapshot: &Snapshot) {
        self.u8(provider_byte(snapshot.provider));
        self.u64(snapshot.version.0);
        self.bytes(&snapshot.state);
    }
}

/// Several consecutive event records of one stream as one value: `u8(PACKED) varint(count)`
/// then `str(record)` per record, each record whole (its own header and checksum).
pub(crate) fn write_packed(records: &[&[u8]]) -> Vec<u8> {
    let bytes: usize = records.iter().map(|record| record.len() + 2).sum();
    let mut out = Vec::with_capacity(bytes + 3);
    out.push(crate::record::PACKED);
    let mut writer = Writer::new(&mut out);
    writer.varint(records.len());
    for record in records {
        writer.bytes(record);
    }
    out
}

/// The records of a packed value (its first byte is `PACKED`): at least two, filling it
/// exactly.
pub(crate) fn read_packed<'a>(
    key: &'a str,
    value: &'a [u8],
) -> Result<Vec<&'a [u8]>, CorruptRecord> {
    let mut reader = Reader::new(key, value.get(1..).unwrap_or(&[]));
    let count = reader.varint("packed record count")?;
    if count < 2 {
        return Err(reader.error("packed record count", format!("{count} is fewer than 2")));
    }
    // Each record takes at least its length byte and header: a count beyond that is damage,
    // not a reason to reserve memory.
    if count > value.len() / 6 {
        return Err(reader.error(
            "packed record count",
            format!("{count} records cannot fit in {} bytes", value.len()),
        ));
    }
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let len = reader.varint("packed record length")?;
        records.push(reader.take("packed record", len)?);
    }
    if reader.at != reader.bytes.len() {
        return Err(reader.error(
            "packed value",
            format!(
                "{} bytes after the last record",
                reader.bytes.len() - reader.at
            ),
        ));
    }
    Ok(records)
}

/// How many records a packed value holds, from its header alone.
pub(crate) fn packed_count(key: &str, value: &[u8]) -> Result<usize, CorruptRecord> {
    let mut reader = Reader::new(key, value.get(1..).unwrap_or(&[]));
    match reader.varint("packed record count")? {
        count @ 2.. => Ok(count),
        count => Err(reader.error("packed record count", format!("{count} is fewer than 2"))),
    }
}

/// Reads record fields; every failure names the record and the field.
pub(crate) struct Reader<'a> {
    key: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(key: &'a str, bytes: &'a [u8]) -> Self {
        Reader { key, bytes, at: 0 }
    }

    fn error(&self, what: &str, reason: impl std::fmt::Display) -> CorruptRecord {
        CorruptRecord::new(
            self.key,
            format!("{what} at body byte {}: {reason}", self.at),
        )
    }

    fn take(&mut self, what: &str, len: usize) -> Result<&'a [u8], CorruptRecord> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                self.error(
                    what,
                    format!("needs {len} bytes, {} left", self.bytes.len() - self.at),
                )
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CorruptRecord> {
        let mut array = [0u8; N];
        array.copy_from_slice(self.take(what, N)?);
        Ok(array)
    }

    fn u8(&mut self, what: &str) -> Result<u8, CorruptRecord> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u64(&mut self, what: &str) -> Result<u64, CorruptRecord> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn flag(&mut self, what: &str) -> Result<bool, CorruptRecord> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(what, format!("flag byte {other} is neither 0 nor 1"))),
        }
    }

    fn varint(&mut self, what: &str) -> Result<usize, CorruptRecord> {
        let mut rest = &self.bytes[self.at..];
        let value = take_varint(&mut rest)
            .and_then(|value| usize::try_from(value).ok())
            .ok_or_else(|| self.error(what, VARINT_ERROR))?;
        self.at = self.bytes.len() - rest.len();
        Ok(value)
    }

    fn bytes(&mut self, what: &str) -> Result<&'a [u8], CorruptRecord> {
        let len = self.varint(what)?;
        self.take(what, len)
    }

    fn string(&mut self, what: &str) -> Result<String, CorruptRecord> {
        let bytes = self.bytes(what)?;
        String::from_utf8(bytes.to_vec()).map_err(|error| self.error(what, error))
    }

    fn time(&mut self, what: &str) -> Result<DateTime<Utc>, CorruptRecord> {
        let seconds = i64::from_be_bytes(self.array(what)?);
        let nanos = u32::from_be_bytes(self.array(what)?);
        DateTime::from_timestamp(seconds, nanos)
            .ok_or_else(|| self.error(what, format!("{seconds}s {nanos}ns is out of range")))
    }

    fn provider(&mut self, what: &str) -> Result<Provider, CorruptRecord> {
        match self.u8(what)? {
            1 => Ok(Provider::Moneykit),
            2 => Ok(Provider::Benji),
            3 => Ok(Provider::Knot),
            other => Err(self.error(what, format!("unknown provider code {other}"))),
        }
    }

    fn session(&mut self, what: &str) -> Result<SessionId, CorruptRecord> {
        let text = self.string(what)?;
        SessionId::new(text).map_err(|error| self.error(what, error))
    }

    /// The raw payload: UTF-8 is checked, the JSON was when the record was written.
    fn raw_json(&mut self, what: &str) -> Result<RawJson, CorruptRecord> {
        let bytes = self.bytes(what)?;
        std::str::from_utf8(bytes)
            .map(RawJson::from_stored)
            .map_err(|error| self.error(what, error))
    }

    fn new_event(&mut self) -> Result<NewEvent, CorruptRecord> {
        let event_id = Uuid::from_bytes(self.array("event id")?);
        let dedupe_key = DedupeKey::from_bytes(self.array("dedupe key")?);
        let provider = self.provider("provider")?;
        let received_at = self.time("received_at")?;
        let raw_name = if self.flag("raw name")? {
            Some(self.string("raw name")?)
        } else {
            None
        };
        let raw = if self.flag("raw payload")? {
            Some(self.raw_json("raw payload")?)
        } else {
            None
        };
        let body_bytes = self.bytes("event body")?;
        let body: EventBody =
            from_compact(body_bytes).map_err(|error| self.error("event body", error))?;
        Ok(NewEvent {
            event_id,
            dedupe_key,
            provider,
            body,
            raw_name,
            raw,
            received_at,
        })
    }

    fn end<T>(&self, value: T) -> Result<T, CorruptRecord> {
        if self.at == self.bytes.len() {
            Ok(value)
        } else {
            Err(self.error(
                "end of record",
                format!("{} bytes left over", self.bytes.len() - self.at),
            ))
        }
    }

    pub(crate) fn event(mut self) -> Result<StoredEvent, CorruptRecord> {
        let stream = self.session("stream")?;
        let version = Version(self.u64("version")?);
        let position = Position(self.u64("position")?);
        let stored_at = self.time("stored_at")?;
        let rejected = self.flag("rejected")?;
        let data = self.new_event()?;
        self.end(StoredEvent {
            stream,
            version,
            position,
            stored_at,
            rejected,
            data,
        })
    }

    pub(crate) fn snapshot(mut self) -> Result<Snapshot, CorruptRecord> {
        let provider = self.provider("provider")?;
        let version = Version(self.u64("version")?);
        let state = self.bytes("state")?.to_vec();
        self.end(Snapshot {
            provider,
            version,
            state,
        })
    }
}

/// The exact size of an event record's body for `event` in `stream` whose canonical event
/// takes `body` bytes (the version and position are fixed-width, so they do not change it).
pub(crate) fn event_body_len(stream: &SessionId, event: &NewEvent, body: usize) -> usize {
    fn str_len(len: usize) -> usize {
        let mut prefix = 1;
        let mut rest = len >> 7;
        while rest > 0 {
            prefix += 1;
            rest >>= 7;
        }
        prefix + len
    }
    str_len(stream.as_str().len())
        + 8
        + 8
        + 12
        + 1
        + 16
        + 16
        + 1
        + 12
        + 1
        + event
            .raw_name
            .as_deref()
            .map_or(0, |name| str_len(name.len()))
        + 1
        + event.raw.as_ref().map_or(0, |raw| str_len(raw.get().len()))
        + str_len(body)
}
