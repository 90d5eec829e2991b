//! Damage on disk is never silent (issue 25, finding 1): a real `linkflow serve` answers five
//! requests and is killed; one bit flips inside the second of the five frames of its
//! write-ahead log. `linkflow verify` says the log is damaged (exit 1) and deletes nothing;
//! `linkflow repair` keeps a copy, recovers the first request and names every event it could
//! not recover; the store then verifies clean and takes writes again.

use std::process::{Command, Output};

use linkflow_e2e::{linkflow_bin, Server};

fn linkflow(data_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(linkflow_bin())
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("linkflow runs")
}

fn open_event(second: u32) -> String {
    format!(
        r#"{{"name":"open","properties":{{}},"meta":{{"link_session_id":"dmg-{second}","timestamp":"2023-11-29T12:44:{second:02}.000Z"}}}}"#
    )
}

/// The log's segments with frames, read whole.
fn segments(dir: &std::path::Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .filter(|(_, bytes)| bytes.len() >= 16 && bytes[..4] != [0, 0, 0, 0])
        .collect();
    found.sort();
    found
}

#[tokio::test]
async fn a_damaged_log_frame_is_reported_kept_and_repaired_naming_what_was_lost() {
    let dir = tempfile::tempdir().unwrap();
    {
        let server = Server::start(dir.path(), &[]);
        let client = reqwest::Client::new();
        for second in 1..=5 {
            let response = client
                .post(server.url("/v1/events/moneykit"))
                .body(open_event(second))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
        }
        // Dropped: SIGKILL, with the five acknowledged frames in the log.
    }
    let found = segments(dir.path());
    assert_eq!(found.len(), 1, "one segment holds the frames");
    let (segment, mut bytes) = found.into_iter().next().unwrap();
    // A frame is len:u32 crc:u32 seq:u64 payload; flip one bit inside the second's payload.
    let first_len = u32::from_be_bytes(bytes[..4].try_into().unwrap()) as usize;
    let second = 16 + first_len;
    assert_eq!(
        u64::from_be_bytes(bytes[second + 8..second + 16].try_into().unwrap()),
        2
    );
    bytes[second + 20] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let verify = linkflow(dir.path(), &["verify"]);
    let text = String::from_utf8_lossy(&verify.stdout);
    assert_eq!(verify.status.code(), Some(1), "{text}");
    assert!(
        text.contains("write-ahead log is damaged") && text.contains("frame 2"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "verify leaves the damaged log as it is"
    );

    let repair = linkflow(dir.path(), &["repair"]);
    let text = String::from_utf8_lossy(&repair.stdout);
    assert_eq!(repair.status.code(), Some(1), "{text}");
    assert!(text.contains("lost: frame 2, unreadable"), "{text}");
    for second in 3..=5 {
        assert!(
            text.contains(&format!("event `dmg-{second}` version 1")),
            "{text}"
        );
    }
    assert!(dir.path().join("wal.damaged-1").is_dir());

    let verify = linkflow(dir.path(), &["verify"]);
    assert_eq!(
        verify.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let kept = linkflow(dir.path(), &["show", "dmg-1", "--json"]);
    assert!(kept.status.success());
    let lost = linkflow(dir.path(), &["show", "dmg-3"]);
    assert!(
        !lost.status.success(),
        "the lost request is gone, and said so"
    );
    let again = linkflow(dir.path(), &["repair"]);
    assert_eq!(again.status.code(), Some(0));
}

/// A sled store whose syncs fail while `failing` is set: a disk that fails.
struct FailingDisk {
    inner: linkflow_store::SledStore,
    failing: std::sync::atomic::AtomicBool,
}

impl linkflow_store::EventStore for FailingDisk {
    fn commit(
        &self,
        commit: linkflow_store::Commit,
    ) -> Result<linkflow_store::Receipt, linkflow_store::CommitError> {
        self.inner.commit(commit)
    }
    fn compact(
        &self,
        stream: &linkflow_core::SessionId,
        snapshot: linkflow_store::Snapshot,
    ) -> Result<u64, linkflow_store::CommitError> {
        self.inner.compact(stream, snapshot)
    }
    fn sync(&self) -> Result<(), linkflow_store::StoreError> {
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(linkflow_store::StoreError::Io {
                path: "the log".into(),
                source: std::io::Error::from_raw_os_error(5),
            });
        }
        self.inner.sync()
    }
    fn after_sync(&self) -> Result<(), linkflow_store::StoreError> {
        self.inner.after_sync()
    }
    fn head(&self) -> Result<linkflow_core::Position, linkflow_store::StoreError> {
        self.inner.head()
    }
    fn numbers_at_commit(&self) -> bool {
        self.inner.numbers_at_commit()
    }
    fn settle(&self) -> Result<linkflow_core::Position, linkflow_store::StoreError> {
        self.inner.settle()
    }
    fn read_stream(
        &self,
        stream: &linkflow_core::SessionId,
        after: linkflow_core::Version,
        limit: usize,
    ) -> Result<Vec<linkflow_store::StoredEvent>, linkflow_store::StoreError> {
        self.inner.read_stream(stream, after, limit)
    }
    fn read_all(
        &self,
        after: linkflow_core::Position,
        limit: usize,
    ) -> Result<Vec<linkflow_store::StoredEvent>, linkflow_store::StoreError> {
        self.inner.read_all(after, limit)
    }
    fn find_dedupe(
        &self,
        stream: &linkflow_core::SessionId,
        key: &linkflow_store::DedupeKey,
    ) -> Result<Option<linkflow_store::DedupeHit>, linkflow_store::StoreError> {
        self.inner.find_dedupe(stream, key)
    }
    fn stream_start(
        &self,
        stream: &linkflow_core::SessionId,
    ) -> Result<linkflow_store::StreamStart, linkflow_store::StoreError> {
        self.inner.stream_start(stream)
    }
    fn for_each_snapshot(
        &self,
        after: Option<&linkflow_core::SessionId>,
        visit: &mut dyn FnMut(
            linkflow_core::SessionId,
            linkflow_store::Snapshot,
        ) -> std::ops::ControlFlow<()>,
    ) -> Result<(), linkflow_store::StoreError> {
        self.inner.for_each_snapshot(after, visit)
    }
    fn for_each_index_key(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<(), linkflow_store::StoreError> {
        self.inner.for_each_index_key(from, to, visit)
    }
    fn for_each_index_key_descending(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut dyn FnMut(&[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<(), linkflow_store::StoreError> {
        self.inner.for_each_index_key_descending(from, to, visit)
    }
    fn for_each_counter(
        &self,
        from: &[u8],
        to: &[u8],
        visit: &mut linkflow_store::store::CounterVisitor<'_>,
    ) -> Result<(), linkflow_store::StoreError> {
        self.inner.for_each_counter(from, to, visit)
    }
    fn for_each_event_by_stream(
        &self,
        visit: &mut dyn FnMut(linkflow_store::StoredEvent) -> std::ops::ControlFlow<()>,
    ) -> Result<(), linkflow_store::StoreError> {
        self.inner.for_each_event_by_stream(visit)
    }
    fn verify(&self) -> Result<linkflow_store::VerifyReport, linkflow_store::StoreError> {
        self.inner.verify()
    }
}

/// Finding 3 of issue 25: a failed fsync stops all acks (fail-stop) and `/healthz` and
/// `/readyz` say so, while reads keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_fsync_nothing_more_is_acknowledged_and_healthz_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let disk = std::sync::Arc::new(FailingDisk {
        inner: linkflow_store::SledStore::open(dir.path()).unwrap(),
        failing: std::sync::atomic::AtomicBool::new(false),
    });
    let engine =
        linkflow::Engine::open_with(linkflow::EngineConfig::with_store(disk.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(linkflow_http::serve(
        listener,
        engine.clone(),
        linkflow_http::HttpConfig::default(),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let post = |second: u32| {
        client
            .post(format!("{base}/v1/events/moneykit"))
            .body(open_event(second))
            .send()
    };
    assert_eq!(post(1).await.unwrap().status(), 200);
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    disk.failing
        .store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(post(2).await.unwrap().status(), 503);
    // The disk answers again: still nothing is acknowledged until the store is reopened.
    disk.failing
        .store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(post(3).await.unwrap().status(), 503);
    // Both probes say so, in the API's error shape: restarting reopens the store.
    for probe in ["healthz", "readyz"] {
        let health = client.get(format!("{base}/{probe}")).send().await.unwrap();
        assert_eq!(health.status(), 503, "{probe}");
        let reason: serde_json::Value = health.json().await.unwrap();
        assert_eq!(reason["error"], "engine_failed", "{probe}");
        assert!(
            reason["detail"]
                .as_str()
                .unwrap()
                .contains("stopped taking writes"),
            "{probe}: {reason}"
        );
    }
    let read = client
        .get(format!("{base}/v1/sessions/dmg-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200, "reads keep working");
    server.abort();
}
