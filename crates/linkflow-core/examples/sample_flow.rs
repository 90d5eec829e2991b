//! Folds a realistic MoneyKit-like flow through the core state machine and prints what
//! happened to each event, including one the table refuses.
//!
//! Run: `cargo run --release -p linkflow-core --example sample_flow`

use chrono::{TimeZone, Utc};
use linkflow_core::{ErrorInfo, Event, EventKind, LinkType, Session};

fn main() {
    let at = |second: u32| {
        Utc.with_ymd_and_hms(2023, 11, 29, 12, 44, second)
            .single()
            .expect("a fixed, valid time")
    };
    let flow = [
        Event::new(EventKind::Opened)
            .at(at(0))
            .with_link_type(LinkType::Link),
        Event::new(EventKind::ScreenChanged)
            .at(at(1))
            .with_screen("Finder"),
        Event::new(EventKind::InstitutionSelected)
            .at(at(5))
            .with_institution("moneykit-creds-bank", Some("Credentials Bank")),
        Event::new(EventKind::CredentialsSubmitted).at(at(9)),
        Event::new(EventKind::Error)
            .at(at(10))
            .with_error(ErrorInfo {
                id: Some("err_1".into()),
                code: Some("invalid_credentials".into()),
                message: Some("The credentials were not correct.".into()),
                request_id: None,
            }),
        Event::new(EventKind::CredentialsSubmitted).at(at(15)),
        Event::new(EventKind::Opened).at(at(16)),
        Event::new(EventKind::OtpSubmitted).at(at(20)),
        Event::new(EventKind::Unrecognized {
            raw_name: "submit_credentails".into(),
        })
        .at(at(21)),
        Event::new(EventKind::AccountsSelected).at(at(30)),
        Event::new(EventKind::Succeeded).at(at(31)),
        Event::new(EventKind::Exited).at(at(40)),
    ];

    let mut session = Session::new();
    println!(
        "{:<26} {:<22} {:<22} outcome",
        "event", "phase before", "phase after"
    );
    for event in &flow {
        match session.apply_in_place(event) {
            Ok(applied) => println!(
                "{:<26} {:<22} {:<22} accepted (version {})",
                event.kind.to_string(),
                applied.phase_before.as_str(),
                applied.phase_after.as_str(),
                session.version()
            ),
            Err(rejection) => println!(
                "{:<26} {:<22} {:<22} REJECTED: {rejection}",
                event.kind.to_string(),
                session.phase().as_str(),
                "-"
            ),
        }
    }
    println!();
    println!("final phase:     {}", session.phase());
    if let Some(institution) = session.institution() {
        println!("institution:     {}", institution.id);
    }
    if let Some(error) = session.last_error() {
        println!("last error:      {:?}", error.value.code);
    }
    if let Some(exit) = session.exit() {
        println!("exit recorded:   from {}", exit.phase);
    }
    println!("accepted events: {}", session.version());
}
