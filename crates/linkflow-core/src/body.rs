//! What one stored event says, by the kind of stream it belongs to.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::account::{
    AccountEvent, AccountEventKind, AccountKey, NOTICE_KINDS, OPERATION_KINDS, OUTCOMES,
};
use crate::compact::{Compact, CompactError, Input, Output};
use crate::erasure::Erasure;
use crate::event::{Attributes, ErrorInfo, Event, EventKind, Institution};
use crate::ids::{Provider, SessionId};
use crate::merchant::MerchantStatus;
use crate::quarantine::{Quarantined, Released};
use crate::session::{decode_link_type, encode_link_type};

/// The body of one stored event: a link-session event, a linked-account event, or a merchant
/// availability update. Each kind of stream holds one kind of body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventBody {
    /// An event of a link session.
    Session(Event),
    /// An event of a linked account.
    Account {
        /// The account.
        account: AccountKey,
        /// What happened to it.
        event: AccountEvent,
    },
    /// A merchant availability update.
    Merchant(MerchantStatus),
    /// A payload that named no stream it could go to, kept in its own quarantine stream.
    Quarantined(Quarantined),
    /// A quarantined payload released into a stream.
    QuarantineReleased(Released),
    /// A user's erasure, in the user's erasure stream (`erasure:<subject>`).
    Erased(Erasure),
}

impl EventBody {
    /// The provider time of the event.
    pub fn occurred_at(&self) -> Option<DateTime<Utc>> {
        match self {
            EventBody::Session(event) => event.occurred_at,
            EventBody::Account { event, .. } => event.occurred_at,
            EventBody::Merchant(status) => Some(status.since),
            EventBody::Quarantined(_) | EventBody::QuarantineReleased(_) => None,
            EventBody::Erased(erasure) => Some(erasure.at),
        }
    }

    /// The canonical snake_case name.
    pub fn name(&self) -> &'static str {
        match self {
            EventBody::Session(event) => event.kind.name(),
            EventBody::Account { event, .. } => event.name(),
            EventBody::Merchant(_) => "merchant_status",
            EventBody::Quarantined(_) => "quarantined",
            EventBody::QuarantineReleased(_) => "released",
            EventBody::Erased(_) => "erased",
        }
    }

    /// The session event, if this is one.
    pub fn as_session(&self) -> Option<&Event> {
        match self {
            EventBody::Session(event) => Some(event),
            _ => None,
        }
    }
}

/// Event kind code of `Unrecognized` in the compact form; known kinds are their index in
/// [`EventKind::KNOWN`].
const UNRECOGNIZED_KIND: u8 = 0xff;
const PROVIDERS: [Provider; 4] = Provider::ALL;

// Presence bits of the attributes, in the order the present ones follow the mask.
const LINK_TYPE: u8 = 1;
const INSTITUTION: u8 = 1 << 1;
const SCREEN_NAME: u8 = 1 << 2;
const SEARCH_TERM: u8 = 1 << 3;
const ERROR: u8 = 1 << 4;
const EXTERNAL_USER_ID: u8 = 1 << 5;
const EXIT_STATUS: u8 = 1 << 6;
/// Set when a varint of extended presence bits follows the present attributes: attributes
/// added after the first seven, so that records without them keep their bytes.
const EXTENDED: u8 = 1 << 7;
// Extended presence bits, in the order the present ones follow the extended mask.
const EXIT_STEP: u64 = 1;
const ITEM_ID: u64 = 1 << 1;
/// Every extended bit this build knows.
const KNOWN_EXTENDED: u64 = EXIT_STEP | ITEM_ID;

/// The compact form of an event body, as event records store it (record schema 3):
///
/// ```text
/// body     = u8(0) session | u8(1) account | u8(2) merchant-status | u8(3) quarantined
///            | u8(4) str(released-into stream)
///            | u8(5) str(subject) str(requested by) time varint(streams)
/// session  = u8(kind: index in EventKind::KNOWN, or 255 then str(raw name)) opt_time
///            u8(attribute mask) the present attributes in mask-bit order
///            [varint(extended mask) the present extended attributes] when mask bit 7 is set
/// account  = u8(provider) str(user id) str(institution id)
///            [u8(4) str(reason)] account-kind
///            opt_time u8(link type) varint(count) str(transaction id)...
/// account-kind = u8(0 linked | 1 login required | 2 operation u8(kind) u8(outcome)
///                   | 3 str(raw name) | 5 notice u8(notice kind))
/// ```
///
/// Times are absolute (base 0). This form is durable: a change to it needs a new record schema
/// that keeps this decoder, and the store pins its bytes in a test so that an accidental
/// change fails there.
impl Compact for EventBody {
    fn encode_compact(&self, out: &mut Output) {
        match self {
            EventBody::Session(event) => {
                out.u8(0);
                encode_event(event, out);
            }
            EventBody::Account { account, event } => {
                out.u8(1);
                out.u8(code_of(&PROVIDERS, &account.provider));
                out.str(&account.external_user_id);
                out.str(&account.institution_id);
                encode_account_event(event, out);
            }
            EventBody::Merchant(status) => {
                out.u8(2);
                status.encode_compact(out);
            }
            EventBody::Quarantined(quarantined) => {
                out.u8(3);
                quarantined.encode_compact(out);
            }
            EventBody::QuarantineReleased(released) => {
                out.u8(4);
                out.str(released.stream.as_str());
            }
            EventBody::Erased(erasure) => {
                out.u8(5);
                erasure.encode_compact(out);
            }
        }
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        match input.u8("body kind")? {
            0 => decode_event(input).map(EventBody::Session),
            1 => {
                let account = AccountKey {
                    provider: input.choice("account provider", &PROVIDERS)?,
                    external_user_id: input.str("account user id")?,
                    institution_id: input.str("account institution id")?,
                };
                let event = decode_account_event(input)?;
                Ok(EventBody::Account { account, event })
            }
            2 => MerchantStatus::decode_compact(input).map(EventBody::Merchant),
            3 => Quarantined::decode_compact(input).map(EventBody::Quarantined),
            4 => {
                let stream = input.str("released into")?;
                let stream = SessionId::new(stream)
                    .map_err(|error| input.error("released into", error.to_string()))?;
                Ok(EventBody::QuarantineReleased(Released { stream }))
            }
            5 => Erasure::decode_compact(input).map(EventBody::Erased),
            other => Err(input.error("body kind", format!("code {other}, expected 0 to 5"))),
        }
    }
}

/// The code of `value`: its index in `all`, which lists every value (the durable order).
impl Compact for Provider {
    fn encode_compact(&self, out: &mut Output) {
        out.u8(code_of(&PROVIDERS, self));
    }

    fn decode_compact(input: &mut Input<'_>) -> Result<Self, CompactError> {
        input.choice("provider", &PROVIDERS)
    }
}

fn code_of<T: PartialEq>(all: &[T], value: &T) -> u8 {
    let index = all
        .iter()
        .position(|known| known == value)
        .expect("the table lists every value");
    u8::try_from(index).expect("tables hold fewer than 256 values")
}

fn encode_event(event: &Event, out: &mut Output) {
    match &event.kind {
        EventKind::Unrecognized { raw_name } => {
            out.u8(UNRECOGNIZED_KIND);
            out.str(raw_name);
        }
        known => {
            out.u8(code_of(&EventKind::KNOWN, known));
        }
    }
    // Which times follow: bit 0 the provider time, bit 1 the receive time.
    out.u8(u8::from(event.occurred_at.is_some()) | u8::from(event.received_at.is_some()) << 1);
    for at in [event.occurred_at, event.received_at].into_iter().flatten() {
        out.time(at, 0);
    }
    let attributes = &event.attributes;
    let mut mask = 0;
    for (bit, present) in [
        (LINK_TYPE, attributes.link_type.is_some()),
        (INSTITUTION, attributes.institution.is_some()),
        (SCREEN_NAME, attributes.screen_name.is_some()),
        (SEARCH_TERM, attributes.search_term.is_some()),
        (ERROR, attributes.error.is_some()),
        (EXTERNAL_USER_ID, attributes.external_user_id.is_some()),
        (EXIT_STATUS, attributes.exit_status.is_some()),
    ] {
        if present {
            mask |= bit;
        }
    }
    let extended = [
        (EXIT_STEP, attributes.exit_step.is_some()),
        (ITEM_ID, attributes.item_id.is_some()),
    ]
    .into_iter()
    .filter(|(_, present)| *present)
    .fold(0, |mask, (bit, _)| mask | bit);
    if extended != 0 {
        mask |= EXTENDED;
    }
    out.u8(mask);
    if attributes.link_type.is_some() {
        encode_link_type(out, attributes.link_type);
    }
    if let Some(institution) = &attributes.institution {
        out.str(&institution.id);
        out.opt_str(institution.name.as_deref());
    }
    for text in [&attributes.screen_name, &attributes.search_term]
        .into_iter()
        .flatten()
    {
        out.str(text);
    }
    if let Some(error) = &attributes.error {
        out.opt_str(error.id.as_deref());
        out.opt_str(error.code.as_deref());
        out.opt_str(error.message.as_deref());
        out.opt_str(error.request_id.as_deref());
    }
    for text in [&attributes.external_user_id, &attributes.exit_status]
        .into_iter()
        .flatten()
    {
        out.str(text);
    }
    if extended != 0 {
        out.varint(extended);
        for text in [&attributes.exit_step, &attributes.item_id]
            .into_iter()
            .flatten()
        {
            out.str(text);
        }
    }
}

fn decode_event(input: &mut Input<'_>) -> Result<Event, CompactError> {
    let kind = match input.u8("event kind")? {
        UNRECOGNIZED_KIND => EventKind::Unrecognized {
            raw_name: input.str("unrecognized event name")?,
        },
        code => EventKind::KNOWN
            .get(usize::from(code))
            .cloned()
            .ok_or_else(|| {
                input.error(
                    "event kind",
                    format!(
                        "code {code}, expected below {} or {UNRECOGNIZED_KIND}",
                        EventKind::KNOWN.len()
                    ),
                )
            })?,
    };
    let times = input.u8("event times")?;
    if times > 3 {
        return Err(input.error("event times", format!("{times}, expected 0 to 3")));
    }
    let occurred_at = if times & 1 != 0 {
        Some(input.time("event time", 0)?)
    } else {
        None
    };
    let received_at = if times & 2 != 0 {
        Some(input.time("event receive time", 0)?)
    } else {
        None
    };
    let mask = input.u8("attribute mask")?;
    let mut attributes = Attributes::default();
    if mask & LINK_TYPE != 0 {
        attributes.link_type = decode_link_type(input)?;
        if attributes.link_type.is_none() {
            return Err(input.error("link type", "marked present but none"));
        }
    }
    if mask & INSTITUTION != 0 {
        attributes.institution = Some(Institution {
            id: input.str("institution id")?,
            name: input.opt_str("institution name")?,
        });
    }
    if mask & SCREEN_NAME != 0 {
        attributes.screen_name = Some(input.str("screen name")?);
    }
    if mask & SEARCH_TERM != 0 {
        attributes.search_term = Some(input.str("search term")?);
    }
    if mask & ERROR != 0 {
        attributes.error = Some(ErrorInfo {
            id: input.opt_str("error id")?,
            code: input.opt_str("error code")?,
            message: input.opt_str("error message")?,
            request_id: input.opt_str("error request id")?,
        });
    }
    if mask & EXTERNAL_USER_ID != 0 {
        attributes.external_user_id = Some(input.str("external user id")?);
    }
    if mask & EXIT_STATUS != 0 {
        attributes.exit_status = Some(input.str("exit status")?);
    }
    if mask & EXTENDED != 0 {
        let extended = input.varint("extended attribute mask")?;
        if extended == 0 || extended & !KNOWN_EXTENDED != 0 {
            return Err(input.error(
                "extended attribute mask",
                format!("unknown bits in {extended:#x}"),
            ));
        }
        if extended & EXIT_STEP != 0 {
            attributes.exit_step = Some(input.str("exit step")?);
        }
        if extended & ITEM_ID != 0 {
            attributes.item_id = Some(input.str("item id")?);
        }
    }
    Ok(Event {
        kind,
        occurred_at,
        received_at,
        attributes,
    })
}

/// The code that puts a failure reason in front of an account event's kind code.
const ACCOUNT_REASON: u8 = 4;
/// The code of the expiry time that may precede an account event's kind (after its reason).
const ACCOUNT_EXPIRES: u8 = 7;

fn encode_account_event(event: &AccountEvent, out: &mut Output) {
    if let Some(reason) = &event.reason {
        out.u8(ACCOUNT_REASON);
        out.str(reason);
    }
    if let Some(expires_at) = event.expires_at {
        out.u8(ACCOUNT_EXPIRES);
        out.time(expires_at, 0);
    }
    match &event.kind {
        AccountEventKind::Linked => out.u8(0),
        AccountEventKind::LoginRequired => out.u8(1),
        AccountEventKind::Operation { kind, outcome } => {
            out.u8(2);
            out.u8(code_of(&OPERATION_KINDS, kind));
            out.u8(code_of(&OUTCOMES, outcome));
        }
        AccountEventKind::Unrecognized { raw_name } => {
            out.u8(3);
            out.str(raw_name);
        }
        AccountEventKind::Notice(kind) => {
            out.u8(5);
            out.u8(code_of(&NOTICE_KINDS, kind));
        }
        AccountEventKind::LinkWithdrawn => out.u8(6),
        AccountEventKind::LoginRepaired => out.u8(8),
        AccountEventKind::ExpiryPending => out.u8(9),
        AccountEventKind::Revoked => out.u8(10),
    }
    out.opt_time(event.occurred_at, 0);
    encode_link_type(out, event.link_type);
    out.varint(event.transaction_ids.len() as u64);
    for id in &event.transaction_ids {
        out.str(id);
    }
}

fn decode_account_event(input: &mut Input<'_>) -> Result<AccountEvent, CompactError> {
    let mut code = input.u8("account event kind")?;
    let mut reason = None;
    if code == ACCOUNT_REASON {
        reason = Some(input.str("account event reason")?);
        code = input.u8("account event kind")?;
    }
    let mut expires_at = None;
    if code == ACCOUNT_EXPIRES {
        expires_at = Some(input.time("account expiry time", 0)?);
        code = input.u8("account event kind")?;
    }
    let kind = match code {
        0 => AccountEventKind::Linked,
        1 => AccountEventKind::LoginRequired,
        2 => AccountEventKind::Operation {
            kind: input.choice("operation kind", &OPERATION_KINDS)?,
            outcome: input.choice("operation outcome", &OUTCOMES)?,
        },
        3 => AccountEventKind::Unrecognized {
            raw_name: input.str("unrecognized account event name")?,
        },
        5 => AccountEventKind::Notice(input.choice("notice kind", &NOTICE_KINDS)?),
        6 => AccountEventKind::LinkWithdrawn,
        8 => AccountEventKind::LoginRepaired,
        9 => AccountEventKind::ExpiryPending,
        10 => AccountEventKind::Revoked,
        other => {
            return Err(input.error(
                "account event kind",
                format!("code {other}, expected 0 to 3, 5, 6 or 8 to 10"),
            ))
        }
    };
    let occurred_at = input.opt_time("account event time", 0)?;
    let link_type = decode_link_type(input)?;
    let count = input.count("transaction ids")?;
    let transaction_ids = (0..count)
        .map(|_| input.str("transaction id"))
        .collect::<Result<_, _>>()?;
    Ok(AccountEvent {
        kind,
        occurred_at,
        link_type,
        transaction_ids,
        reason,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use proptest::prelude::*;

    use super::*;
    use crate::account::{NoticeKind, OperationKind, Outcome};
    use crate::compact::{from_compact, to_compact};
    use crate::event::LinkType;
    use crate::merchant::Availability;
    use crate::strategy::{legal_walk, telemetry_event, unrecognized_event};

    fn every_field_set() -> Vec<EventBody> {
        let at = Utc.timestamp_opt(1_710_864_000, 250_000_000).unwrap();
        let mut session = Event::new(EventKind::Exited)
            .at(at)
            .with_institution("ins_1", Some("Bank"))
            .with_link_type(LinkType::Relink)
            .with_screen("mfa")
            .with_exit_status("user_cancelled")
            .with_exit_step("partner_login")
            .with_error(ErrorInfo {
                id: Some("err_1".into()),
                code: None,
                message: Some("Wrong code".into()),
                request_id: Some("req_1".into()),
            });
        session.attributes.search_term = Some("chase".into());
        session.attributes.external_user_id = Some("user-1".into());
        let mut plaid_success = Event::new(EventKind::Succeeded).at(at);
        plaid_success.attributes.item_id = Some("item_1".into());
        let mut expiry = AccountEvent::new(AccountEventKind::ExpiryPending).at(at);
        expiry.expires_at = Some(at + chrono::Duration::days(7));
        expiry.reason = Some("INSTITUTION_TOKEN_EXPIRATION".into());
        let item = AccountKey::plaid_item("item_1");
        let plaid = [
            expiry,
            AccountEvent::new(AccountEventKind::LoginRepaired),
            AccountEvent::new(AccountEventKind::Revoked),
            AccountEvent::new(AccountEventKind::Notice(NoticeKind::NewAccountsAvailable)),
        ]
        .map(|event| EventBody::Account {
            account: item.clone(),
            event,
        });
        let mut checkout = AccountEvent::new(AccountEventKind::Operation {
            kind: OperationKind::Checkout,
            outcome: Outcome::Failed,
        })
        .at(at);
        checkout.transaction_ids = vec!["tx_1".into(), "tx_2".into()];
        checkout.reason = Some("card declined".into());
        let mut updated =
            AccountEvent::new(AccountEventKind::Notice(NoticeKind::TransactionsUpdated));
        updated.transaction_ids = vec!["tx_3".into()];
        let mut linked = AccountEvent::new(AccountEventKind::Linked);
        linked.link_type = Some(LinkType::FailoverLink);
        let key = AccountKey {
            provider: Provider::Knot,
            external_user_id: "user-1".into(),
            institution_id: "10".into(),
        };
        let mut bodies = vec![
            EventBody::Session(session),
            EventBody::Session(plaid_success),
            EventBody::Session(Event::new(EventKind::Created)),
            EventBody::Session(Event::new(EventKind::Unrecognized {
                raw_name: "new_thing".into(),
            })),
            EventBody::Account {
                account: key.clone(),
                event: checkout,
            },
            EventBody::Account {
                account: key.clone(),
                event: linked,
            },
            EventBody::Account {
                account: key.clone(),
                event: updated,
            },
            EventBody::Account {
                account: key,
                event: AccountEvent::new(AccountEventKind::Unrecognized {
                    raw_name: "NEW_WEBHOOK".into(),
                }),
            },
            EventBody::Merchant(MerchantStatus {
                sdk: Some("2.1.0".into()),
                ..crate::merchant::tests::status(7, Availability::Down)
            }),
            EventBody::Quarantined(Quarantined {
                feed: "benji".into(),
                reason: "no session id".into(),
                origin: crate::quarantine::Origin::new("POST /v1/events/benji")
                    .at("line 1")
                    .with_param("external_user_id", "u1"),
            }),
            EventBody::QuarantineReleased(Released {
                stream: SessionId::new("s1").unwrap(),
            }),
        ];
        bodies.extend(plaid);
        bodies
    }

    #[test]
    fn every_kind_of_body_round_trips_and_every_truncation_is_an_error() {
        for body in every_field_set() {
            let bytes = to_compact(&body);
            assert_eq!(from_compact::<EventBody>(&bytes).unwrap(), body);
            let json = serde_json::to_vec(&body).unwrap();
            assert!(bytes.len() < json.len(), "{body:?}: {} bytes", bytes.len());
            for cut in 0..bytes.len() {
                assert!(
                    from_compact::<EventBody>(&bytes[..cut]).is_err(),
                    "cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn damaged_codes_name_the_field() {
        let body = EventBody::Session(Event::new(EventKind::Opened));
        let mut bytes = to_compact(&body);
        bytes[1] = 200;
        let error = from_compact::<EventBody>(&bytes).unwrap_err();
        assert_eq!((error.what, error.at), ("event kind", 2), "{error}");
        let mut bytes = to_compact(&body);
        *bytes.last_mut().unwrap() = 0x80;
        bytes.push(0x40);
        let error = from_compact::<EventBody>(&bytes).unwrap_err();
        assert_eq!(error.what, "extended attribute mask", "{error}");
        let error = from_compact::<EventBody>(&[7]).unwrap_err();
        assert_eq!(error.what, "body kind", "{error}");
    }

    proptest! {
        #[test]
        fn generated_events_round_trip(
            walk in legal_walk(30),
            telemetry in telemetry_event(),
            unrecognized in unrecognized_event(),
        ) {
            for event in walk.events.into_iter().chain([telemetry, unrecognized]) {
                let body = EventBody::Session(event);
                let bytes = to_compact(&body);
                prop_assert_eq!(from_compact::<EventBody>(&bytes).unwrap(), body);
            }
        }

        #[test]
        fn any_bytes_decode_or_are_refused_without_a_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let _ = from_compact::<EventBody>(&bytes);
        }
    }
}
