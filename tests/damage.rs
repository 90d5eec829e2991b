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
