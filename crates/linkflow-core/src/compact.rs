//! A compact binary form of the folded states (sessions, accounts, merchant statuses) and of
//! event bodies: what the engine's session cache holds, a few times smaller than the values
//! themselves, and what snapshots and event records store.
//!
//! The form is positional (no field names): integers are LEB128 varints, strings a varint
//! length then UTF-8, an optional string one varint (`0` for none, else length + 1), a time
//! its whole seconds as a zigzag varint relative to a base the value chooses (a session's
//! first event time, so most times take one or two bytes) with a flag bit for a sub-second
//! part that follows as a varint of nanoseconds. The form carries no version of its own: each
//! stored use adds one (snapshots a layout byte, event records their schema version), and
//! event bodies, which the log keeps forever, have their bytes pinned by a store test.
//!
//! Decoding checks every byte it reads (lengths within the input, UTF-8, enum codes, times in
//! range, no bytes left over) and names what was wrong and where.

use chrono::{DateTime, Utc};

/// A compact form that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} at byte {at}: {reason}")]
#[non_exhaustive]
pub struct CompactError {
    /// The field being read.
    pub what: &'static str,
    /// Its offset in the input.
    pub at: usize,
    /// What was wrong.
    pub reason: String,
}

/// A value with a compact binary form.
pub trait Compact: Sized {
    /// Appends the value's compact form.
    fn encode_compact(&self, out: &mut Output);
    /// Reads one value written by [`Compact::encode_compact`].
    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError>;
}

/// `value`'s compact form.
pub fn to_compact<T: Compact>(value: &T) -> Vec<u8> {
    let mut out = Output::default();
    value.encode_compact(&mut out);
    out.into_bytes()
}

/// Decodes a value that is the whole of `bytes`.
pub fn from_compact<T: Compact>(bytes: &[u8]) -> Result<T, CompactError> {
    let mut input = Input::new(bytes);
    let value = T::decode_compact(&mut input)?;
    input.finish()?;
    Ok(value)
}

/// Where compact forms are written.
#[derive(Debug, Default)]
pub struct Output(Vec<u8>);

impl From<Vec<u8>> for Output {
    /// Writes after what `bytes` holds (and into its capacity).
    fn from(bytes: Vec<u8>) -> Self {
        Output(bytes)
    }
}

impl Output {
    /// The bytes written.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// One byte.
    pub fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    /// An unsigned integer as a LEB128 varint (1 byte below 128).
    pub fn varint(&mut self, value: u64) {
        put_varint(&mut self.0, value);
    }

    /// Bytes as they are (a fixed-width field, such as an id).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// Bytes of any length: their length, then the bytes.
    pub fn bytes(&mut self, bytes: &[u8]) {
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
    }

    /// A string: its length, then its bytes.
    pub fn str(&mut self, value: &str) {
        self.bytes(value.as_bytes());
    }

    /// An optional string: `0` for none, else length + 1 and the bytes.
    pub fn opt_str(&mut self, value: Option<&str>) {
        match value {
            None => self.varint(0),
            Some(value) => {
                self.varint(value.len() as u64 + 1);
                self.0.extend_from_slice(value.as_bytes());
            }
        }
    }

    /// A time, its seconds relative to `base_secs`.
    pub fn time(&mut self, value: DateTime<Utc>, base_secs: i64) {
        let delta = value.timestamp().wrapping_sub(base_secs);
        let zigzag = ((delta << 1) ^ (delta >> 63)) as u64;
        let nanos = value.timestamp_subsec_nanos();
        // The zigzag value of a real time fits 62 bits, so the flag bit never overflows.
        self.varint(zigzag << 1 | u64::from(nanos != 0));
        if nanos != 0 {
            self.varint(u64::from(nanos));
        }
    }

    /// An optional time: a presence byte, then the time.
    pub fn opt_time(&mut self, value: Option<DateTime<Utc>>, base_secs: i64) {
        match value {
            None => self.u8(0),
            Some(value) => {
                self.u8(1);
                self.time(value, base_secs);
            }
        }
    }
}

/// Appends `value` as an unsigned LEB128 varint (7 bits a byte, low first, the high bit set on
/// every byte but the last): the one varint of every linkflow binary form (the compact state,
/// the store's records and stream heads).
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// What a varint [`take_varint`] refuses is.
pub const VARINT_ERROR: &str = "a varint cut short, longer than 10 bytes, or past 64 bits";

/// Reads an unsigned LEB128 varint from the front of `bytes` and moves past it. `None` (and
/// `bytes` as it was) when it is cut short, longer than 10 bytes, or past 64 bits.
pub fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for (index, byte) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(byte & 0x7f);
        if index == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            *bytes = &bytes[index + 1..];
            return Some(value);
        }
    }
    None
}

/// Reads compact forms, naming the field and offset of anything wrong.
#[derive(Debug)]
pub struct Input<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Input<'a> {
    /// Reads from the start of `bytes`.
    pub fn new(bytes: &'a [u8]) -> Self {
        Input { bytes, at: 0 }
    }

    /// An error about `what` at the current offset.
    pub fn error(&self, what: &'static str, reason: impl Into<String>) -> CompactError {
        CompactError {
            what,
            at: self.at,
            reason: reason.into(),
        }
    }

    /// Fails unless every byte was read.
    pub fn finish(&self) -> Result<(), CompactError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            left => Err(self.error("end", format!("{left} bytes left over"))),
        }
    }

    /// The next `len` bytes (a length read before them, or a fixed width).
    pub fn take(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], CompactError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| {
                self.error(
                    what,
                    format!("{len} bytes wanted, {} left", self.bytes.len() - self.at),
                )
            })?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, CompactError> {
        Ok(self.take(what, 1)?[0])
    }

    /// `N` bytes as they are.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], CompactError> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(what, N)?);
        Ok(array)
    }

    /// Bytes written by [`Output::bytes`].
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], CompactError> {
        let len = self.count(what)?;
        self.take(what, len)
    }

    /// A varint.
    pub fn varint(&mut self, what: &'static str) -> Result<u64, CompactError> {
        let mut rest = &self.bytes[self.at..];
        let value = take_varint(&mut rest).ok_or_else(|| self.error(what, VARINT_ERROR))?;
        self.at = self.bytes.len() - rest.len();
        Ok(value)
    }

    /// A varint that must fit a `u32`.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, CompactError> {
        let value = self.varint(what)?;
        u32::try_from(value).map_err(|_| self.error(what, format!("{value} exceeds u32")))
    }

    /// A count of elements or bytes that follow; it must fit in the bytes left (each element
    /// takes at least one byte), so a damaged count cannot make a decoder allocate for it.
    pub fn count(&mut self, what: &'static str) -> Result<usize, CompactError> {
        let value = self.varint(what)?;
        let left = self.bytes.len() - self.at;
        usize::try_from(value)
            .ok()
            .filter(|len| *len <= left)
            .ok_or_else(|| {
                self.error(
                    what,
                    format!("length {value} exceeds the {left} bytes left"),
                )
            })
    }

    /// The next `len` bytes, which must be UTF-8.
    pub fn utf8(&mut self, what: &'static str, len: usize) -> Result<&'a str, CompactError> {
        let start = self.at;
        let bytes = self.take(what, len)?;
        std::str::from_utf8(bytes).map_err(|error| CompactError {
            what,
            at: start,
            reason: format!("not UTF-8: {error}"),
        })
    }

    /// A string.
    pub fn str(&mut self, what: &'static str) -> Result<String, CompactError> {
        let len = self.count(what)?;
        self.utf8(what, len).map(str::to_owned)
    }

    /// An optional string, borrowed from the input.
    pub fn opt_str_ref(&mut self, what: &'static str) -> Result<Option<&'a str>, CompactError> {
        match self.varint(what)? {
            0 => Ok(None),
            len => {
                let len = usize::try_from(len - 1)
                    .map_err(|_| self.error(what, "length exceeds the address space"))?;
                self.utf8(what, len).map(Some)
            }
        }
    }

    /// An optional string.
    pub fn opt_str(&mut self, what: &'static str) -> Result<Option<String>, CompactError> {
        Ok(self.opt_str_ref(what)?.map(str::to_owned))
    }

    /// A time written with base `base_secs`.
    pub fn time(
        &mut self,
        what: &'static str,
        base_secs: i64,
    ) -> Result<DateTime<Utc>, CompactError> {
        let head = self.varint(what)?;
        let zigzag = head >> 1;
        let delta = ((zigzag >> 1) as i64) ^ -((zigzag & 1) as i64);
        let nanos = if head & 1 == 1 { self.u32(what)? } else { 0 };
        base_secs
            .checked_add(delta)
            .and_then(|secs| DateTime::from_timestamp(secs, nanos))
            .ok_or_else(|| self.error(what, "time out of range"))
    }

    /// An optional time.
    pub fn opt_time(
        &mut self,
        what: &'static str,
        base_secs: i64,
    ) -> Result<Option<DateTime<Utc>>, CompactError> {
        match self.u8(what)? {
            0 => Ok(None),
            1 => self.time(what, base_secs).map(Some),
            other => Err(self.error(what, format!("presence byte {other}, expected 0 or 1"))),
        }
    }

    /// A presence byte: `false` for 0, `true` for 1.
    pub fn present(&mut self, what: &'static str) -> Result<bool, CompactError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            other => Err(self.error(what, format!("presence byte {other}, expected 0 or 1"))),
        }
    }

    /// A byte that indexes `choices`.
    pub fn choice<T: Copy>(
        &mut self,
        what: &'static str,
        choices: &[T],
    ) -> Result<T, CompactError> {
        let code = self.u8(what)?;
        choices.get(usize::from(code)).copied().ok_or_else(|| {
            self.error(
                what,
                format!("code {code}, expected below {}", choices.len()),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, nanos).unwrap()
    }

    #[test]
    fn times_round_trip_and_take_few_bytes_near_their_base() {
        let base = 1_790_000_000;
        for (time, base) in [
            (at(base + 3, 0), base),
            (at(base - 40, 123_000_000), base),
            (at(base, 999_999_999), base),
            (at(-62_000_000_000, 0), 0),
            (at(8_000_000_000_000, 5), base),
        ] {
            let mut out = Output::default();
            out.time(time, base);
            let bytes = out.into_bytes();
            let mut input = Input::new(&bytes);
            assert_eq!(input.time("t", base).unwrap(), time);
            input.finish().unwrap();
        }
        let mut out = Output::default();
        out.time(at(base + 3, 0), base);
        assert_eq!(out.into_bytes().len(), 1);
    }

    #[test]
    fn damaged_input_names_the_field_and_offset() {
        let mut out = Output::default();
        out.str("hello");
        let bytes = out.into_bytes();
        let error = Input::new(&bytes[..3]).str("name").unwrap_err();
        assert_eq!(error.what, "name");
        assert!(error.reason.contains("exceeds"), "{error}");
        let error = Input::new(&[0xff; 11]).varint("n").unwrap_err();
        assert!(error.to_string().contains("n at byte"), "{error}");
        let error = Input::new(&[2, 0xff, 0xfe]).str("name").unwrap_err();
        assert!(error.reason.contains("UTF-8"), "{error}");
        let error = Input::new(&[7]).choice("kind", &[1, 2]).unwrap_err();
        assert!(error.reason.contains("code 7"), "{error}");
        let mut input = Input::new(&[1, 2]);
        input.u8("a").unwrap();
        assert!(input
            .finish()
            .unwrap_err()
            .reason
            .contains("1 bytes left over"));
    }

    #[test]
    fn varints_round_trip_at_their_edges() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Output::default();
            out.varint(value);
            let bytes = out.into_bytes();
            assert_eq!(Input::new(&bytes).varint("v").unwrap(), value);
        }
    }
}
