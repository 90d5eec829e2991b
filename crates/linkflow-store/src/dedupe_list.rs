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
//! The head also holds the stream's version (its last event's), which a commit checks every
//! append's expected version against: the commit reads the head for its dedupe checks anyway.
//! In the core's compact form:
//!
//! ```text
//! head  = u8(flags: bit 0 = spilled, bit 1 = snapshot, bit 2 = compacted) varint(version)
//!         [varint(compacted at)] [bytes(snapshot record)] entry*
//! entry = [16](dedupe key) varint(version) varint(position)
//! ```

use linkflow_core::compact::{CompactError, Input, Output};
use linkflow_core::{DedupeKey, Position, SessionId, Version};

use crate::error::CorruptRecord;
use crate::store::DedupeHit;

/// The most entries a list holds before they move to `D` keys.
pub(crate) const LIST_MAX: usize = 64;

const SPILLED: u8 = 1;
const SNAPSHOT: u8 = 2;
const COMPACTED: u8 = 4;

/// Where a dedupe key's first delivery went, without the stream (the list's key names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub version: Version,
    pub position: Position,
}

impl From<&DedupeHit> for Target {
    fn from(hit: &DedupeHit) -> Self {
        Target {
            version: hit.version,
            position: hit.position,
        }
    }
}

impl Target {
    pub fn hit(self, stream: &SessionId) -> DedupeHit {
        DedupeHit {
            stream: stream.clone(),
            version: self.version,
            position: self.position,
        }
    }

    pub fn write(&self, out: &mut Output) {
        out.varint(self.version.0);
        out.varint(self.position.0);
    }

    /// Reads a target written by [`Target::write`]; neither number may be 0.
    pub fn read(input: &mut Input<'_>) -> Result<Self, CompactError> {
        let version = input.varint("target version")?;
        let position = input.varint("target position")?;
        if version == 0 || position == 0 {
            return Err(input.error("target", "version or position 0"));
        }
        Ok(Target {
            version: Version(version),
            position: Position(position),
        })
    }
}

/// One stream's list, decoded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct DedupeList {
    /// The stream's version: its last event's ([`Version::EMPTY`]: none).
    pub version: Version,
    /// Older entries of the stream are `D` keys.
    pub spilled: bool,
    /// The version the stream was compacted at ([`Version::EMPTY`]: never): what a commit's
    /// snapshot must say.
    pub compacted: Version,
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
        let mut out = Output::from(Vec::with_capacity(
            11 + snapshot_len + self.entries.len() * 24,
        ));
        let snapshot_flag = if snapshot.is_some() { SNAPSHOT } else { 0 };
        let compacted_flag = if self.compacted == Version::EMPTY {
            0
        } else {
            COMPACTED
        };
        out.u8(if self.spilled { SPILLED } else { 0 } | snapshot_flag | compacted_flag);
        out.varint(self.version.0);
        if self.compacted != Version::EMPTY {
            out.varint(self.compacted.0);
        }
        if let Some(record) = snapshot {
            out.bytes(record);
        }
        for (key, target) in &self.entries {
            out.raw(key.as_bytes());
            target.write(&mut out);
        }
        out.into_bytes()
    }

    /// Decodes the head of `stream`: its list and its snapshot record, if it holds one.
    pub fn decode<'v>(
        stream: &SessionId,
        value: &'v [u8],
    ) -> Result<(DedupeList, Option<&'v [u8]>), CorruptRecord> {
        let mut head = Head::open(stream, value)?;
        let mut entries = Vec::new();
        while let Some(entry) = head.next_entry()? {
            entries.push(entry);
        }
        let list = DedupeList {
            version: head.version,
            spilled: head.spilled,
            compacted: head.compacted,
            entries,
        };
        Ok((list, head.snapshot))
    }

    /// The snapshot record in the head of `stream`, without decoding its entries.
    pub fn snapshot_encoded<'v>(
        stream: &SessionId,
        value: &'v [u8],
    ) -> Result<Option<&'v [u8]>, CorruptRecord> {
        Ok(Head::open(stream, value)?.snapshot)
    }

    /// The stream's version in the head of `stream`, without decoding its entries.
    pub fn version_encoded(stream: &SessionId, value: &[u8]) -> Result<Version, CorruptRecord> {
        Ok(Head::open(stream, value)?.version)
    }

    /// Looks `key` up in an encoded list without decoding the rest of it: its target, and
    /// whether the list is spilled.
    pub fn find_encoded(
        stream: &SessionId,
        value: &[u8],
        key: &DedupeKey,
    ) -> Result<(Option<Target>, bool), CorruptRecord> {
        let mut head = Head::open(stream, value)?;
        while let Some((entry, target)) = head.next_entry()? {
            if entry == *key {
                return Ok((Some(target), head.spilled));
            }
        }
        Ok((None, head.spilled))
    }
}

/// An encoded head: what precedes its entries, and the entries, read one at a time.
struct Head<'s, 'a> {
    stream: &'s SessionId,
    version: Version,
    spilled: bool,
    compacted: Version,
    snapshot: Option<&'a [u8]>,
    entries: Input<'a>,
}

impl<'s, 'a> Head<'s, 'a> {
    fn open(stream: &'s SessionId, value: &'a [u8]) -> Result<Self, CorruptRecord> {
        let mut input = Input::new(value);
        let start = (|| {
            let flags = input.u8("flags")?;
            if flags & !(SPILLED | SNAPSHOT | COMPACTED) != 0 {
                return Err(input.error("flags", format!("unknown flags {flags:#04x}")));
            }
            let version = Version(input.varint("version")?);
            let compacted = match flags & COMPACTED {
                0 => Version::EMPTY,
                _ => match Version(input.varint("compacted at")?) {
                    at if at == Version::EMPTY || at > version => {
                        return Err(input.error(
                            "compacted at",
                            format!("version {at} of a stream at {version}"),
                        ))
                    }
                    at => at,
                },
            };
            let snapshot = match flags & SNAPSHOT {
                0 => None,
                _ => match input.bytes("snapshot")? {
                    [] => return Err(input.error("snapshot", "an empty snapshot record")),
                    record => Some(record),
                },
            };
            Ok((version, flags & SPILLED != 0, compacted, snapshot))
        })();
        let (version, spilled, compacted, snapshot) =
            start.map_err(|error| corrupt(stream, error))?;
        Ok(Head {
            stream,
            version,
            spilled,
            compacted,
            snapshot,
            entries: input,
        })
    }

    /// The next entry, `None` after the last.
    fn next_entry(&mut self) -> Result<Option<(DedupeKey, Target)>, CorruptRecord> {
        if self.entries.finish().is_ok() {
            return Ok(None);
        }
        let input = &mut self.entries;
        input
            .array("dedupe key")
            .and_then(|key| Ok(Some((DedupeKey::from_bytes(key), Target::read(input)?))))
            .map_err(|error| corrupt(self.stream, error))
    }
}

fn corrupt(stream: &SessionId, error: CompactError) -> CorruptRecord {
    CorruptRecord::new(
        format!("head of stream `{stream}` (dedupe list and snapshot)"),
        error.to_string(),
    )
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
            compacted: Version(7),
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
            compacted: Version::EMPTY,
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
            compacted: Version::EMPTY,
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
        // An entry whose version is 0 names no event.
        let mut version_0 = good.clone();
        version_0[18] = 0;
        assert!(DedupeList::decode(&stream(), &version_0).is_err());
        assert!(DedupeList::decode(&stream(), &[0x80]).is_err());
        let overflow = [&good[..18], &[0xff; 11][..]].concat();
        assert!(DedupeList::decode(&stream(), &overflow).is_err());
    }
}
