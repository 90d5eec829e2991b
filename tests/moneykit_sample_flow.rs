//! MoneyKit's own sample flow (end of `moneykit-connect-events.txt`, kept verbatim in
//! `fixtures/moneykit/sample_flow.json`) folded as canonical events.
//!
//! The payload-to-event mapping here is the minimum the core test needs: `name` to kind,
//! `meta` to time, link type and institution. The provider adapter owns the full mapping.

use chrono::{DateTime, Utc};
use linkflow_core::{fold, Event, EventKind, LinkType, Phase};
use linkflow_e2e::fixture_json;
use serde_json::Value;

fn canonical(payload: &Value) -> Event {
    let name = payload["name"]
        .as_str()
        .expect("every sample event has a name");
    let kind = match name {
        "open" => EventKind::Opened,
        "change_screen" => EventKind::ScreenChanged,
        "submit_credentials" => EventKind::CredentialsSubmitted,
        "submit_permissions" => EventKind::PermissionsGranted,
        "submit_accounts" => EventKind::AccountsSelected,
        "success" => EventKind::Succeeded,
        other => EventKind::Unrecognized {
            raw_name: other.to_owned(),
        },
    };
    let meta = &payload["meta"];
    let at: DateTime<Utc> = meta["timestamp"].as_str().unwrap().parse().unwrap();
    let mut event = Event::new(kind).at(at);
    if meta["link_type"] == "Link" {
        event = event.with_link_type(LinkType::Link);
    }
    if let Some(id) = meta["institution_id"].as_str() {
        event = event.with_institution(id, meta["institution_name"].as_str());
    }
    if let Some(screen) = payload["properties"]["current_screen_name"].as_str() {
        event = event.with_screen(screen);
    }
    event
}

#[test]
fn moneykit_sample_flow_succeeds_and_keeps_the_misspelled_event() {
    let payloads = fixture_json("moneykit/sample_flow.json");
    let events: Vec<Event> = payloads.as_array().unwrap().iter().map(canonical).collect();
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
