//! Every sample payload of the vendor docs (kept as files in `tests/fixtures/`) through its
//! adapter, plus the malformed cases, dedupe keys, signatures, and a no-panic property.

use std::path::PathBuf;

use chrono::{TimeZone, Utc};
use linkflow_core::{
    fold, AccountEventKind, EventKind, LinkType, OperationKind, Outcome, Phase, Provider, SessionId,
};
use linkflow_providers::{
    decode, signature, split_events, Availability, DecodeContext, DecodeError, Decoded, Target,
};
use proptest::prelude::*;

fn fixture(relative: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

fn context() -> DecodeContext {
    DecodeContext::received_at(Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap())
}

fn session_event(decoded: &Decoded) -> (&SessionId, &linkflow_core::Event) {
    match &decoded.target {
        Target::Session { session, event } => (session, event),
        other => panic!("expected a session event, got {other:?}"),
    }
}

fn decode_fixture(provider: Provider, relative: &str) -> Decoded {
    let text = fixture(relative);
    decode(provider, &text, &context()).unwrap_or_else(|error| panic!("{relative}: {error}"))
}

#[test]
fn moneykit_sample_flow_decodes_to_a_succeeded_session_keeping_the_misspelling() {
    let body = fixture("moneykit/sample_flow.json");
    let texts = split_events(&body).unwrap();
    assert_eq!(texts.len(), 14);
    let decoded: Vec<Decoded> = texts
        .iter()
        .map(|text| decode(Provider::Moneykit, text, &context()).unwrap())
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
    // Raw payloads are the delivered text, verbatim.
    assert_eq!(decoded[1].raw, texts[1]);
    assert!(decoded[1]
        .raw
        .contains("\"current_screen_name\" : \"Finder\""));
}

#[test]
fn moneykit_maps_all_21_documented_names() {
    assert_eq!(linkflow_providers::moneykit::EVENT_NAMES.len(), 21);
    for (name, kind) in linkflow_providers::moneykit::EVENT_NAMES {
        let text = format!(
            r#"{{"name":"{name}","properties":{{}},"meta":{{"link_session_id":"s1","link_type":"Link","timestamp":"2023-11-29T12:44:31.804Z"}}}}"#
        );
        let decoded = decode(Provider::Moneykit, &text, &context()).unwrap();
        assert_eq!(session_event(&decoded).1.kind, kind, "{name}");
    }
}

#[test]
fn moneykit_property_samples_fill_the_attributes() {
    let error = decode_fixture(Provider::Moneykit, "moneykit/error.json");
    let error = session_event(&error).1.attributes.error.clone().unwrap();
    assert_eq!(
        (error.id, error.message, error.request_id),
        (None, None, None)
    );

    let screen = decode_fixture(Provider::Moneykit, "moneykit/change_screen_finder.json");
    assert_eq!(
        session_event(&screen).1.attributes.screen_name.as_deref(),
        Some("Finder")
    );

    let selected = decode_fixture(Provider::Moneykit, "moneykit/select_institution.json");
    let institution = session_event(&selected)
        .1
        .attributes
        .institution
        .clone()
        .unwrap();
    assert_eq!(institution.id, "moneykit-creds-bank");
    assert_eq!(institution.name.as_deref(), Some("Credentials Bank"));

    let search = decode_fixture(Provider::Moneykit, "moneykit/search_institution.json");
    assert_eq!(
        session_event(&search).1.attributes.search_term.as_deref(),
        Some("moneykit")
    );

    let relink = decode_fixture(Provider::Moneykit, "moneykit/relink_meta.json");
    assert_eq!(
        session_event(&relink).1.attributes.link_type,
        Some(LinkType::Relink)
    );

    let failover = decode_fixture(Provider::Moneykit, "moneykit/failover_link_event.json");
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

#[test]
fn moneykit_doc_examples_without_meta_are_refused_naming_meta() {
    for relative in [
        "moneykit/doc_change_screen_without_meta.json",
        "moneykit/doc_search_institution_without_meta.json",
    ] {
        let error = decode(Provider::Moneykit, &fixture(relative), &context()).unwrap_err();
        assert_eq!(
            error,
            DecodeError::Missing {
                path: "$.meta".into()
            },
            "{relative}"
        );
    }
}

#[test]
fn malformed_payloads_are_typed_errors_with_their_json_path() {
    let cases = [
        (r#"{"name": 5, "meta": {}}"#, "$.name"),
        (
            r#"{"name": "open", "meta": {"timestamp": "2023-11-29T12:44:31.804Z"}}"#,
            "$.meta.link_session_id",
        ),
        (
            r#"{"name": "open", "meta": {"link_session_id": "s", "timestamp": "yesterday"}}"#,
            "$.meta.timestamp",
        ),
        (
            r#"{"name": "open", "meta": {"link_session_id": "s", "link_type": "Upgrade"}}"#,
            "$.meta.link_type",
        ),
        (
            r#"{"name": "open", "meta": {"link_session_id": ""}}"#,
            "$.meta.link_session_id",
        ),
        (
            r#"{"name": "open", "properties": [], "meta": {"link_session_id": "s"}}"#,
            "$.properties",
        ),
        (
            r#"{"name": "search_institution", "properties": {"search_term": 3}, "meta": {"link_session_id": "s"}}"#,
            "$.properties.search_term",
        ),
        (r#"[1, 2]"#, "$"),
    ];
    for (text, path) in cases {
        let error = decode(Provider::Moneykit, text, &context()).unwrap_err();
        assert_eq!(error.path(), path, "{text}: {error}");
    }
    let error = decode(Provider::Moneykit, "{\"name\": ", &context()).unwrap_err();
    assert!(
        matches!(error, DecodeError::NotJson { line: 1, .. }),
        "{error}"
    );
    let knot = decode(Provider::Knot, r#"{"event":"AUTHENTICATED","external_user_id":"u","merchant":{"id":10},"timestamp":1710864923198}"#, &context()).unwrap_err();
    assert_eq!(knot.path(), "$.session_id");
    let knot = decode(Provider::Knot, r#"{"event":"CHECKOUT_FAILED","external_user_id":"u","merchant":{"id":10},"timestamp":"soon"}"#, &context()).unwrap_err();
    assert_eq!(knot.path(), "$.timestamp");
}

#[test]
fn a_redelivery_has_the_same_dedupe_key_however_it_is_formatted() {
    let a = r#"{"name":"open","properties":{},"meta":{"link_session_id":"s1","timestamp":"2023-11-29T12:44:31.804Z"}}"#;
    let b = "{ \"meta\" : {\"timestamp\":\"2023-11-29T12:44:31.804Z\", \"link_session_id\":\"s1\"},\n \"properties\":{}, \"name\":\"open\" }";
    let c = r#"{"name":"open","properties":{},"meta":{"link_session_id":"s1","timestamp":"2023-11-29T12:44:32.804Z"}}"#;
    let key = |text| {
        decode(Provider::Moneykit, text, &context())
            .unwrap()
            .dedupe_key
    };
    assert_eq!(key(a), key(b));
    assert_ne!(key(a), key(c));
    // The same Knot webhook retried is the same delivery.
    let webhook = fixture("knot/checkout_succeeded.json");
    let first = decode(Provider::Knot, &webhook, &context()).unwrap();
    let mut later = context();
    later.received_at += chrono::Duration::minutes(5);
    assert_eq!(
        first.dedupe_key,
        decode(Provider::Knot, &webhook, &later).unwrap().dedupe_key
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
        let decoded = decode_fixture(Provider::Benji, relative);
        let (session, event) = session_event(&decoded);
        assert_eq!(event.kind, kind, "{relative}");
        assert_eq!(decoded.raw_name, raw_name);
        assert_eq!(session.as_str(), "benji_sess_1");
        // No provider time: the receive time is the event time.
        assert_eq!(event.occurred_at, Some(context().received_at));
    }
    let selected = decode_fixture(Provider::Benji, "benji/on_event_user_partner_select.json");
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
    let error = decode_fixture(Provider::Benji, "benji/on_error_partner_connect_error.json");
    let error = session_event(&error).1.attributes.error.clone().unwrap();
    assert_eq!(error.code.as_deref(), Some("partner_connect_error"));
    assert_eq!(error.id.as_deref(), Some("err_3d4e5f"));
}

#[test]
fn benji_takes_the_session_from_the_caller_when_the_envelope_has_none() {
    let text = fixture("benji/on_exit_without_session.json");
    let error = decode(Provider::Benji, &text, &context()).unwrap_err();
    assert_eq!(
        error,
        DecodeError::Missing {
            path: "$.session_id".into()
        }
    );
    let mut with_session = context();
    with_session.session_id = Some(SessionId::new("from-integrator").unwrap());
    let decoded = decode(Provider::Benji, &text, &with_session).unwrap();
    assert_eq!(session_event(&decoded).0.as_str(), "from-integrator");
}

#[test]
fn knot_authenticated_completes_the_session_with_the_merchant_as_institution() {
    let decoded = decode_fixture(Provider::Knot, "knot/authenticated.json");
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
    let string_time = decode_fixture(Provider::Knot, "knot/authenticated_string_timestamp.json");
    assert_eq!(session_event(&string_time).1.occurred_at, event.occurred_at);
    // A session that only ever sees AUTHENTICATED ends succeeded.
    assert_eq!(fold([event]).unwrap().phase(), Phase::Succeeded);
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
        let decoded = decode_fixture(Provider::Knot, relative);
        let Target::Account { account, event } = &decoded.target else {
            panic!("{relative}: expected an account event");
        };
        assert_eq!(event.kind, kind, "{relative}");
        assert_eq!(account.provider, Provider::Knot);
        assert_eq!(account.external_user_id, "{your-unique-identifier}");
        assert!(account.stream_id().is_ok());
    }
    let checkout = decode_fixture(Provider::Knot, "knot/checkout_succeeded.json");
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
    let decoded = decode_fixture(Provider::Knot, "knot/merchant_status_update.json");
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
    let Target::Merchant(status) = decode(Provider::Knot, &null_sdk, &context())
        .unwrap()
        .target
    else {
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

#[test]
fn bodies_split_into_arrays_single_values_and_json_lines() {
    assert_eq!(
        split_events(r#"[{"a":1}, {"b" : 2}]"#).unwrap(),
        [r#"{"a":1}"#, r#"{"b" : 2}"#]
    );
    assert_eq!(split_events(r#"{"a":1}"#).unwrap(), [r#"{"a":1}"#]);
    assert_eq!(
        split_events("{\"a\":1}\n{\"b\":2}\n").unwrap(),
        [r#"{"a":1}"#, r#"{"b":2}"#]
    );
    assert!(split_events("{\"a\":1}\n{oops").is_err());
}

#[test]
fn located_splitting_names_array_indexes_and_bad_lines() {
    use linkflow_providers::{split_located, Location};
    let located = split_located("{\"a\":1}\n{oops\n\n{\"b\":2}\n").unwrap();
    assert_eq!(located.len(), 3);
    assert_eq!(located[0].0, Location::Line(1));
    assert!(located[1].1.is_err());
    assert_eq!(located[1].0, Location::Line(2));
    assert_eq!(located[2], (Location::Line(4), Ok("{\"b\":2}")));
    let pretty = split_located("{\n  \"a\": 1\n}\n{\"b\": 2}").unwrap();
    assert_eq!(
        pretty.iter().map(|(at, _)| *at).collect::<Vec<_>>(),
        [Location::Line(1), Location::Line(4)]
    );
    let array = split_located("[{\"a\":1},{\"b\":2}]").unwrap();
    assert_eq!(array[1].0, Location::Index(1));
    assert!(split_located("[{\"a\":1},").is_err());
}

fn all_fixtures() -> Vec<(Provider, String)> {
    let mut out = Vec::new();
    for (provider, dir) in [
        (Provider::Moneykit, "moneykit"),
        (Provider::Benji, "benji"),
        (Provider::Knot, "knot"),
    ] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(dir);
        for entry in std::fs::read_dir(path).unwrap() {
            out.push((
                provider,
                std::fs::read_to_string(entry.unwrap().path()).unwrap(),
            ));
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    #[test]
    fn no_input_bytes_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512), provider in 0..3usize) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = decode(Provider::ALL[provider], &text, &context());
        let _ = split_events(&text);
    }

    #[test]
    fn no_mutation_of_a_fixture_panics_a_decoder(pick in any::<prop::sample::Index>(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let fixtures = all_fixtures();
        let (provider, text) = &fixtures[pick.index(fixtures.len())];
        let mut bytes = text.as_bytes().to_vec();
        let at = flip.index(bytes.len());
        bytes[at] = byte;
        bytes.truncate(cut.index(bytes.len() + 1).max(at));
        let mutated = String::from_utf8_lossy(&bytes);
        for provider in Provider::ALL.into_iter().chain([*provider]) {
            let _ = decode(provider, &mutated, &context());
        }
    }
}
