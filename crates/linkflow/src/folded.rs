//! The folded state of one stream, whatever its kind: a link session, a linked account, or a
//! merchant's availability.

use linkflow_core::compact::{Compact, CompactError, Input, Output};
use linkflow_core::quarantine::{apply_quarantine, QuarantineEvent};
use linkflow_core::{
    Account, AccountKey, Applied, EventBody, MerchantStatus, Phase, Provider, QuarantineEntry,
    Session, Version,
};
use serde::{Deserialize, Serialize};

/// A stream's state. A stream holds one kind of body; its first event decides the kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Folded {
    /// A link session (boxed: it is several times larger than the other states).
    Session(Box<Session>),
    /// A linked account.
    Account {
        /// Which account.
        key: AccountKey,
        /// Its state.
        account: Account,
    },
    /// A merchant's availability for one product type, platform and SDK.
    Merchant {
        /// The newest status by event time (`None` before the first update).
        status: Option<MerchantStatus>,
        /// Accepted updates.
        version: Version,
    },
    /// A quarantined payload (`None` before its first event).
    Quarantine(Option<QuarantineEntry>),
}

/// The layout of the folded state inside snapshots. Bump it whenever `Folded` (or the
/// `Session`, `Account` or merchant state in it) gains or changes a field that is derived from
/// the events, or its compact form changes: a snapshot of another layout is not decoded (fields
/// with defaults would decode to wrong values) and the stream is replayed from its log instead.
pub const SNAPSHOT_LAYOUT: u32 = 3;

/// A JSON snapshot's state (what linkflow wrote before compact snapshots): the folded state
/// tagged with its layout. Still read.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotState<S> {
    layout: u32,
    state: S,
}

/// A snapshot's state bytes: the layout as one byte, then the compact form of the state
/// (`linkflow_core::compact`). A JSON snapshot starts with `{`, which no layout byte is.
pub(crate) fn encode_snapshot_state(folded: &Folded) -> Vec<u8> {
    const _: () = assert!(SNAPSHOT_LAYOUT < b'{' as u32, "a layout byte is never `{{`");
    let mut out = Output::default();
    out.u8(SNAPSHOT_LAYOUT as u8);
    folded.encode_compact(&mut out);
    out.into_bytes()
}

/// Decodes a snapshot's state bytes, compact or JSON; `None` when this build cannot read them
/// (another layout, or damaged): the caller replays the stream instead.
pub(crate) fn decode_snapshot_state(state: &[u8]) -> Option<Folded> {
    match state.split_first()? {
        (b'{', _) => serde_json::from_slice::<SnapshotState<Folded>>(state)
            .ok()
            .filter(|tagged| tagged.layout == SNAPSHOT_LAYOUT)
            .map(|tagged| tagged.state),
        (&layout, compact) if u32::from(layout) == SNAPSHOT_LAYOUT => {
            linkflow_core::compact::from_compact(compact).ok()
        }
        _ => None,
    }
}

/// What an accepted event did to its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Change {
    /// The session's phase transition, for session events.
    pub session: Option<Applied>,
}

impl Change {
    pub fn phase_before(&self) -> Option<Phase> {
        self.session.map(|applied| applied.phase_before)
    }

    pub fn phase_after(&self) -> Option<Phase> {
        self.session.map(|applied| applied.phase_after)
    }
}

impl Folded {
    /// The empty state of the stream a body belongs to.
    pub(crate) fn initial_for(body: &EventBody) -> Folded {
        match body {
            EventBody::Session(_) => Folded::Session(Box::default()),
            EventBody::Account { account, .. } => Folded::Account {
                key: account.clone(),
                account: Account::new(),
            },
            EventBody::Merchant(_) => Folded::Merchant {
                status: None,
                version: Version::EMPTY,
            },
            EventBody::Quarantined(_) | EventBody::QuarantineReleased(_) => {
                Folded::Quarantine(None)
            }
        }
    }

    /// Accepted events.
    pub fn version(&self) -> Version {
        match self {
            Folded::Session(session) => session.version(),
            Folded::Account { account, .. } => account.version(),
            Folded::Merchant { version, .. } => *version,
            Folded::Quarantine(entry) => entry.as_ref().map_or(Version::EMPTY, |e| e.version()),
        }
    }

    /// The stream kind's name, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Folded::Session(_) => "session",
            Folded::Account { .. } => "account",
            Folded::Merchant { .. } => "merchant",
            Folded::Quarantine(_) => "quarantine",
        }
    }

    /// The session, if this is one.
    pub fn as_session(&self) -> Option<&Session> {
        match self {
            Folded::Session(session) => Some(session),
            _ => None,
        }
    }

    /// Whether the state accepts `body`: `Ok(true)` yes, `Err(reason)` refused by the state
    /// machine. A body of another stream kind is `Ok(false)`.
    pub(crate) fn check(&self, body: &EventBody) -> Result<bool, String> {
        match (self, body) {
            (Folded::Session(session), EventBody::Session(event)) => session
                .check(event)
                .map(|_| true)
                .map_err(|rejection| rejection.to_string()),
            (Folded::Account { account, .. }, EventBody::Account { event, .. }) => account
                .check(event)
                .map(|_| true)
                .map_err(|rejection| rejection.to_string()),
            (Folded::Merchant { .. }, EventBody::Merchant(_)) => Ok(true),
            (Folded::Quarantine(entry), body) => match quarantine_event(body) {
                Some(event) => apply_quarantine(&mut entry.clone(), event)
                    .map(|()| true)
                    .map_err(|rejection| rejection.to_string()),
                None => Ok(false),
            },
            _ => Ok(false),
        }
    }

    /// Applies `body` in place. On an error the state is unchanged. The caller checked the
    /// kind with [`Folded::check`].
    pub(crate) fn apply_in_place(&mut self, body: &EventBody) -> Result<Change, String> {
        match (self, body) {
            (Folded::Session(session), EventBody::Session(event)) => session
                .apply_in_place(event)
                .map(|applied| Change {
                    session: Some(applied),
                })
                .map_err(|rejection| rejection.to_string()),
            (Folded::Account { account, .. }, EventBody::Account { event, .. }) => account
                .apply_in_place(event)
                .map(|()| Change { session: None })
                .map_err(|rejection| rejection.to_string()),
            (Folded::Merchant { status, version }, EventBody::Merchant(update)) => {
                *status = Some(MerchantStatus::fold_into(status.take(), update));
                *version = version.next();
                Ok(Change { session: None })
            }
            (Folded::Quarantine(entry), body) if quarantine_event(body).is_some() => {
                let event = quarantine_event(body).expect("matched by the guard");
                apply_quarantine(entry, event)
                    .map(|()| Change { session: None })
                    .map_err(|rejection| rejection.to_string())
            }
            (folded, body) => Err(format!(
                "a {} event cannot go into a {} stream",
                body.name(),
                folded.kind_name()
            )),
        }
    }
}

/// The quarantine event a body is, if it is one.
fn quarantine_event(body: &EventBody) -> Option<QuarantineEvent<'_>> {
    match body {
        EventBody::Quarantined(quarantined) => Some(QuarantineEvent::Quarantined(quarantined)),
        EventBody::QuarantineReleased(released) => Some(QuarantineEvent::Released(released)),
        _ => None,
    }
}

/// A provider as one byte (its index in [`Provider::ALL`]).
fn provider_code(provider: Provider) -> u8 {
    match provider {
        Provider::Moneykit => 0,
        Provider::Benji => 1,
        Provider::Knot => 2,
    }
}

impl Compact for Folded {
    /// A kind byte (0 session, 1 account, 2 merchant, 3 quarantine), then the state.
    fn encode_compact(&self, out: &mut Output) {
        match self {
            Folded::Session(session) => {
                out.u8(0);
                session.encode_compact(out);
            }
            Folded::Account { key, account } => {
                out.u8(1);
                out.u8(provider_code(key.provider));
                out.str(&key.external_user_id);
                out.str(&key.institution_id);
                account.encode_compact(out);
            }
            Folded::Merchant { status, version } => {
                out.u8(2);
                out.varint(version.0);
                match status {
                    None => out.u8(0),
                    Some(status) => {
                        out.u8(1);
                        status.encode_compact(out);
                    }
                }
            }
            Folded::Quarantine(entry) => {
                out.u8(3);
                match entry {
                    None => out.u8(0),
                    Some(entry) => {
                        out.u8(1);
                        entry.encode_compact(out);
                    }
                }
            }
        }
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        match input.u8("stream kind")? {
            0 => Ok(Folded::Session(Box::new(Session::decode_compact(input)?))),
            1 => Ok(Folded::Account {
                key: AccountKey {
                    provider: input.choice("account provider", &Provider::ALL)?,
                    external_user_id: input.str("account user id")?,
                    institution_id: input.str("account institution id")?,
                },
                account: Account::decode_compact(input)?,
            }),
            2 => {
                let version = Version(input.varint("merchant version")?);
                let status = if input.present("merchant status")? {
                    Some(MerchantStatus::decode_compact(input)?)
                } else {
                    None
                };
                Ok(Folded::Merchant { status, version })
            }
            3 => {
                let entry = if input.present("quarantine entry")? {
                    Some(QuarantineEntry::decode_compact(input)?)
                } else {
                    None
                };
                Ok(Folded::Quarantine(entry))
            }
            other => Err(input.error(
                "stream kind",
                format!(
                    "code {other}, expected 0 (session), 1 (account), 2 (merchant) or 3 (quarantine)"
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use linkflow_core::compact::{from_compact, to_compact};
    use linkflow_core::{AccountEvent, AccountEventKind, Availability};

    use super::*;

    #[test]
    fn every_kind_of_state_round_trips_through_its_compact_form() {
        let mut account = Account::new();
        account
            .apply_in_place(&AccountEvent::new(AccountEventKind::Linked))
            .unwrap();
        let states = [
            Folded::Session(Box::default()),
            Folded::Account {
                key: AccountKey {
                    provider: Provider::Knot,
                    external_user_id: "user-1".into(),
                    institution_id: "10".into(),
                },
                account,
            },
            Folded::Merchant {
                status: None,
                version: Version::EMPTY,
            },
            Folded::Merchant {
                status: Some(MerchantStatus {
                    merchant_id: "10".into(),
                    name: Some("Uber".into()),
                    category: None,
                    logo: None,
                    product_type: "card_switcher".into(),
                    platform: "ios".into(),
                    sdk: None,
                    status: Availability::Up,
                    since: chrono::DateTime::from_timestamp(1_710_864_000, 0).unwrap(),
                }),
                version: Version(3),
            },
            Folded::Quarantine(None),
            Folded::Quarantine(Some(QuarantineEntry::new(linkflow_core::Quarantined {
                feed: "benji".into(),
                reason: "no session id".into(),
                origin: linkflow_core::Origin::new("POST /v1/events/benji"),
            }))),
        ];
        for state in states {
            let bytes = to_compact(&state);
            assert_eq!(from_compact::<Folded>(&bytes).unwrap(), state);
        }
        let error = from_compact::<Folded>(&[7]).unwrap_err();
        assert_eq!(error.what, "stream kind");
    }

    #[test]
    fn snapshots_decode_compact_and_the_json_ones_written_before() {
        let mut session = Session::new();
        session
            .apply_in_place(&linkflow_core::Event::new(linkflow_core::EventKind::Opened))
            .unwrap();
        let folded = Folded::Session(Box::new(session));
        let compact = encode_snapshot_state(&folded);
        assert_eq!(compact[0], SNAPSHOT_LAYOUT as u8);
        assert_eq!(decode_snapshot_state(&compact), Some(folded.clone()));
        let json = serde_json::to_vec(&SnapshotState {
            layout: SNAPSHOT_LAYOUT,
            state: &folded,
        })
        .unwrap();
        assert!(
            json.len() > compact.len() * 3,
            "{} vs {}",
            json.len(),
            compact.len()
        );
        assert_eq!(decode_snapshot_state(&json), Some(folded.clone()));
        // Another layout, a damaged body, or nothing: not decoded (the stream is replayed).
        let mut other_layout = compact.clone();
        other_layout[0] = SNAPSHOT_LAYOUT as u8 + 1;
        assert_eq!(decode_snapshot_state(&other_layout), None);
        assert_eq!(decode_snapshot_state(&compact[..compact.len() - 1]), None);
        assert_eq!(decode_snapshot_state(&[]), None);
        let old_json = serde_json::to_vec(&SnapshotState {
            layout: SNAPSHOT_LAYOUT - 1,
            state: &folded,
        })
        .unwrap();
        assert_eq!(decode_snapshot_state(&old_json), None);
    }

    proptest::proptest! {
        /// Snapshot bytes come from disk: whatever they hold, decoding answers (a state or
        /// `None`, so the stream is replayed), never panics.
        #[test]
        fn any_snapshot_bytes_decode_or_are_refused_without_a_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            flip in 0usize..400,
            value in proptest::prelude::any::<u8>(),
        ) {
            let _ = decode_snapshot_state(&bytes);
            let mut session = Session::new();
            session
                .apply_in_place(&linkflow_core::Event::new(linkflow_core::EventKind::Opened))
                .unwrap();
            let mut valid = encode_snapshot_state(&Folded::Session(Box::new(session)));
            let at = flip % valid.len();
            valid[at] = value;
            let _ = decode_snapshot_state(&valid);
        }
    }
}
