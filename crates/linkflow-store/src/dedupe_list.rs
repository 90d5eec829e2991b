//! The sled backend's stream head: one value per stream under its `K` key holding the stream's
//! dedupe entries and its snapshot, rewritten by each commit that touches the stream.
//!
//! A commit of a session's events then writes one value per stream it touches for both, not
//! one dedupe key per event plus a snapshot key, and finds every dedupe key it checks for that
//! stream in one read. A list holds at most [`LIST_MAX`] entries: when a commit would take it
//! past that, its entries move to `D` keys (one per entry, as in the first layout) and the list
//! starts again empty, marked *spilled*, so that a lookup that misses it knows to try the `D`
//! key. Long streams therefore pay the first layout's cost, and no commit rewrites more than
//! [`LIST_MAX`] entries.
//!
//! ```text
//! The head also holds the stream's version (its last event's), which a commit checks every
//! append's expected version against: the commit reads the head for its dedupe checks anyway.
//!
//! head  = u8(flags: bit 0 = spilled, bit 1 = snapshot) varint(version)
//!         [varint(length) snapshot] entry*
//! entry = [16](dedupe key) 'A' varint(version) varint(position)
//! ```

use linkflow_core::compact::{put_varint as varint, take_varint as read_varint};
use linkflow_core::{DedupeKey, Position, SessionId, Version};

use crate::error::CorruptRecord;
use crate::store::DedupeHit;

/// The most entries a list holds before they move to `D` keys.
pub(crate) const LIST_MAX: usize = 64;

const SPILLED: u8 = 1;
const SNAPSHOT: u8 = 2;
const ACCEPTED: u8 = b'A';

/// Where a dedupe key's first delivery went, without the stream (the list's key names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub version: Version,
    pub position: Position,
}

impl Target {
    pub fn hit(self, stream: &SessionId) -> DedupeHit {
        DedupeHit {
            stream: stream.clone(),
            version: self.version,
            position: self.position,
        }
    }
}

/// One stream's list, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DedupeList {
    /// The stream's version: its last event's ([`Version::EMPTY`]: none).
    pub version: Version,
    /// Older entries of the stream are `D` keys.
    pub spilled: bool,
    pub entries: Vec<(DedupeKey, Target)>,
}

impl DedupeList {
    pub fn find(&self, key: &DedupeKey) -> Option<Target> {
        self.entries
            .iter()
            .find(|(entry, _)| entry == key)
            .map(|(_, target)| *target)
    }

    /// Points `key` at `target`: replaces its entry if the list holds it, else adds one.
    pub fn set(&mut self, key: DedupeKey, target: Target) {
        match self.entries.iter_mut().find(|(entry, _)| *entry == key) {
            Some(entry) => entry.1 = target,
            None => self.entries.push((key, target)),
        }
    }

    /// The stream's head value: this list, with `snapshot` (an encoded snapshot record) if given.
    pub fn encode(&self, snapshot: Option<&[u8]>) -> Vec<u8> {
        let snapshot_len = snapshot.map_or(0, |record| record.len() + 3);
        let mut value = Vec::with_capacity(1 + snapshot_len + self.entries.len() * 24);
        let mut flags = if self.spilled { SPILLED } else { 0 };
        if snapshot.is_some() {
            flags |= SNAPSHOT;
        }
        value.push(flags);
        varint(&mut value, self.version.0);
        if let Some(record) = snapshot {
            varint(&mut value, record.len() as u64);
            value.extend_from_slice(record);
        }
        for (key, target) in &self.entries {
            value.extend_from_slice(key.as_bytes());
            value.push(ACCEPTED);
            varint(&mut value, target.version.0);
            varint(&mut value, target.position.0);
        }
        value
    }

    /// Decodes the head of `stream`: its list and its snapshot record, if it holds one.
    pub fn decode<'v>(
        stream: &SessionId,
        value: &'v [u8],
    ) -> Result<(DedupeList, Option<&'v [u8]>), CorruptRecord> {
        let (head, entries) = Entries::new(stream, value)?;
        let list = DedupeList {
            version: head.version,
            spilled: head.spilled,
            entries: entries.collect::<Result<_, _>>()?,
        };
        Ok((list, head.snapshot))
    }

    /// The snapshot record in the head of `stream`, without decoding its entries.
    pub fn snapshot_encoded<'v>(
        stream: &SessionId,
        value: &'v [u8],
    ) -> Result<Option<&'v [u8]>, CorruptRecord> {
        Ok(Entries::new(stream, value)?.0.snapshot)
    }

    /// The stream's version in the head of `stream`, without decoding its entries.
    pub fn version_encoded(stream: &SessionId, value: &[u8]) -> Result<Version, CorruptRecord> {
        Ok(Entries::new(stream, value)?.0.version)
    }

    /// Looks `key` up in an encoded list without decoding the rest of it: its target, and
    /// whether the list is spilled.
    pub fn find_encoded(
        stream: &SessionId,
        value: &[u8],
        key: &DedupeKey,
    ) -> Result<(Option<Target>, bool), CorruptRecord> {
        let (head, mut entries) = Entries::new(stream, value)?;
        for entry in &mut entries {
            let (entry_key, target) = entry?;
            if entry_key == *key {
                return Ok((Some(target), head.spilled));
            }
        }
        Ok((None, head.spilled))
    }
}

/// What precedes the entries of an encoded head.
struct HeadStart<'a> {
    version: Version,
    spilled: bool,
    snapshot: Option<&'a [u8]>,
}

/// The entries of an encoded head, decoded one at a time.
struct Entries<'s, 'a> {
    stream: &'s SessionId,
    value: &'a [u8],
    rest: &'a [u8],
}

impl<'s, 'a> Entries<'s, 'a> {
    /// The head's flags and snapshot, and its entries.
    fn new(stream: &'s SessionId, value: &'a [u8]) -> Result<(HeadStart<'a>, Self), CorruptRecord> {
        let entries = Entries {
            stream,
            value,
            rest: value,
        };
        let (&flags, mut rest) = value
            .split_first()
            .ok_or_else(|| entries.bad(0, "empty value"))?;
        if flags & !(SPILLED | SNAPSHOT) != 0 {
            return Err(entries.bad(0, &format!("unknown flags {flags:#04x}")));
        }
        let version = read_varint(&mut rest).ok_or_else(|| entries.bad(1, "bad version"))?;
        let snapshot = if flags & SNAPSHOT != 0 {
            let len = read_varint(&mut rest)
                .and_then(|len| usize::try_from(len).ok())
                .filter(|&len| len > 0 && len <= rest.len())
                .ok_or_else(|| entries.bad(1, "bad snapshot length"))?;
            let (snapshot, after) = rest.split_at(len);
            rest = after;
            Some(snapshot)
        } else {
            None
        };
        let head = HeadStart {
            version: Version(version),
            spilled: flags & SPILLED != 0,
            snapshot,
        };
        Ok((head, Entries { rest, ..entries }))
    }

    fn bad(&self, at: usize, reason: &str) -> CorruptRecord {
        CorruptRecord::new(
            format!(
                "head of stream `{}` (dedupe list and snapshot)",
                self.stream
            ),
            format!("{reason} at byte {at} of {}", self.value.len()),
        )
    }

    fn entry(&mut self) -> Result<(DedupeKey, Target), CorruptRecord> {
        let at = self.value.len() - self.rest.len();
        if self.rest.len() < 17 {
            return Err(self.bad(at, "truncated entry"));
        }
        let key: [u8; 16] = self.rest[..16].try_into().expect("16 bytes were checked");
        let tag = self.rest[16];
        let mut rest = &self.rest[17..];
        let target = match tag {
            ACCEPTED => {
                let version = read_varint(&mut rest).ok_or_else(|| self.bad(at, "bad version"))?;
                let position =
                    read_varint(&mut rest).ok_or_else(|| self.bad(at, "bad position"))?;
                if version == 0 || position == 0 {
                    return Err(self.bad(at, "version or position 0"));
                }
                Target {
                    version: Version(version),
                    position: Position(position),
                }
            }
            other => return Err(self.bad(at, &format!("unknown target tag {other:#04x}"))),
        };
        self.rest = rest;
        Ok((DedupeKey::from_bytes(key), target))
    }
}

impl Iterator for Entries<'_, '_> {
    type Item = Result<(DedupeKey, Target), CorruptRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let entry = self.entry();
        if entry.is_err() {
            // Stop after the first damage: what follows cannot be framed.
            self.rest = &[];
        }
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> SessionId {
        SessionId::new("s").unwrap()
    }

    #[test]
    fn lists_round_trip_with_large_numbers() {
        let list = DedupeList {
            version: Version(u64::MAX),
            spilled: true,
            entries: vec![
                (
                    DedupeKey::derive(&[b"a"]),
                    Target {
                        version: Version(1),
                        position: Position(u64::MAX),
                    },
                ),
                (
                    DedupeKey::derive(&[b"b"]),
                    Target {
                        version: Version(2),
                        position: Position(3),
                    },
                ),
                (
                    DedupeKey::derive(&[b"c"]),
                    Target {
                        version: Version(300),
                        position: Position(1 << 40),
                    },
                ),
            ],
        };
        assert_eq!(
            DedupeList::decode(&stream(), &list.encode(None)).unwrap(),
            (list.clone(), None)
        );
        let empty = DedupeList::default();
        assert_eq!(
            DedupeList::decode(&stream(), &empty.encode(None)).unwrap(),
            (empty.clone(), None)
        );
        // A snapshot rides in front of the entries and leaves them as they were.
        let snapshot = vec![0x80u8; 300];
        for list in [&list, &empty] {
            let head = list.encode(Some(&snapshot));
            assert_eq!(
                DedupeList::decode(&stream(), &head).unwrap(),
                ((*list).clone(), Some(&snapshot[..]))
            );
            assert_eq!(
                DedupeList::snapshot_encoded(&stream(), &head).unwrap(),
                Some(&snapshot[..])
            );
            assert_eq!(
                DedupeList::version_encoded(&stream(), &head).unwrap(),
                list.version
            );
        }
        // A list that just spilled holds no entry; the stream is not empty.
        let spilled_empty = DedupeList {
            version: Version(65),
            spilled: true,
            entries: Vec::new(),
        };
        assert_eq!(
            DedupeList::version_encoded(&stream(), &spilled_empty.encode(None)).unwrap(),
            Version(65)
        );
    }

    #[test]
    fn find_encoded_agrees_with_the_decoded_list() {
        let mut list = DedupeList::default();
        for n in 0..10u64 {
            list.set(
                DedupeKey::derive(&[&n.to_be_bytes()]),
                Target {
                    version: Version(n + 1),
                    position: Position(n * 1_000 + 1),
                },
            );
        }
        list.spilled = true;
        let encoded = list.encode(Some(b"snapshot record"));
        for n in 0..12u64 {
            let key = DedupeKey::derive(&[&n.to_be_bytes()]);
            assert_eq!(
                DedupeList::find_encoded(&stream(), &encoded, &key).unwrap(),
                (list.find(&key), true)
            );
        }
        let damaged = &encoded[..encoded.len() - 1];
        let last = DedupeKey::derive(&[&9u64.to_be_bytes()]);
        assert!(DedupeList::find_encoded(&stream(), damaged, &last).is_err());
    }

    #[test]
    fn set_replaces_an_entry_in_place() {
        let mut list = DedupeList::default();
        let key = DedupeKey::derive(&[b"k"]);
        list.set(
            key,
            Target {
                version: Version(1),
                position: Position(1),
            },
        );
        let accepted = Target {
            version: Version(2),
            position: Position(9),
        };
        list.set(key, accepted);
        assert_eq!(list.entries.len(), 1);
        assert_eq!(list.find(&key), Some(accepted));
        assert_eq!(
            accepted.hit(&stream()),
            DedupeHit {
                stream: stream(),
                version: Version(2),
                position: Position(9)
            }
        );
    }

    #[test]
    fn damaged_lists_are_errors_naming_the_stream_not_panics() {
        let good = DedupeList {
            version: Version(5),
            spilled: false,
            entries: vec![(
                DedupeKey::derive(&[b"a"]),
                Target {
                    version: Version(5),
                    position: Position(7),
                },
            )],
        }
        .encode(None);
        for cut in 0..good.len() {
            if cut == 2 {
                continue; // the flags and the version alone are a list without entries
            }
            let error = DedupeList::decode(&stream(), &good[..cut]).unwrap_err();
            assert!(error.key.contains("head of stream `s`"), "{error:?}");
        }
        // A snapshot whose length runs past the value, or is zero, is damage too.
        let with_snapshot = DedupeList::default().encode(Some(b"abc"));
        for cut in 1..with_snapshot.len() {
            assert!(DedupeList::decode(&stream(), &with_snapshot[..cut]).is_err());
            assert!(DedupeList::snapshot_encoded(&stream(), &with_snapshot[..cut]).is_err());
        }
        assert!(DedupeList::decode(&stream(), &[SNAPSHOT, 0]).is_err());
        let mut bad_tag = good.clone();
        bad_tag[18] = b'X';
        assert!(DedupeList::decode(&stream(), &bad_tag).is_err());
        assert!(DedupeList::decode(&stream(), &[0x80]).is_err());
        let overflow = [&good[..19], &[0xff; 11][..]].concat();
        assert!(DedupeList::decode(&stream(), &overflow).is_err());
    }
}
