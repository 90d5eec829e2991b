//! Provider payloads into the engine through `Engine::ingest_payload` and `Intake`: all or
//! nothing for a delivery, every storable payload stored from a stream, and nothing a provider
//! sends lost (what a stream turns away goes into quarantine).

use chrono::{TimeZone, Utc};
use linkflow::{
    DeliveryError, Engine, EventError, Feed, IngestOutcome, Intake, PayloadContext,
    QuarantineFilter, QuarantineRedrive, Redrove,
};
use linkflow_core::{Phase, SessionId};

fn context() -> PayloadContext {
    PayloadContext::new("test", Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap())
}

fn moneykit(name: &str, session: &str, second: u32) -> String {
    format!(
        r#"{{"name":"{name}","properties":{{}},"meta":{{"link_session_id":"{session}","timestamp":"2023-11-29T12:44:{second:02}.000Z"}}}}"#
    )
}

fn outcome_names(results: &[linkflow::PayloadResult]) -> Vec<&'static str> {
    results
        .iter()
        .map(|result| match result.outcome {
            IngestOutcome::Accepted { .. } => "accepted",
            IngestOutcome::Duplicate { .. } => "duplicate",
            IngestOutcome::Rejected { .. } => "rejected",
            IngestOutcome::Quarantined { .. } => "quarantined",
            IngestOutcome::Refused { .. } => "refused",
        })
        .collect()
}

#[tokio::test]
async fn a_delivery_is_stored_whole_or_not_at_all() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let body = format!("{}\n{{\"name\": ", moneykit("open", "s1", 1));
    let error = engine
        .ingest_payload(Feed::Moneykit, body.as_bytes(), &context())
        .await
        .unwrap_err();
    assert!(
        matches!(&error, DeliveryError::Invalid { at, error: EventError::Invalid { .. } } if at.to_string() == "line 2"),
        "{error}"
    );
    assert!(!error.is_limit());
    assert_eq!(engine.head().unwrap().0, 0, "nothing stored");
    // Over the record size limit: a limit, and nothing stored either.
    let big = format!(
        "[{},{}]",
        moneykit("open", "s1", 1),
        serde_json::json!({"name": "error", "properties": {"displayed_message": "x".repeat(7_000)}, "meta": {"link_session_id": "s1"}})
    );
    let error = engine
        .ingest_payload(Feed::Moneykit, big.as_bytes(), &context())
        .await
        .unwrap_err();
    assert!(error.is_limit(), "{error}");
    assert_eq!(engine.head().unwrap().0, 0);
    assert!(matches!(
        engine
            .ingest_payload(Feed::Moneykit, b"  \n", &context())
            .await,
        Err(DeliveryError::Empty)
    ));
    // A good delivery: every payload's outcome, in order.
    let body = [
        moneykit("open", "s1", 1),
        moneykit("open", "s1", 1),
        r#"{"name":"open"}"#.to_owned(),
    ]
    .join("\n");
    let report = engine
        .ingest_payload(Feed::Moneykit, body.as_bytes(), &context())
        .await
        .unwrap();
    assert_eq!(
        outcome_names(&report.results),
        ["accepted", "duplicate", "quarantined"]
    );
    assert_eq!(
        (
            report.counts.accepted,
            report.counts.duplicate,
            report.counts.quarantined
        ),
        (1, 1, 1)
    );
}

/// A payload whose session belongs to another provider is not refused (a 200 that lost it):
/// it is quarantined with the reason.
#[tokio::test]
async fn a_payload_its_stream_turns_away_is_quarantined_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    engine
        .ingest_payload(
            Feed::Moneykit,
            moneykit("open", "shared-id", 1).as_bytes(),
            &context(),
        )
        .await
        .unwrap();
    let benji = r#"{"callback":"onExit","session_id":"shared-id"}"#;
    let report = engine
        .ingest_payload(Feed::Benji, benji.as_bytes(), &context())
        .await
        .unwrap();
    let IngestOutcome::Quarantined { reason, entry, .. } = &report.results[0].outcome else {
        panic!("{:?}", report.results[0].outcome);
    };
    assert!(reason.contains("belongs to provider moneykit"), "{reason}");
    assert!(entry.as_str().starts_with("quarantine:benji:"));
    let list = engine
        .quarantine(QuarantineFilter::default(), 100, None)
        .await
        .unwrap();
    assert_eq!(list.counts.pending, 1);
    assert_eq!(list.entries[0].feed, "benji");
    assert_eq!(list.entries[0].payload.as_ref().unwrap().get(), benji);
    // Redriven as it is, it is turned away again and stays.
    let report = engine
        .redrive_quarantine(QuarantineRedrive::default())
        .await
        .unwrap();
    assert!(
        matches!(
            &report.results[0],
            Redrove::Refused {
                error: EventError::ProviderMismatch { .. },
                ..
            }
        ),
        "{:?}",
        report.results
    );
    assert_eq!(engine.quarantine_counts().await.unwrap().pending, 1);
}

/// A session at its event bound turns further payloads away: they are quarantined with the
/// reason, not lost and not refused.
#[tokio::test]
async fn a_payload_for_a_full_session_is_quarantined() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = linkflow::EngineConfig::new(dir.path());
    config.max_events_per_stream = 2;
    let engine = Engine::open_with(config).unwrap();
    let body = format!(
        "{}\n{}\n{}",
        moneykit("open", "full", 1),
        moneykit("select_institution", "full", 2),
        moneykit("submit_credentials", "full", 3)
    );
    let report = engine
        .ingest_payload(Feed::Moneykit, body.as_bytes(), &context())
        .await
        .unwrap();
    assert_eq!(
        outcome_names(&report.results),
        ["accepted", "accepted", "quarantined"]
    );
    let IngestOutcome::Quarantined { reason, .. } = &report.results[2].outcome else {
        unreachable!()
    };
    assert!(reason.contains("already holds 2 events"), "{reason}");
    assert_eq!(engine.quarantine_counts().await.unwrap().pending, 1);
}

/// A stream in chunks of any size: every payload stored or named where it is; the same input
/// in one chunk and in 7-byte chunks gives the same results.
#[tokio::test]
async fn a_stream_is_read_in_chunks_and_each_refused_payload_is_named() {
    let lines = [
        moneykit("open", "s1", 1),
        "not json".to_owned(),
        moneykit("select_institution", "s1", 2),
        r#"{"name":"submit_credentials","properties":{}}"#.to_owned(),
        moneykit("success", "s1", 4),
    ];
    let input = lines.join("\n");
    let mut runs = Vec::new();
    for chunk in [input.len(), 7] {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut intake = Intake::new(&engine, Feed::Moneykit, context());
        let mut results = Vec::new();
        for piece in input.as_bytes().chunks(chunk) {
            results.extend(intake.push(piece).await.unwrap());
        }
        results.extend(intake.finish().await.unwrap());
        let view = engine
            .session(&SessionId::new("s1").unwrap())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(view.state.phase(), Phase::Succeeded);
        let at: Vec<String> = results.iter().map(|r| r.at.to_string()).collect();
        runs.push((outcome_names(&results), at));
        engine.shutdown().await.unwrap();
    }
    assert_eq!(
        runs[0].0,
        ["accepted", "refused", "accepted", "quarantined", "accepted"]
    );
    assert_eq!(
        runs[0].1,
        ["line 1", "line 2", "line 3", "line 4", "line 5"]
    );
    assert_eq!(runs[0], runs[1]);
}

/// Quarantined payloads are released into the session a redrive supplies, once.
#[tokio::test]
async fn a_redrive_with_a_session_releases_quarantined_payloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    let body = r#"[{"callback":"onEvent","event":"AUTH_SUCCESS"},{"callback":"onSuccess"}]"#;
    let report = engine
        .ingest_payload(Feed::Benji, body.as_bytes(), &context())
        .await
        .unwrap();
    assert_eq!(report.counts.quarantined, 2);
    let request = QuarantineRedrive {
        session_id: Some(SessionId::new("benji-late").unwrap()),
        ..QuarantineRedrive::default()
    };
    let report = engine.redrive_quarantine(request.clone()).await.unwrap();
    assert_eq!(report.results.len(), 2);
    assert!(report
        .results
        .iter()
        .all(|result| matches!(result, Redrove::Released { .. })));
    let view = engine
        .session(&SessionId::new("benji-late").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view.state.phase(), Phase::Succeeded);
    // Nothing pending: a second redrive tries nothing.
    let again = engine.redrive_quarantine(request).await.unwrap();
    assert!(again.results.is_empty());
    let counts = engine.quarantine_counts().await.unwrap();
    assert_eq!((counts.pending, counts.released), (0, 2));
    assert!(engine.verify().await.unwrap().is_clean());
}

/// Quarantine listings come in pages: every entry once (the pending ones read from their own
/// index), the counts of all with each page, and a released entry gone from the pending pages.
#[tokio::test]
async fn quarantine_listings_come_in_pages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    // MoneyKit payloads without a session id: each one its own quarantine entry.
    for n in 0..7 {
        let payload = format!(
            r#"{{"name":"open","properties":{{"n":{n}}},"meta":{{"timestamp":"2023-11-29T12:44:0{n}.000Z"}}}}"#
        );
        let report = engine
            .ingest_payload(Feed::Moneykit, payload.as_bytes(), &context())
            .await
            .unwrap();
        assert_eq!(outcome_names(&report.results), ["quarantined"]);
    }
    let pages = |pending_only: bool| {
        let engine = engine.clone();
        async move {
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = engine
                    .quarantine(
                        QuarantineFilter {
                            pending_only,
                            provider: None,
                        },
                        3,
                        after.take(),
                    )
                    .await
                    .unwrap();
                assert!(page.entries.len() <= 3);
                seen.extend(page.entries.iter().map(|entry| entry.entry.to_string()));
                match page.next_cursor {
                    Some(next) => after = Some(next.parse::<linkflow::Cursor>().unwrap()),
                    None => return (seen, page.counts),
                }
            }
        }
    };
    let (all, counts) = pages(false).await;
    assert_eq!(all.len(), 7);
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 7, "{all:?}");
    assert_eq!((counts.pending, counts.released), (7, 0));
    let report = engine
        .redrive_quarantine(QuarantineRedrive {
            entry: Some(SessionId::new(all[0].clone()).unwrap()),
            session_id: Some(SessionId::new("found-it").unwrap()),
            external_user_id: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(report.results[0], Redrove::Released { .. }),
        "{report:?}"
    );
    let (pending, counts) = pages(true).await;
    assert_eq!(pending.len(), 6);
    assert!(!pending.contains(&all[0]));
    assert_eq!((counts.pending, counts.released), (6, 1));
    assert!(engine.verify().await.unwrap().is_clean());
}
