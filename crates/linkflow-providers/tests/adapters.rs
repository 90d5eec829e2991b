//! Every sample payload of the vendor docs (kept as files in `tests/fixtures/<provider>/`) and
//! every real SDK shape (`tests/fixtures/real/`, each citing its source) through its adapter,
//! the intake rule (only non-JSON is refused; odd fields are warnings; no stream means
//! quarantine), dedupe keys, signatures, and no-panic properties.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use linkflow_core::{
    fold, AccountEventKind, EventKind, LinkType, NoticeKind, OperationKind, Outcome, Phase,
    SessionId,
};
use linkflow_providers::{
    decode, signature, split_all, Availability, DecodeContext, DecodeError, Decoded, Decoding,
    Feed, Target, Unrouted,
};
use proptest::prelude::*;
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn fixture(relative: &str) -> String {
    let path = fixtures().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn context() -> DecodeContext {
    DecodeContext::received_at(Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap())
}

fn event(decoding: Decoding) -> Decoded {
    match decoding {
        Decoding::Event(decoded) => decoded,
        Decoding::Quarantine(unrouted) => panic!("quarantined: {}", unrouted.reason),
    }
}

fn quarantined(decoding: Decoding) -> Unrouted {
    match decoding {
        Decoding::Quarantine(unrouted) => unrouted,
        Decoding::Event(decoded) => panic!("expected quarantine, got {:?}", decoded.target),
    }
}

fn session_event(decoded: &Decoded) -> (&SessionId, &linkflow_core::Event) {
    match &decoded.target {
        Target::Session { session, event } => (session, event),
        other => panic!("expected a session event, got {other:?}"),
    }
}

fn decode_ok(feed: Feed, text: &str, context: &DecodeContext) -> Decoded {
    event(decode(feed, text, context).unwrap_or_else(|error| panic!("{error}: {text}")))
}

fn decode_fixture(feed: Feed, relative: &str) -> Decoded {
    decode_ok(feed, &fixture(relative), &context())
}

fn warning_paths(decoded: &Decoded) -> Vec<&str> {
    decoded
        .warnings
        .iter()
        .map(|warning| warning.path.as_str())
        .collect()
}

#[test]
fn moneykit_sample_flow_decodes_to_a_succeeded_session_keeping_the_misspelling() {
    let body = fixture("moneykit/sample_flow.json");
    let texts: Vec<String> = split_all(body.as_bytes())
        .into_iter()
        .map(|(_, text)| text.unwrap())
        .collect();
    assert_eq!(texts.len(), 14);
    let decoded: Vec<Decoded> = texts
        .iter()
        .map(|text| decode_ok(Feed::Moneykit, text, &context()))
        .collect();
    let events: Vec<_> = decoded.iter().map(|d| session_event(d).1.clone()).collect();
    let session = fold(&events).unwrap();
    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(decoded[4].raw_name, "submit_credentails");
    assert_eq!(
        events[4].kind,
        EventKind::Unrecognized {
            raw_name: "submit_credentails".into()
        }
    );
    // The institution first appears in meta on a change_screen: that event carries it.
    assert_eq!(
        events[2].attributes.institution.as_ref().unwrap().id,
        "moneykit-creds-bank"
    );
    assert_eq!(
        session_event(&decoded[0]).0.as_str(),
        "sandbox_6624ccbc-69bb-4d0d-951a-807715fe6a94"
    );
    assert_eq!(
        events[0].occurred_at.unwrap().to_rfc3339(),
        "2023-11-29T12:44:31.804+00:00"
    );
    // Raw payloads are the delivered text, verbatim, and the doc's payloads raise no warning.
    assert_eq!(decoded[1].raw, texts[1]);
    assert!(decoded[1]
        .raw
        .contains("\"current_screen_name\" : \"Finder\""));
    assert!(decoded.iter().all(|d| d.warnings.is_empty()));
}

#[test]
fn moneykit_maps_all_21_documented_names() {
    assert_eq!(linkflow_providers::moneykit::EVENT_NAMES.len(), 21);
    for (name, kind) in linkflow_providers::moneykit::EVENT_NAMES {
        let text = format!(
            r#"{{"name":"{name}","properties":{{}},"meta":{{"link_session_id":"s1","link_type":"Link","timestamp":"2023-11-29T12:44:31.804Z"}}}}"#
        );
        let decoded = decode_ok(Feed::Moneykit, &text, &context());
        assert_eq!(session_event(&decoded).1.kind, kind, "{name}");
    }
}

#[test]
fn moneykit_property_samples_fill_the_attributes() {
    let error = decode_fixture(Feed::Moneykit, "moneykit/error.json");
    let error = session_event(&error).1.attributes.error.clone().unwrap();
    assert_eq!(
        (error.id, error.message, error.request_id),
        (None, None, None)
    );

    let screen = decode_fixture(Feed::Moneykit, "moneykit/change_screen_finder.json");
    assert_eq!(
        session_event(&screen).1.attributes.screen_name.as_deref(),
        Some("Finder")
    );

    let selected = decode_fixture(Feed::Moneykit, "moneykit/select_institution.json");
    let institution = session_event(&selected)
        .1
        .attributes
        .institution
        .clone()
        .unwrap();
    assert_eq!(institution.id, "moneykit-creds-bank");
    assert_eq!(institution.name.as_deref(), Some("Credentials Bank"));

    let search = decode_fixture(Feed::Moneykit, "moneykit/search_institution.json");
    assert_eq!(
        session_event(&search).1.attributes.search_term.as_deref(),
        Some("moneykit")
    );

    let relink = decode_fixture(Feed::Moneykit, "moneykit/relink_meta.json");
    assert_eq!(
        session_event(&relink).1.attributes.link_type,
        Some(LinkType::Relink)
    );

    let failover = decode_fixture(Feed::Moneykit, "moneykit/failover_link_event.json");
    let (_, event) = session_event(&failover);
    assert_eq!(event.attributes.link_type, Some(LinkType::FailoverLink));
    assert_eq!(event.kind, EventKind::CredentialsSubmitted);
    assert_eq!(
        event
            .attributes
            .institution
            .as_ref()
            .unwrap()
            .name
            .as_deref(),
        Some("Credentials Bank")
    );
}

/// The doc's two standalone examples have no `meta`, so no session: they used to be refused
/// (`$.meta is missing`); now they are quarantined, and a session supplied with the request
/// takes them.
#[test]
fn moneykit_doc_examples_without_meta_are_quarantined_or_take_the_callers_session() {
    for relative in [
        "moneykit/doc_change_screen_without_meta.json",
        "moneykit/doc_search_institution_without_meta.json",
    ] {
        let unrouted = quarantined(decode(Feed::Moneykit, &fixture(relative), &context()).unwrap());
        assert!(
            unrouted.reason.contains("no session id"),
            "{relative}: {}",
            unrouted.reason
        );
        assert!(unrouted
            .stream_id()
            .as_str()
            .starts_with("quarantine:moneykit:"));
        let mut with_session = context();
        with_session.session_id = Some(SessionId::new("s-from-caller").unwrap());
        let decoded = decode_ok(Feed::Moneykit, &fixture(relative), &with_session);
        assert_eq!(session_event(&decoded).0.as_str(), "s-from-caller");
    }
}

/// The intake rule: a field the adapter cannot read is a warning naming its path, and the
/// payload is still an event (what used to be a `DecodeError` per field).
#[test]
fn odd_fields_are_warnings_with_their_json_path_never_errors() {
    let cases = [
        (r#"{"name": 5, "meta": {"link_session_id": "s"}}"#, "$.name"),
        (
            r#"{"name": "open", "meta": {"link_session_id": "s", "timestamp": "yesterday"}}"#,
            "$.meta.timestamp",
        ),
        (
            r#"{"name": "open", "meta": {"link_session_id": "s", "link_type": "Upgrade"}}"#,
            "$.meta.link_type",
        ),
        (
            r#"{"name": "open", "properties": [], "meta": {"link_session_id": "s"}}"#,
            "$.properties",
        ),
        (
            r#"{"name": "search_institution", "properties": {"search_term": {"q": 1}}, "meta": {"link_session_id": "s"}}"#,
            "$.properties.search_term",
        ),
        (
            r#"{"name": "open", "meta": {"link_session_id": "s", "institution_id": true}}"#,
            "$.meta.institution_id",
        ),
    ];
    for (text, path) in cases {
        let decoded = decode_ok(Feed::Moneykit, text, &context());
        assert_eq!(warning_paths(&decoded), [path], "{text}");
        assert_eq!(decoded.raw, text, "the payload is kept whole");
    }
    // A number where a string is expected is read as its text.
    let decoded = decode_ok(
        Feed::Moneykit,
        r#"{"name": "search_institution", "properties": {"search_term": 3}, "meta": {"link_session_id": "s"}}"#,
        &context(),
    );
    assert_eq!(
        session_event(&decoded).1.attributes.search_term.as_deref(),
        Some("3")
    );
    // A Knot webhook with a timestamp that is not one: stored without a provider time.
    let knot = decode_ok(
        Feed::Knot,
        r#"{"event":"CHECKOUT_FAILED","external_user_id":"u","merchant":{"id":10},"timestamp":"soon"}"#,
        &context(),
    );
    assert_eq!(warning_paths(&knot), ["$.timestamp"]);
    // Only text that is not JSON is an error.
    let error = decode(Feed::Moneykit, "{\"name\": ", &context()).unwrap_err();
    assert!(
        matches!(error, DecodeError::NotJson { line: 1, .. }),
        "{error}"
    );
}

/// What names no stream is quarantined with the reason, whatever its JSON type.
#[test]
fn payloads_that_name_no_stream_are_quarantined_with_the_reason() {
    let cases = [
        (
            Feed::Moneykit,
            r#"{"name": "open", "meta": {"timestamp": "2023-11-29T12:44:31.804Z"}}"#,
            "no session id",
        ),
        (
            Feed::Moneykit,
            r#"{"name": "open", "meta": {"link_session_id": ""}}"#,
            "not a usable session id",
        ),
        (Feed::Moneykit, r#"[1, 2]"#, "not a JSON object"),
        (Feed::Benji, r#"{"callback": "onExit"}"#, "no session id"),
        (Feed::KnotSdk, r#"{"callback": "onExit"}"#, "no session id"),
        (Feed::Knot, r#""AUTHENTICATED""#, "not a JSON object"),
        (
            Feed::Knot,
            r#"{"event": "SESSION_EXPIRED", "timestamp": 1710864923198}"#,
            "names no stream",
        ),
    ];
    for (feed, text, reason) in cases {
        let unrouted = quarantined(decode(feed, text, &context()).unwrap());
        assert!(
            unrouted.reason.contains(reason),
            "{text}: {}",
            unrouted.reason
        );
        assert_eq!(unrouted.provider, feed.provider());
        assert_eq!(unrouted.raw, text);
    }
    // The same payload is the same entry; another is another.
    let a = quarantined(decode(Feed::Benji, r#"{"callback":"onExit"}"#, &context()).unwrap());
    let b = quarantined(decode(Feed::Benji, "{ \"callback\" : \"onExit\" }", &context()).unwrap());
    let c = quarantined(decode(Feed::Benji, r#"{"callback":"onSuccess"}"#, &context()).unwrap());
    assert_eq!(a.stream_id(), b.stream_id());
    assert_ne!(a.stream_id(), c.stream_id());
    // An account key that cannot be a stream id (a control character) is no stream either.
    let bad_user = quarantined(
        decode(
            Feed::Knot,
            r#"{"event":"ACCOUNT_LOGIN_REQUIRED","external_user_id":"u\n1","merchant":{"id":10},"timestamp":1710864923198}"#,
            &context(),
        )
        .unwrap(),
    );
    assert!(
        bad_user.reason.contains("not usable"),
        "{}",
        bad_user.reason
    );
}

#[test]
fn the_payloads_session_wins_over_the_callers_and_the_outcome_says_so() {
    let mut with_session = context();
    with_session.session_id = Some(SessionId::new("from-caller").unwrap());
    let decoded = decode_ok(
        Feed::Moneykit,
        r#"{"name":"open","meta":{"link_session_id":"from-payload"}}"#,
        &with_session,
    );
    assert_eq!(session_event(&decoded).0.as_str(), "from-payload");
    assert_eq!(warning_paths(&decoded), ["$.meta.link_session_id"]);
    assert!(decoded.warnings[0].message.contains("from-caller"));
}

#[test]
fn a_redelivery_has_the_same_dedupe_key_however_it_is_formatted() {
    let a = r#"{"name":"open","properties":{},"meta":{"link_session_id":"s1","timestamp":"2023-11-29T12:44:31.804Z"}}"#;
    let b = "{ \"meta\" : {\"timestamp\":\"2023-11-29T12:44:31.804Z\", \"link_session_id\":\"s1\"},\n \"properties\":{}, \"name\":\"open\" }";
    let c = r#"{"name":"open","properties":{},"meta":{"link_session_id":"s1","timestamp":"2023-11-29T12:44:32.804Z"}}"#;
    let key = |text| decode_ok(Feed::Moneykit, text, &context()).dedupe_key;
    assert_eq!(key(a), key(b));
    assert_ne!(key(a), key(c));
    // The same Knot webhook retried is the same delivery.
    let webhook = fixture("knot/checkout_succeeded.json");
    let first = decode_ok(Feed::Knot, &webhook, &context());
    let mut later = context();
    later.received_at += chrono::Duration::minutes(5);
    assert_eq!(
        first.dedupe_key,
        decode_ok(Feed::Knot, &webhook, &later).dedupe_key
    );
}

#[test]
fn benji_callbacks_map_to_the_canonical_events() {
    let cases = [
        (
            "benji/on_event_user_partner_select.json",
            EventKind::InstitutionSelected,
            "user_partner_select",
        ),
        (
            "benji/on_event_user_authenticated_with_partner.json",
            EventKind::Authenticated,
            "user_authenticated_with_partner",
        ),
        (
            "benji/on_event_go_back_clicked.json",
            EventKind::WentBack,
            "go_back_clicked",
        ),
        (
            "benji/on_event_user_inactive.json",
            EventKind::Inactive,
            "user_inactive",
        ),
        (
            "benji/on_error_unexpected_error.json",
            EventKind::Error,
            "onError",
        ),
        (
            "benji/on_error_partner_connect_error.json",
            EventKind::Error,
            "onError",
        ),
        ("benji/on_success.json", EventKind::Succeeded, "onSuccess"),
        ("benji/on_exit.json", EventKind::Exited, "onExit"),
    ];
    for (relative, kind, raw_name) in cases {
        let decoded = decode_fixture(Feed::Benji, relative);
        let (session, event) = session_event(&decoded);
        assert_eq!(event.kind, kind, "{relative}");
        assert_eq!(decoded.raw_name, raw_name);
        assert_eq!(session.as_str(), "benji_sess_1");
        // No provider time: none orders it; its receive time is kept.
        assert_eq!(event.occurred_at, None);
        assert_eq!(event.received_at, Some(context().received_at));
        assert_eq!(event.time(), Some(context().received_at));
    }
    let selected = decode_fixture(Feed::Benji, "benji/on_event_user_partner_select.json");
    let attributes = &session_event(&selected).1.attributes;
    assert_eq!(
        attributes.institution.as_ref().unwrap().id,
        "<the Benji partner ID"
    );
    assert!(attributes
        .external_user_id
        .as_deref()
        .unwrap()
        .starts_with("<the ID of the user"));
    assert_eq!(
        attributes.screen_name.as_deref(),
        Some("the screen name as part of the Benji flow")
    );
    let error = decode_fixture(Feed::Benji, "benji/on_error_partner_connect_error.json");
    let error = session_event(&error).1.attributes.error.clone().unwrap();
    assert_eq!(error.code.as_deref(), Some("partner_connect_error"));
    assert_eq!(error.id.as_deref(), Some("err_3d4e5f"));
}

#[test]
fn benji_takes_the_session_from_the_caller_when_the_envelope_has_none() {
    let text = fixture("benji/on_exit_without_session.json");
    let unrouted = quarantined(decode(Feed::Benji, &text, &context()).unwrap());
    assert!(unrouted.reason.contains("no session id"));
    let mut with_session = context();
    with_session.session_id = Some(SessionId::new("from-integrator").unwrap());
    let decoded = decode_ok(Feed::Benji, &text, &with_session);
    assert_eq!(session_event(&decoded).0.as_str(), "from-integrator");
}

#[test]
fn knot_authenticated_completes_the_session_with_the_merchant_as_institution() {
    let decoded = decode_fixture(Feed::Knot, "knot/authenticated.json");
    let (session, event) = session_event(&decoded);
    assert_eq!(session.as_str(), "fb5aa994-ed1c-4c3e-b29a-b2a53222e584");
    assert_eq!(event.kind, EventKind::Succeeded);
    let institution = event.attributes.institution.clone().unwrap();
    assert_eq!(
        (institution.id.as_str(), institution.name.as_deref()),
        ("10", Some("Uber"))
    );
    assert_eq!(
        event.attributes.external_user_id.as_deref(),
        Some("3dcbb19a-b2f1-4a7b-8792-d76027b627b3")
    );
    assert_eq!(
        event.occurred_at.unwrap().timestamp_millis(),
        1_710_864_923_198
    );
    let string_time = decode_fixture(Feed::Knot, "knot/authenticated_string_timestamp.json");
    assert_eq!(session_event(&string_time).1.occurred_at, event.occurred_at);
    // A session that only ever sees AUTHENTICATED ends succeeded.
    assert_eq!(fold([event]).unwrap().phase(), Phase::Succeeded);
    // Without a session id, AUTHENTICATED still links the account.
    let without =
        fixture("knot/authenticated.json").replace("\"session_id\"", "\"other_session_field\"");
    let decoded = decode_ok(Feed::Knot, &without, &context());
    let Target::Account { event, .. } = decoded.target else {
        panic!("expected the account, got {:?}", decoded.target)
    };
    assert_eq!(event.kind, AccountEventKind::Linked);
}

#[test]
fn knot_account_webhooks_go_to_the_linked_accounts_stream() {
    let cases = [
        (
            "knot/sync_cart_succeeded.json",
            AccountEventKind::Operation {
                kind: OperationKind::CartSync,
                outcome: Outcome::Succeeded,
            },
        ),
        (
            "knot/sync_cart_failed.json",
            AccountEventKind::Operation {
                kind: OperationKind::CartSync,
                outcome: Outcome::Failed,
            },
        ),
        (
            "knot/checkout_succeeded.json",
            AccountEventKind::Operation {
                kind: OperationKind::Checkout,
                outcome: Outcome::Succeeded,
            },
        ),
        (
            "knot/checkout_failed.json",
            AccountEventKind::Operation {
                kind: OperationKind::Checkout,
                outcome: Outcome::Failed,
            },
        ),
        (
            "knot/account_login_required.json",
            AccountEventKind::LoginRequired,
        ),
    ];
    for (relative, kind) in cases {
        let decoded = decode_fixture(Feed::Knot, relative);
        let Target::Account { account, event } = &decoded.target else {
            panic!("{relative}: expected an account event");
        };
        assert_eq!(event.kind, kind, "{relative}");
        assert_eq!(account.provider, linkflow_core::Provider::Knot);
        assert_eq!(account.external_user_id, "{your-unique-identifier}");
        assert!(account.stream_id().is_ok());
    }
    let checkout = decode_fixture(Feed::Knot, "knot/checkout_succeeded.json");
    let Target::Account { account, event } = checkout.target else {
        unreachable!()
    };
    assert_eq!(account.institution_id, "7");
    assert_eq!(
        event.transaction_ids,
        [
            "13da3c28-a068-4642-9ce2-b730cfda5f5f",
            "8f2a1c71-4b03-4458-a3f7-c5e6a4dc1d2b"
        ]
    );
}

#[test]
fn knot_merchant_status_update_is_an_availability_update() {
    let decoded = decode_fixture(Feed::Knot, "knot/merchant_status_update.json");
    let Target::Merchant(status) = decoded.target else {
        panic!("expected a merchant update")
    };
    assert_eq!(status.merchant_id, "10");
    assert_eq!(status.name.as_deref(), Some("Uber"));
    assert_eq!(status.category.as_deref(), Some("Transportation"));
    assert_eq!(
        (status.product_type.as_str(), status.platform.as_str()),
        ("card_switcher", "ios")
    );
    assert_eq!(status.sdk.as_deref(), Some("1.0.0"));
    assert_eq!(status.status, Availability::Up);
    let null_sdk =
        fixture("knot/merchant_status_update.json").replace("\"sdk\": \"1.0.0\"", "\"sdk\": null");
    let Target::Merchant(status) = decode_ok(Feed::Knot, &null_sdk, &context()).target else {
        unreachable!()
    };
    assert_eq!(status.sdk, None);
}

#[test]
fn knot_fixtures_verify_with_their_signature_and_fail_when_tampered() {
    let secret = b"knot_client_secret";
    for relative in [
        "knot/authenticated.json",
        "knot/merchant_status_update.json",
        "knot/checkout_failed.json",
    ] {
        let body = fixture(relative);
        let header = signature::sign(secret, body.as_bytes(), "application/json").unwrap();
        assert_eq!(
            signature::verify(secret, Some(&header), body.as_bytes(), "application/json"),
            Ok(())
        );
        // What the scheme covers: the length, the content type, the event, the session id.
        let longer = body.replacen("1710864923198", "17108649231980", 1);
        let renamed = body
            .replacen("\"event\": \"", "\"event\": \"X", 1)
            .replacen("\"timestamp\": 1", "\"timestamp\":1", 1);
        for tampered in [longer, renamed] {
            assert_eq!(
                signature::verify(
                    secret,
                    Some(&header),
                    tampered.as_bytes(),
                    "application/json"
                ),
                Err(signature::SignatureError::Mismatch),
                "{relative}"
            );
        }
        assert_eq!(
            signature::verify(secret, Some(&header), body.as_bytes(), "text/plain"),
            Err(signature::SignatureError::Mismatch)
        );
    }
}

#[test]
fn knots_scheme_does_not_cover_same_length_edits_of_other_fields() {
    // Documented limit of Knot's scheme (docs/providers.md): the MAC covers the length, the
    // content type, the event and the session id, not the body bytes.
    let secret = b"knot_client_secret";
    let body = fixture("knot/checkout_failed.json");
    let header = signature::sign(secret, body.as_bytes(), "application/json").unwrap();
    let same_length = body.replacen("1710864923198", "1710864923199", 1);
    assert_eq!(
        signature::verify(
            secret,
            Some(&header),
            same_length.as_bytes(),
            "application/json"
        ),
        Ok(())
    );
}

/// A real SDK fixture (`tests/fixtures/real/*.json`): its source, its input, what the caller
/// supplies, its payloads and what a user expects of them.
struct RealFixture {
    name: String,
    json: Value,
}

impl RealFixture {
    fn all() -> Vec<RealFixture> {
        let dir = fixtures().join("real");
        let mut all: Vec<RealFixture> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| {
                let path = entry.unwrap().path();
                let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
                    .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
                RealFixture {
                    name: path.file_name().unwrap().to_string_lossy().into_owned(),
                    json,
                }
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn feed(&self) -> Feed {
        self.json["feed"].as_str().unwrap().parse().unwrap()
    }

    fn context(&self) -> DecodeContext {
        let mut context = context();
        let supplied = &self.json["context"];
        context.session_id = supplied["session_id"]
            .as_str()
            .map(|id| SessionId::new(id).unwrap());
        context.external_user_id = supplied["external_user_id"].as_str().map(str::to_owned);
        context
    }
}

/// Every real SDK fixture cites its source and decodes as it expects: quarantined exactly where
/// it says, warnings exactly at the paths it names, no token in a stored payload.
#[test]
fn every_real_sdk_fixture_cites_its_source_and_decodes_as_expected() {
    let all = RealFixture::all();
    assert!(all.len() >= 19, "{} fixtures", all.len());
    for fixture in &all {
        let name = &fixture.name;
        for field in ["repo", "path", "version", "shape"] {
            assert!(
                fixture.json["source"][field]
                    .as_str()
                    .is_some_and(|text| !text.is_empty()),
                "{name}: source.{field}"
            );
        }
        let expect = &fixture.json["expect"];
        // Outcomes and warnings are per payload as the intake decodes them: a Plaid EVENTS
        // webhook is one per event.
        let texts: Vec<String> = fixture.json["payloads"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|payload| linkflow_providers::expand(fixture.feed(), payload.to_string()))
            .collect();
        let outcomes = expect["outcomes"].as_array().unwrap();
        assert_eq!(texts.len(), outcomes.len(), "{name}");
        for (index, text) in texts.into_iter().enumerate() {
            let decoding = decode(fixture.feed(), &text, &fixture.context())
                .unwrap_or_else(|error| panic!("{name}[{index}]: {error}"));
            let (warnings, raw) = match decoding {
                Decoding::Event(decoded) => {
                    assert_ne!(outcomes[index], "quarantined", "{name}[{index}]");
                    (decoded.warnings, decoded.raw)
                }
                Decoding::Quarantine(unrouted) => {
                    assert_eq!(
                        outcomes[index], "quarantined",
                        "{name}[{index}]: {}",
                        unrouted.reason
                    );
                    (unrouted.warnings, unrouted.raw)
                }
            };
            let paths: Vec<&str> = warnings.iter().map(|w| w.path.as_str()).collect();
            let expected: Vec<&str> = expect["warnings"][index.to_string()]
                .as_array()
                .map(|paths| paths.iter().map(|p| p.as_str().unwrap()).collect())
                .unwrap_or_default();
            assert_eq!(paths, expected, "{name}[{index}]: {warnings:?}");
            for secret in expect["stored_raw_lacks"].as_array().into_iter().flatten() {
                assert!(
                    !raw.contains(secret.as_str().unwrap()),
                    "{name}[{index}] stores a token"
                );
            }
        }
    }
}

#[test]
fn knot_webhooks_of_every_product_route_to_their_streams() {
    let fixture = RealFixture::all()
        .into_iter()
        .find(|f| f.name == "knot_transaction_link_webhooks.json")
        .unwrap();
    let payloads = fixture.json["payloads"].as_array().unwrap();
    let updated = decode_ok(Feed::Knot, &payloads[2].to_string(), &context());
    let Target::Account { account, event } = updated.target else {
        panic!("an account notice")
    };
    assert_eq!(account.institution_id, "36");
    assert_eq!(
        event.kind,
        AccountEventKind::Notice(NoticeKind::TransactionsUpdated)
    );
    assert_eq!(
        event.transaction_ids,
        ["13da3c28-a068-4642-9ce2-b730cfda5f5f"]
    );
    let detect = RealFixture::all()
        .into_iter()
        .find(|f| f.name == "knot_detect_new_accounts.json")
        .unwrap();
    let decoded = decode_ok(
        Feed::Knot,
        &detect.json["payloads"][0].to_string(),
        &context(),
    );
    let Target::Account { account, event } = decoded.target else {
        panic!("the user's stream")
    };
    assert_eq!(account.institution_id, "", "no merchant: the user's stream");
    assert_eq!(
        event.kind,
        AccountEventKind::Notice(NoticeKind::AccountsDetected)
    );
    let step_up = decode_ok(
        Feed::Knot,
        r#"{"event":"OTP_REQUIRED","session_id":"s","external_user_id":"u","merchant":{"id":11,"name":"Uber"},"timestamp":1710864910000}"#,
        &context(),
    );
    assert_eq!(session_event(&step_up).1.kind, EventKind::StepUpRequired);
    let failed = decode_ok(
        Feed::Knot,
        r#"{"event":"CARD_FAILED","session_id":"s","external_user_id":"u","merchant":{"id":11},"data":{"reason":"card expired"},"timestamp":1710864910000}"#,
        &context(),
    );
    let Target::Account { event, .. } = failed.target else {
        panic!("an account operation")
    };
    assert_eq!(event.reason.as_deref(), Some("card expired"));
}

fn payload_fixtures() -> Vec<(Feed, String)> {
    let mut out = Vec::new();
    for (feed, dir) in [
        (Feed::Moneykit, "moneykit"),
        (Feed::Benji, "benji"),
        (Feed::Knot, "knot"),
    ] {
        for entry in std::fs::read_dir(fixtures().join(dir)).unwrap() {
            out.push((
                feed,
                std::fs::read_to_string(entry.unwrap().path()).unwrap(),
            ));
        }
    }
    for fixture in RealFixture::all() {
        for payload in fixture.json["payloads"].as_array().unwrap() {
            out.push((fixture.feed(), payload.to_string()));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_input_bytes_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512), feed in 0..Feed::ALL.len()) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(Feed::ALL[feed], &text, &context());
        for part in linkflow_providers::expand(Feed::ALL[feed], text.into_owned()) {
            let _ = decode(Feed::ALL[feed], &part, &context());
        }
        let _ = split_all(&bytes);
    }

    #[test]
    fn no_mutation_of_a_fixture_panics_a_decoder(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let fixtures = payload_fixtures();
        let (feed, text) = &fixtures[pick.index(fixtures.len())];
        let mut bytes = text.as_bytes().to_vec();
        let at = flip.index(bytes.len());
        bytes[at] = byte;
        bytes.truncate(cut.index(bytes.len() + 1).max(at));
        let mutated = String::from_utf8_lossy(&bytes);
        for feed in Feed::ALL.into_iter().chain([*feed]) {
            for part in linkflow_providers::expand(feed, mutated.to_string()) {
                let _ = decode(feed, &part, &context());
            }
        }
    }

    /// The intake rule, for any JSON value: every feed decodes it to an event or a quarantine
    /// entry; nothing JSON is refused.
    #[test]
    fn any_json_value_is_an_event_or_quarantined(value in any_json(), feed in 0..Feed::ALL.len()) {
        let feed = Feed::ALL[feed];
        for part in linkflow_providers::expand(feed, value.to_string()) {
            prop_assert!(decode(feed, &part, &context()).is_ok());
        }
    }
}

fn any_json() -> impl Strategy<Value = Value> {
    let keys = prop_oneof![
        Just("name".to_owned()),
        Just("meta".to_owned()),
        Just("event".to_owned()),
        Just("callback".to_owned()),
        Just("session_id".to_owned()),
        Just("sessionId".to_owned()),
        Just("link_session_id".to_owned()),
        Just("external_user_id".to_owned()),
        Just("merchant".to_owned()),
        Just("id".to_owned()),
        Just("timestamp".to_owned()),
        Just("data".to_owned()),
        Just("properties".to_owned()),
        Just("metadata".to_owned()),
        Just("error".to_owned()),
        Just("token".to_owned()),
        Just("eventName".to_owned()),
        Just("webhook_type".to_owned()),
        Just("webhook_code".to_owned()),
        Just("events".to_owned()),
        Just("event_name".to_owned()),
        Just("event_metadata".to_owned()),
        Just("item_id".to_owned()),
        Just("public_token".to_owned()),
        Just("view_name".to_owned()),
        ".{0,6}",
    ];
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop_oneof![
            Just("onEvent".to_owned()),
            Just("AUTHENTICATED".to_owned()),
            Just("open".to_owned()),
            Just("LINK".to_owned()),
            Just("EVENTS".to_owned()),
            Just("ITEM".to_owned()),
            Just("HANDOFF".to_owned()),
            Just("SESSION_FINISHED".to_owned()),
            ".{0,12}"
        ]
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 32, 6, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            proptest::collection::btree_map(keys.clone(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Every Plaid event name the adapter maps is sent by a real-SDK fixture, so the mapping table
/// (`plaid::EVENT_NAMES`, `docs/providers.md`) is exercised through the CLI and HTTP.
#[test]
fn every_mapped_plaid_event_name_has_a_fixture() {
    let sent: Vec<String> = RealFixture::all()
        .iter()
        .filter(|fixture| fixture.feed() == Feed::Plaid)
        .flat_map(|fixture| fixture.json["payloads"].as_array().unwrap().clone())
        .filter_map(|payload| payload["eventName"].as_str().map(str::to_owned))
        .map(|name| linkflow_providers::plaid::normalize_name(&name))
        .collect();
    for (name, _) in linkflow_providers::plaid::EVENT_NAMES {
        assert!(
            sent.iter().any(|sent| sent == name),
            "{name} has no fixture"
        );
    }
}
