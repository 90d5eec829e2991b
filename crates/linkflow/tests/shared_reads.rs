//! On a store shared with other processes the writer re-reads every session it decides on. It
//! must do that in one `read_streams` call per group (one round trip on PostgreSQL), not with
//! several reads per session and one per event, and decide exactly as it does from its cache.
//! The one extra read is a late event's: its session is folded again from its whole stream.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use linkflow::store::{SledStore, StoreError};
use linkflow::{Engine, EngineConfig, IncomingEvent, IngestOutcome};
use linkflow_core::{Event, EventKind, Provider, SessionId};
use support::{Call, Watch, Watched};

/// Says the store is shared and counts the reads a writer makes.
#[derive(Default)]
struct Counting {
    read_streams: AtomicUsize,
    single_reads: AtomicUsize,
}

impl Counting {
    fn take(&self) -> (usize, usize) {
        (
            self.read_streams.swap(0, Ordering::SeqCst),
            self.single_reads.swap(0, Ordering::SeqCst),
        )
    }
}

impl Watch for Counting {
    fn before(&self, call: Call) -> Result<(), StoreError> {
        let counter = match call {
            Call::ReadStreams => &self.read_streams,
            Call::ReadStream | Call::FindDedupe | Call::StreamStart => &self.single_reads,
            _ => return Ok(()),
        };
        counter.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }
}

fn t(second: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2023, 11, 29, 12, 0, second).unwrap()
}

fn event(session: usize, kind: EventKind, second: u32) -> IncomingEvent {
    let selection = kind == EventKind::InstitutionSelected;
    let mut event = Event::new(kind).at(t(second));
    if selection {
        event = event.with_institution("ins_1", Some("Bank"));
    }
    IncomingEvent::new(
        SessionId::new(format!("s{session}")).unwrap(),
        Provider::Moneykit,
        event,
    )
}

/// Three groups over 20 sessions: opens, a rejected event, duplicates within a group and
/// across groups, and a late event that makes the rejected one legal.
fn batches() -> Vec<Vec<IncomingEvent>> {
    let mut first: Vec<_> = (0..20).map(|s| event(s, EventKind::Opened, 0)).collect();
    // s1 exits twice: the second exit finds it exited and is rejected.
    first.push(event(1, EventKind::Exited, 5));
    first.push(event(1, EventKind::Exited, 6));
    first.push(event(2, EventKind::Opened, 0));
    let mut second: Vec<_> = (0..20)
        .filter(|s| *s != 1)
        .map(|s| event(s, EventKind::InstitutionSelected, 1))
        .collect();
    second.push(event(3, EventKind::Opened, 0));
    // A late success for s1 (before its exits in event time) makes its rejected exit legal
    // (exit after success).
    let third = vec![
        event(4, EventKind::Opened, 9),
        event(1, EventKind::Succeeded, 4),
    ];
    vec![first, second, third]
}

/// What an outcome says, without the parts that legitimately differ (event ids).
fn shape(outcome: &IngestOutcome) -> String {
    match outcome {
        IngestOutcome::Accepted {
            version,
            position,
            late,
            rejected,
            ..
        } => format!("accepted {version} {position} late {late} rejected {rejected}"),
        IngestOutcome::Duplicate { original, .. } => format!("duplicate of {original:?}"),
        IngestOutcome::Rejected {
            version, reason, ..
        } => format!("rejected {version}: {reason}"),
        IngestOutcome::Quarantined { entry, .. } => format!("quarantined as {entry}"),
        IngestOutcome::Refused { error } => format!("refused: {error}"),
    }
}

#[tokio::test]
async fn a_shared_store_is_read_once_per_group_and_decides_like_the_cache() {
    let shared_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Watched {
        inner: SledStore::open(shared_dir.path()).unwrap(),
        watch: Counting::default(),
    });
    let shared = Engine::open_with(EngineConfig::with_store(store.clone())).unwrap();
    let local_dir = tempfile::tempdir().unwrap();
    let local = Engine::open(local_dir.path()).unwrap();

    for (index, batch) in batches().into_iter().enumerate() {
        store.watch.take();
        let from_shared = shared.ingest_batch(batch.clone()).await.unwrap();
        let (groups_read, single_reads) = store.watch.take();
        assert_eq!(groups_read, 1, "group {index}: one read_streams call");
        // The third group's late success re-folds s1 from its stream: one read.
        let refolds = usize::from(index == 2);
        assert_eq!(
            single_reads, refolds,
            "group {index}: no per-session or per-event reads but a late event's re-fold"
        );
        let from_local = local.ingest_batch(batch).await.unwrap();
        let shapes = |outcomes: &[IngestOutcome]| outcomes.iter().map(shape).collect::<Vec<_>>();
        assert_eq!(shapes(&from_shared), shapes(&from_local), "group {index}");
    }

    for session in 0..20 {
        let id = SessionId::new(format!("s{session}")).unwrap();
        let a = shared.session(&id).await.unwrap().unwrap();
        let b = local.session(&id).await.unwrap().unwrap();
        assert_eq!((a.state, a.rejected), (b.state, b.rejected), "session {id}");
    }
    let s1 = shared
        .session(&SessionId::new("s1").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(s1.rejected, 0, "the late success made both exits legal");
    let rejected = shared.rejected(None).await.unwrap().events;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(
        (
            rejected[0].stream.as_str(),
            rejected[0].entry.event.as_str()
        ),
        ("s4", "opened"),
        "the second open of s4 stays rejected"
    );
    assert!(shared.verify().await.unwrap().is_clean());
}
