//! MoneyKit's own sample flow (end of `moneykit-connect-events.txt`, kept verbatim in
//! `fixtures/moneykit/sample_flow.json`) decoded by the MoneyKit adapter and folded.

use chrono::Utc;
use linkflow_core::{fold, EventKind, LinkType, Phase};
use linkflow_e2e::fixtures_dir;
use linkflow_providers::{decode, split_all, DecodeContext, Decoding, Feed, Target};

#[test]
fn moneykit_sample_flow_succeeds_and_keeps_the_misspelled_event() {
    let body = std::fs::read_to_string(fixtures_dir().join("moneykit/sample_flow.json")).unwrap();
    let context = DecodeContext::received_at(Utc::now());
    let events: Vec<_> = split_all(body.as_bytes())
        .into_iter()
        .map(
            |(_, text)| match decode(Feed::Moneykit, &text.unwrap(), &context).unwrap() {
                Decoding::Event(decoded) => match decoded.target {
                    Target::Session { event, .. } => event,
                    other => panic!("MoneyKit events are session events, got {other:?}"),
                },
                Decoding::Quarantine(unrouted) => panic!("quarantined: {}", unrouted.reason),
            },
        )
        .collect();
    assert_eq!(events.len(), 14);

    let session = fold(&events).expect("the sample flow is legal");

    assert_eq!(session.phase(), Phase::Succeeded);
    assert_eq!(session.version().0, 14);
    assert_eq!(session.counts().unrecognized, 1);
    assert!(events.iter().any(|event| event.kind
        == EventKind::Unrecognized {
            raw_name: "submit_credentails".into()
        }));
    let institution = session.institution().unwrap();
    assert_eq!(institution.id, "moneykit-creds-bank");
    assert_eq!(institution.name.as_deref(), Some("Credentials Bank"));
    assert_eq!(session.link_type(), Some(LinkType::Link));
    assert_eq!(session.current_screen().unwrap().value, "Connected");
    assert_eq!(
        session.first_event_at().unwrap().to_rfc3339(),
        "2023-11-29T12:44:31.804+00:00"
    );
}
