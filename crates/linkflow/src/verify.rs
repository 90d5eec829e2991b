//! The engine's consistency check: the store's own walk, plus every stream folded from its log
//! and compared with its snapshot.

use std::ops::ControlFlow;

use linkflow_core::{SessionId, RULES_VERSION};
use linkflow_store::{EventStore, Problem, VerifyReport};

use crate::error::EngineError;
use crate::folded::{read_snapshot_state, Folded, SnapshotState, StreamFolder};

/// Walks the log and indexes (the store's check), then folds every stream from its events:
/// each must fold (every event of the stream's kind) and equal its snapshot.
pub(crate) fn verify(store: &dyn EventStore) -> Result<VerifyReport, EngineError> {
    let mut report = store.verify()?;
    let mut folded: Vec<(SessionId, Result<Folded, String>)> = Vec::new();
    let mut current: Option<(SessionId, StreamFolder)> = None;
    let finish = |(stream, folder): (SessionId, StreamFolder)| match folder.finish() {
        Ok(Some(state)) => Some((stream, Ok(state))),
        Ok(None) => None,
        Err((version, reason)) => Some((
            stream,
            Err(format!("version {version} cannot be folded: {reason}")),
        )),
    };
    store.for_each_event_by_stream(&mut |stored| {
        if current.as_ref().map(|(id, _)| id) != Some(&stored.stream) {
            folded.extend(current.take().and_then(finish));
            current = Some((stored.stream.clone(), StreamFolder::default()));
        }
        if let Some((_, folder)) = &mut current {
            folder.push(stored.data.body);
        }
        ControlFlow::Continue(())
    })?;
    folded.extend(current.take().and_then(finish));
    for (session_id, result) in folded {
        let what = format!("stream `{session_id}`");
        match result {
            Err(message) => report.problems.push(Problem {
                record: what,
                message,
            }),
            Ok(state) => match store.stream_start(&session_id).map(|start| start.snapshot) {
                // A damaged head is one more problem to report, not a reason to stop.
                Err(linkflow_store::StoreError::Corrupt(corrupt)) => {
                    report.problems.push(corrupt.into())
                }
                Err(error) => return Err(error.into()),
                Ok(None) => report.problems.push(Problem {
                    record: what,
                    message: "has events but no snapshot".into(),
                }),
                Ok(Some(snapshot)) => {
                    let record = format!("snapshot of `{session_id}`");
                    let message = match read_snapshot_state(&snapshot.state) {
                        SnapshotState::Unreadable => Some(
                            "cannot be decoded by this build (reads fold the stream from its log)"
                                .to_owned(),
                        ),
                        SnapshotState::OtherRules(rules) => Some(format!(
                            "was folded with rules version {rules}, this build's are {RULES_VERSION} (reads fold the stream again)"
                        )),
                        SnapshotState::Current(snapshot_state) if snapshot_state != state => {
                            Some(format!(
                                "differs from the fold of the log (snapshot version {}, log version {})",
                                snapshot_state.version(),
                                state.version()
                            ))
                        }
                        SnapshotState::Current(_) if snapshot.version != state.version() => {
                            Some(format!(
                                "is labelled version {}, the log's is {}",
                                snapshot.version,
                                state.version()
                            ))
                        }
                        SnapshotState::Current(_) => None,
                    };
                    if let Some(message) = message {
                        report.problems.push(Problem { record, message });
                    }
                }
            },
        }
    }
    Ok(report)
}
