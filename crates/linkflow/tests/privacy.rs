//! Erasure with crypto-shredding (issue 29): personal fields and raw payloads are sealed before
//! they are stored, reads open them, an erasure makes one user's read `[erased]` while every
//! other user's read back whole, funnels and verify do not change, and no byte of the data
//! directory ever holds a user's strings in the clear.

use std::path::Path;
use std::sync::Arc;

use chrono::{TimeZone, Utc};
use linkflow::privacy::{MasterKey, ERASED};
use linkflow::{Engine, EngineConfig, EngineError, Feed, PayloadContext, SessionFilter};
use linkflow_core::funnel::FunnelQuery;
use linkflow_core::SessionId;

const MASTER: &str = "5f1e0c6a3b2d4e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9012a3b4c5d6e7f8";

fn config(dir: &Path) -> EngineConfig {
    let mut config = EngineConfig::new(dir);
    config.master_key = Some(Arc::new(MasterKey::from_hex(MASTER).unwrap()));
    config
}

fn context(user: Option<&str>) -> PayloadContext {
    let context = PayloadContext::new("test", Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 0).unwrap());
    match user {
        Some(user) => context.with_user(user),
        None => context,
    }
}

/// A MoneyKit session of `user` whose every personal field holds a string naming them.
fn session(user: &str, session: &str) -> String {
    let meta = |second: u32| {
        format!(
            r#""meta":{{"link_session_id":"{session}","timestamp":"2023-11-29T12:44:{second:02}.000Z"}}"#
        )
    };
    [
        format!(r#"{{"name":"open","properties":{{"note":"{user}-raw-secret"}},{}}}"#, meta(1)),
        format!(
            r#"{{"name":"search_institution","properties":{{"search_term":"{user}-searches-platypus"}},{}}}"#,
            meta(2)
        ),
        format!(
            r#"{{"name":"select_institution","properties":{{"institution_id":"ins_9","institution_name":"Platypus Bank"}},{}}}"#,
            meta(3)
        ),
        format!(
            r#"{{"name":"error","properties":{{"error_code":"INVALID_CREDENTIALS","displayed_message":"{user}-wrong-password","request_id":"{user}-request"}},{}}}"#,
            meta(4)
        ),
        format!(r#"{{"name":"exit","properties":{{}},{}}}"#, meta(5)),
    ]
    .join("\n")
}

async fn ingest(engine: &Engine, user: Option<&str>, body: &str) {
    let report = engine
        .ingest_payload(Feed::Moneykit, body.as_bytes(), &context(user))
        .await
        .unwrap();
    assert_eq!(report.results.len(), body.lines().count());
}

/// Every file under `dir`, whole.
fn every_byte(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(at) = stack.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

fn files_holding(files: &[(String, Vec<u8>)], needle: &str) -> Vec<String> {
    files
        .iter()
        .filter(|(_, bytes)| {
            bytes
                .windows(needle.len())
                .any(|window| window == needle.as_bytes())
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// A session's history as the API shows it.
async fn shown_history(engine: &Engine, id: &str) -> String {
    let history = engine
        .history(&SessionId::new(id).unwrap())
        .await
        .unwrap()
        .unwrap();
    let views: Vec<linkflow::views::HistoryJson> = history
        .iter()
        .map(linkflow::views::HistoryJson::from)
        .collect();
    let mut value = serde_json::to_value(views).unwrap();
    engine.show_json(&mut value);
    value.to_string()
}

fn strings_of(user: &str) -> [String; 5] {
    [
        user.to_owned(),
        format!("{user}-raw-secret"),
        format!("{user}-searches-platypus"),
        format!("{user}-wrong-password"),
        format!("{user}-request"),
    ]
}

#[tokio::test]
async fn an_erased_user_reads_erased_everywhere_and_the_rest_reads_whole() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(config(dir.path())).unwrap();
    ingest(&engine, Some("alice-zebra"), &session("alice-zebra", "a1")).await;
    ingest(&engine, Some("alice-zebra"), &session("alice-zebra", "a2")).await;
    ingest(&engine, Some("bob-yak"), &session("bob-yak", "b1")).await;
    // A payload that names no session but names alice: quarantined, sealed under her key.
    let quarantined = r#"{"name":"open","properties":{"note":"alice-zebra-quarantined-secret"},"meta":{"timestamp":"2023-11-29T12:44:09.000Z"}}"#;
    ingest(&engine, Some("alice-zebra"), quarantined).await;

    // Reads open every sealed field.
    let history = shown_history(&engine, "a1").await;
    for text in strings_of("alice-zebra") {
        assert!(history.contains(&text), "{text} in {history}");
    }
    let alice = SessionFilter {
        external_user_id: Some("alice-zebra".into()),
        ..SessionFilter::default()
    };
    let page = engine.sessions_page(alice.clone(), 10, None).await.unwrap();
    assert_eq!(page.sessions.len(), 2);
    let funnel_before = engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap();
    // The typed reads open them too.
    let search_term = |history: &[linkflow::HistoryEntry]| {
        history
            .iter()
            .find_map(|entry| entry.body.as_session()?.attributes.search_term.clone())
    };
    let a1 = SessionId::new("a1").unwrap();
    let typed = engine.history(&a1).await.unwrap().unwrap();
    assert_eq!(
        search_term(&typed).as_deref(),
        Some("alice-zebra-searches-platypus")
    );
    assert!(typed[0]
        .raw
        .as_ref()
        .unwrap()
        .get()
        .contains("alice-zebra-raw-secret"));
    let view = engine.session(&a1).await.unwrap().unwrap();
    assert_eq!(view.state.external_user_id(), Some("alice-zebra"));
    assert_eq!(
        page.sessions[0].state.external_user_id(),
        Some("alice-zebra")
    );

    let report = engine
        .erase_user("alice-zebra", "ticket-4711")
        .await
        .unwrap();
    assert!(report.erased);
    assert_eq!(report.streams, 2);
    let tombstone = report.tombstone.clone().unwrap();
    assert!(tombstone.as_str().starts_with("erasure:"));
    assert!(!tombstone.as_str().contains("alice"));

    // Alice's fields read erased; the flow metadata stays.
    let history = shown_history(&engine, "a1").await;
    for text in strings_of("alice-zebra") {
        assert!(!history.contains(&text), "{text} still in {history}");
    }
    assert!(history.contains(ERASED), "{history}");
    assert!(history.contains("Platypus Bank") && history.contains("INVALID_CREDENTIALS"));
    let typed = engine.history(&a1).await.unwrap().unwrap();
    assert_eq!(search_term(&typed).as_deref(), Some(ERASED));
    let view = engine.session(&a1).await.unwrap().unwrap();
    assert_eq!(view.state.external_user_id(), Some(ERASED));
    assert!(engine
        .sessions_page(alice, 10, None)
        .await
        .unwrap()
        .sessions
        .is_empty());
    // Bob's read back whole.
    let history = shown_history(&engine, "b1").await;
    for text in strings_of("bob-yak") {
        assert!(history.contains(&text), "{text} in {history}");
    }
    assert!(!history.contains(ERASED));
    // Funnels count the sessions as before; the log still verifies.
    assert_eq!(
        engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap(),
        funnel_before
    );
    assert!(engine.verify().await.unwrap().is_clean());

    // Again: nothing left to destroy, no second tombstone.
    let again = engine
        .erase_user("alice-zebra", "ticket-4711")
        .await
        .unwrap();
    assert_eq!((again.erased, again.streams), (false, 0));
    assert_eq!(again.tombstone, Some(tombstone.clone()));
    let tombstones = engine.history(&tombstone).await.unwrap().unwrap();
    assert_eq!(tombstones.len(), 1);

    engine.shutdown().await.unwrap();
    drop(engine);
    // No byte of the data directory holds any user's strings in the clear: not the records,
    // the snapshots, the indexes, the write-ahead log, sled's own files, nor the key file.
    let files = every_byte(dir.path());
    for text in strings_of("alice-zebra")
        .into_iter()
        .chain(strings_of("bob-yak"))
        .chain(["alice-zebra-quarantined-secret".to_owned()])
    {
        assert_eq!(files_holding(&files, &text), Vec::<String>::new(), "{text}");
    }

    // Reopened with the master key: the same reads.
    let engine = Engine::open_with(config(dir.path())).unwrap();
    assert!(shown_history(&engine, "b1")
        .await
        .contains("bob-yak-wrong-password"));
    assert!(shown_history(&engine, "a2").await.contains(ERASED));
    assert!(engine.verify().await.unwrap().is_clean());
    engine.shutdown().await.unwrap();
    drop(engine);
    // Without it the store does not open: new events would be stored unsealed beside sealed ones.
    let Err(error) = Engine::open_with(EngineConfig::new(dir.path())) else {
        panic!("a sealed store opened without its master key");
    };
    assert!(
        matches!(&error, EngineError::InvalidConfig(text) if text.contains("master key")),
        "{error}"
    );
}

#[tokio::test]
async fn raw_payloads_past_their_retention_read_erased_and_the_events_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.raw_retention = Some(chrono::Duration::days(30));
    let engine = Engine::open_with(config).unwrap();
    // Received on 2024-03-19 and on 2024-04-28.
    ingest(&engine, Some("dora"), &session("dora", "d1")).await;
    let later = PayloadContext::new("test", Utc.with_ymd_and_hms(2024, 4, 28, 9, 0, 0).unwrap())
        .with_user("erin");
    let body = session("erin", "e1");
    engine
        .ingest_payload(Feed::Moneykit, body.as_bytes(), &later)
        .await
        .unwrap();
    let funnel_before = engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap();
    // Nothing is past 30 days on 2024-04-18 (the 19th of March is 30 days before it).
    let day = |month, day| Utc.with_ymd_and_hms(2024, month, day, 12, 0, 0).unwrap();
    assert_eq!(engine.expire_raw_payloads(day(4, 18)).await.unwrap(), 0);
    assert!(shown_history(&engine, "d1")
        .await
        .contains("dora-raw-secret"));
    // On 2024-04-20 the whole of the 19th of March is older than 30 days.
    assert_eq!(engine.expire_raw_payloads(day(4, 20)).await.unwrap(), 1);
    let history = shown_history(&engine, "d1").await;
    assert!(!history.contains("dora-raw-secret"), "{history}");
    assert!(history.contains(ERASED));
    // The canonical events and their sealed fields stay readable; the later day's payloads too.
    assert!(history.contains("dora-searches-platypus") && history.contains("dora-wrong-password"));
    assert!(shown_history(&engine, "e1")
        .await
        .contains("erin-raw-secret"));
    assert_eq!(engine.expire_raw_payloads(day(4, 20)).await.unwrap(), 0);
    assert_eq!(
        engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap(),
        funnel_before
    );
    assert!(engine.verify().await.unwrap().is_clean());
    engine.shutdown().await.unwrap();
    drop(engine);
    for text in ["dora-raw-secret", "erin-raw-secret", "dora", "erin"] {
        assert_eq!(
            files_holding(&every_byte(dir.path()), text),
            Vec::<String>::new()
        );
    }
    // A retention without a master key is refused: it could not be kept.
    let mut unkeyed = EngineConfig::new(tempfile::tempdir().unwrap().path());
    unkeyed.raw_retention = Some(chrono::Duration::days(1));
    assert!(matches!(
        Engine::open_with(unkeyed),
        Err(EngineError::InvalidConfig(text)) if text.contains("master key")
    ));
}

/// Sealing makes a record longer (a sealed payload carries its owner's key name, its day, a
/// version byte, the nonce and the tag: 50 bytes): the size limit counts the sealed record, so the largest payload stored unsealed is
/// refused whole with a master key, never half stored.
#[tokio::test]
async fn the_record_limit_counts_the_sealed_size() {
    let body = |len: usize| {
        let note = "n".repeat(len);
        format!(
            r#"{{"name":"open","properties":{{"note":"{note}"}},"meta":{{"link_session_id":"big","timestamp":"2023-11-29T12:44:01.000Z"}}}}"#
        )
    };
    // The largest note stored without a key, to 8 bytes: every longer one is refused.
    let plain = tempfile::tempdir().unwrap();
    let engine = Engine::open(plain.path()).unwrap();
    let mut len = 6_200;
    loop {
        match engine
            .ingest_payload(Feed::Moneykit, body(len).as_bytes(), &context(None))
            .await
        {
            Ok(_) => break,
            Err(error) => assert!(error.is_limit(), "{error}"),
        }
        len -= 8;
        assert!(len > 4_000, "a payload of 4 KB is stored");
    }
    engine.shutdown().await.unwrap();
    let sealed = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(config(sealed.path())).unwrap();
    let error = engine
        .ingest_payload(Feed::Moneykit, body(len).as_bytes(), &context(None))
        .await
        .unwrap_err();
    assert!(error.is_limit(), "{error}");
    assert!(engine
        .history(&SessionId::new("big").unwrap())
        .await
        .unwrap()
        .is_none());
    // 50 bytes shorter, it is stored sealed.
    engine
        .ingest_payload(Feed::Moneykit, body(len - 50).as_bytes(), &context(None))
        .await
        .unwrap();
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn without_a_master_key_nothing_is_sealed_and_erasure_says_it_is_unavailable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(dir.path()).unwrap();
    ingest(&engine, Some("carol"), &session("carol", "c1")).await;
    let error = engine.erase_user("carol", "ops").await.unwrap_err();
    assert!(matches!(error, EngineError::ErasureUnavailable), "{error}");
    assert!(error.to_string().contains("LINKFLOW_MASTER_KEY"));
    engine.shutdown().await.unwrap();
    assert!(!files_holding(&every_byte(dir.path()), "carol-searches-platypus").is_empty());
    assert!(!dir.path().join(linkflow::privacy::KEY_FILE).exists());
}

/// An account event names its user in its stream id, and its raw payload (a provider's webhook)
/// may name them too: erasing the user makes the payload read `[erased]`, as their sessions'.
#[tokio::test]
async fn an_erased_users_account_events_read_erased_their_raw_payloads_included() {
    use linkflow::ingest::IncomingEvent;
    use linkflow_core::{AccountEvent, AccountEventKind, AccountKey, EventBody, Provider};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open_with(config(dir.path())).unwrap();
    let account = |user: &str| {
        let key = AccountKey {
            provider: Provider::Knot,
            external_user_id: user.into(),
            institution_id: "10".into(),
        };
        let mut event = IncomingEvent::with_body(
            key.stream_id().unwrap(),
            Provider::Knot,
            EventBody::Account {
                account: key,
                event: AccountEvent::new(AccountEventKind::Linked)
                    .at(Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, 1).unwrap()),
            },
        );
        event.raw = Some(
            linkflow::store::RawJson::from_string(format!(
                r#"{{"event":"AUTHENTICATED","user":"{user}-account-secret"}}"#
            ))
            .unwrap(),
        );
        event
    };
    engine
        .ingest_batch(vec![account("alice-zebra"), account("bob-yak")])
        .await
        .unwrap();
    // Each account's stream, as stored (its id holds the sealed user id).
    let mut streams = Vec::new();
    for user in ["alice-zebra", "bob-yak"] {
        let accounts = engine.user_accounts(user).await.unwrap();
        assert_eq!(accounts.len(), 1);
        let stream = accounts[0].key.stream_id().unwrap();
        assert!(!stream.as_str().contains(user), "{stream}");
        streams.push(stream);
    }
    let raw_of = |stream: SessionId| {
        let engine = engine.clone();
        async move {
            let history = engine.history(&stream).await.unwrap().unwrap();
            history[0].raw.as_ref().unwrap().get().into_owned()
        }
    };
    assert!(raw_of(streams[0].clone())
        .await
        .contains("alice-zebra-account-secret"));
    engine.erase_user("alice-zebra", "ticket").await.unwrap();
    let alice = raw_of(streams[0].clone()).await;
    assert!(!alice.contains("alice-zebra-account-secret"), "{alice}");
    assert!(alice.contains(ERASED), "{alice}");
    assert!(raw_of(streams[1].clone())
        .await
        .contains("bob-yak-account-secret"));
    assert!(engine.verify().await.unwrap().is_clean());
    engine.shutdown().await.unwrap();
}

/// Compaction of old terminal sessions (issue 29's second age): sessions that exited before the
/// cutoff become their final state. Reads, funnels (the counted one and the one folded again
/// from the log), the indexes and verify agree before and after, and after a restart; the
/// compacted events are gone from history and from reads by position; a redelivery is still a
/// duplicate; a late event is stored, rejected, and changes nothing; the open session and the
/// recent one are left whole. With and without a master key.
#[tokio::test]
async fn old_terminal_sessions_compact_to_their_final_state_and_everything_still_agrees() {
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut zero = EngineConfig::new(dir.path());
        zero.compact_after = Some(chrono::Duration::zero());
        assert!(matches!(
            Engine::open_with(zero),
            Err(EngineError::InvalidConfig(text)) if text.contains("compact_after")
        ));
        let config = || {
            let mut config = EngineConfig::new(dir.path());
            if sealed {
                config.master_key = Some(Arc::new(MasterKey::from_hex(MASTER).unwrap()));
            }
            config
        };
        let engine = Engine::open_with(config()).unwrap();
        // Four sessions of 2023 that exited, one of 2023 still open, one that exits now.
        for n in 0..4 {
            ingest(
                &engine,
                Some(&format!("user{n}")),
                &session(&format!("user{n}"), &format!("old-{n}")),
            )
            .await;
        }
        let open: String = session("opener", "old-open")
            .lines()
            .take(3)
            .collect::<Vec<_>>()
            .join("\n");
        ingest(&engine, Some("opener"), &open).await;
        let recent = session("recent", "recent")
            .replace("2023-11-29", &Utc::now().format("%Y-%m-%d").to_string());
        ingest(&engine, Some("recent"), &recent).await;
        let ids = |names: &[&str]| -> Vec<SessionId> {
            names
                .iter()
                .map(|name| SessionId::new(*name).unwrap())
                .collect()
        };
        let old = ids(&["old-0", "old-1", "old-2", "old-3"]);
        let kept = ids(&["old-open", "recent"]);
        let all: Vec<SessionId> = old.iter().chain(&kept).cloned().collect();
        let mut views = Vec::new();
        for id in &all {
            views.push(engine.session(id).await.unwrap().unwrap());
        }
        let funnel_before = engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap();
        let rebuilt_before = engine
            .funnel_rebuilt(FunnelQuery::at(Utc::now()))
            .await
            .unwrap();
        let head = engine.head().unwrap();
        assert!(engine.verify().await.unwrap().is_clean());

        let cutoff = Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0).unwrap();
        let report = engine.compact_sessions_before(cutoff).await.unwrap();
        assert_eq!(
            (report.examined, report.sessions, report.events),
            (5, 4, 20),
            "sealed: {sealed}"
        );
        // A state before the compaction is no longer stored: a clear error, not a guess.
        assert!(matches!(
            engine.session_at(&old[0], linkflow_core::Version(3)).await,
            Err(EngineError::Compacted { compacted, .. }) if compacted == linkflow_core::Version(5)
        ));
        let again = engine.compact_sessions_before(cutoff).await.unwrap();
        assert_eq!(
            (again.sessions, again.events),
            (0, 0),
            "nothing more to compact"
        );

        let expected = (funnel_before.clone(), rebuilt_before.clone());
        let check = |engine: Engine, views: Vec<linkflow::SessionView>| async move {
            let (funnel_before, rebuilt_before) = expected;
            for view in &views {
                let now = engine.session(&view.session_id).await.unwrap().unwrap();
                let compacted = view.session_id.as_str().starts_with("old-")
                    && view.session_id.as_str() != "old-open";
                assert_eq!(now.state, view.state, "{}", view.session_id);
                assert_eq!((now.events, now.rejected), (view.events, view.rejected));
                assert_eq!(
                    now.compacted_at,
                    compacted.then_some(linkflow_core::Version(5))
                );
                let history = engine.history(&view.session_id).await.unwrap().unwrap();
                assert_eq!(
                    history.len(),
                    if compacted { 0 } else { view.events as usize }
                );
            }
            assert_eq!(
                engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap(),
                funnel_before
            );
            assert_eq!(
                engine
                    .funnel_rebuilt(FunnelQuery::at(Utc::now()))
                    .await
                    .unwrap(),
                rebuilt_before
            );
            let report = engine.verify().await.unwrap();
            assert!(report.is_clean(), "{:?}", report.problems);
            // By position: only the events of the sessions left whole.
            let mut subscription = engine.subscribe(linkflow_core::Position::START);
            let mut streams = Vec::new();
            for _ in 0..8 {
                streams.push(subscription.next().await.unwrap().stream.to_string());
            }
            assert_eq!(streams.iter().filter(|s| *s == "old-open").count(), 3);
            assert_eq!(streams.iter().filter(|s| *s == "recent").count(), 5);
            engine
        };
        let engine = check(engine, views.clone()).await;
        assert_eq!(engine.head().unwrap(), head, "compaction appends nothing");

        // A redelivery of a compacted event is a duplicate; a new event is kept, rejected.
        let replay = engine
            .ingest_payload(
                Feed::Moneykit,
                session("user0", "old-0").as_bytes(),
                &context(Some("user0")),
            )
            .await
            .unwrap();
        assert!(replay
            .results
            .iter()
            .all(|result| matches!(result.outcome, linkflow::IngestOutcome::Duplicate { .. })));
        let late = r#"{"name":"select_institution","properties":{"institution_id":"ins_1","institution_name":"Other"},"meta":{"link_session_id":"old-1","timestamp":"2023-11-29T12:44:00.000Z"}}"#;
        let outcome = engine
            .ingest_payload(Feed::Moneykit, late.as_bytes(), &context(Some("user1")))
            .await
            .unwrap();
        match &outcome.results[0].outcome {
            linkflow::IngestOutcome::Rejected {
                reason, version, ..
            } => {
                assert_eq!(reason, linkflow::folded::COMPACTED_REJECTION);
                assert_eq!(*version, linkflow_core::Version(6));
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
        let old1 = engine.session(&old[1]).await.unwrap().unwrap();
        assert_eq!(old1.state, views[1].state, "the late event changed nothing");
        assert_eq!((old1.events, old1.rejected), (6, views[1].rejected + 1));
        let history = engine.history(&old[1]).await.unwrap().unwrap();
        assert_eq!(history.len(), 1);
        assert_eq!(
            history[0].rejection.as_deref(),
            Some(linkflow::folded::COMPACTED_REJECTION)
        );
        assert_eq!(
            engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap(),
            funnel_before
        );
        assert!(engine.verify().await.unwrap().is_clean());
        // The next run compacts that event too.
        let report = engine.compact_sessions_before(cutoff).await.unwrap();
        assert_eq!((report.sessions, report.events), (1, 1));
        assert_eq!(
            engine.session(&old[1]).await.unwrap().unwrap().compacted_at,
            Some(linkflow_core::Version(6))
        );
        let mut views_now = Vec::new();
        for id in &all {
            views_now.push(engine.session(id).await.unwrap().unwrap());
        }
        // After a restart, read from the store alone.
        engine.shutdown().await.unwrap();
        drop(engine);
        let engine = Engine::open_with(config()).unwrap();
        for view in &views_now {
            let now = engine.session(&view.session_id).await.unwrap().unwrap();
            assert_eq!(now, *view);
        }
        assert_eq!(
            engine.funnel(FunnelQuery::at(Utc::now())).await.unwrap(),
            funnel_before
        );
        let report = engine.verify().await.unwrap();
        assert!(report.is_clean(), "{:?}", report.problems);
        engine.shutdown().await.unwrap();
    }
}

/// A user id too long to sit in an account's stream id as it is (a sealed one is about twice
/// the id it seals) still links its account: the stream id holds a digest of it, the user's
/// accounts are found under it, and an erasure reaches them.
#[tokio::test]
async fn a_long_user_id_links_its_account_sealed_or_not() {
    use linkflow::IncomingEvent;
    use linkflow_core::{Event, EventKind, Provider};
    let user = format!("user-{}", "x".repeat(150));
    for sealed in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        if sealed {
            config.master_key = Some(Arc::new(MasterKey::from_hex(MASTER).unwrap()));
        }
        let engine = Engine::open_with(config).unwrap();
        let at = |second: u32| Utc.with_ymd_and_hms(2024, 3, 19, 16, 0, second).unwrap();
        let session = SessionId::new("long-user").unwrap();
        let mut opened = Event::new(EventKind::Opened).at(at(1));
        opened.attributes.external_user_id = Some(user.clone());
        let succeeded = Event::new(EventKind::Succeeded)
            .at(at(2))
            .with_institution("ins_long", None);
        let outcomes = engine
            .ingest_batch(vec![
                IncomingEvent::new(session.clone(), Provider::Moneykit, opened),
                IncomingEvent::new(session.clone(), Provider::Moneykit, succeeded),
            ])
            .await
            .unwrap();
        let linkflow::IngestOutcome::Accepted { accounts, .. } = &outcomes[1] else {
            panic!("{:?}", outcomes[1]);
        };
        assert!(
            matches!(accounts[..], [linkflow::AccountFollow::Linked { .. }]),
            "sealed {sealed}: {accounts:?}"
        );
        let listed = engine.user_accounts(&user).await.unwrap();
        assert_eq!(listed.len(), 1, "sealed {sealed}");
        assert_eq!(listed[0].key.institution_id, "ins_long");
        if sealed {
            let shown = |engine: &Engine, stored: &str| engine.privacy().unwrap().show(stored);
            let stored = engine.accounts().await.unwrap()[0]
                .key
                .external_user_id
                .clone();
            assert_eq!(shown(&engine, &stored), user);
            let report = engine.erase_user(&user, "ticket").await.unwrap();
            assert!(report.erased);
            assert_eq!(shown(&engine, &stored), ERASED);
            assert!(engine.user_accounts(&user).await.unwrap().is_empty());
        }
        assert!(engine.verify().await.unwrap().is_clean());
        engine.shutdown().await.unwrap();
    }
}
