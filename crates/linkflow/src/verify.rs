//! The engine's consistency check: the store's own walk, plus every session folded from its log
//! and compared with its snapshot.

use std::ops::ControlFlow;

use linkflow_core::SessionId;
use linkflow_store::{EventStore, Problem, VerifyReport};

use crate::error::EngineError;
use crate::folded::Folded;
use crate::query::decode_snapshot;

/// Walks the log and indexes (the store's check), then folds every session from its events:
/// each must fold without a rejection and equal its snapshot.
pub(crate) fn verify(store: &dyn EventStore) -> Result<VerifyReport, EngineError> {
    let mut report = store.verify()?;
    // (stream, its fold so far, the first refusal if any)
    type Fold = (SessionId, Option<Folded>, Option<String>);
    let mut folded: Vec<Fold> = Vec::new();
    let mut current: Option<Fold> = None;
    store.for_each_event_by_stream(&mut |stored| {
        if current.as_ref().map(|(id, _, _)| id) != Some(&stored.stream) {
            folded.extend(current.take());
            current = Some((stored.stream.clone(), None, None));
        }
        if let Some((_, folded, refused @ None)) = &mut current {
            let state = folded.get_or_insert_with(|| Folded::initial_for(&stored.data.body));
            if let Err(reason) = state.apply_in_place(&stored.data.body) {
                *refused = Some(format!(
                    "version {} is refused on replay: {reason}",
                    stored.version
                ));
            }
        }
        ControlFlow::Continue(())
    })?;
    folded.extend(current.take());
    // A stream in this list was folded from at least one event, so its state is set.
    let folded = folded
        .into_iter()
        .filter_map(|(id, state, refused)| match (refused, state) {
            (Some(message), _) => Some((id, Err(message))),
            (None, state) => state.map(|state| (id, Ok(state))),
        });
    for (session_id, result) in folded {
        let what = format!("stream `{session_id}`");
        match result {
            Err(message) => report.problems.push(Problem {
                record: what,
                message,
            }),
            Ok(session) => match store.snapshot(&session_id)? {
                None => report.problems.push(Problem {
                    record: what,
                    message: "has events but no snapshot".into(),
                }),
                Some(snapshot) => match decode_snapshot(&snapshot) {
                    None => report.problems.push(Problem {
                        record: format!("snapshot of `{session_id}`"),
                        message: "cannot be decoded by this build or does not match its version (reads fall back to a full replay)"
                            .into(),
                    }),
                    Some(state) if state != session => report.problems.push(Problem {
                        record: format!("snapshot of `{session_id}`"),
                        message: format!(
                            "differs from the fold of the log (snapshot version {}, log version {})",
                            state.version(),
                            session.version()
                        ),
                    }),
                    Some(_) => {}
                },
            },
        }
    }
    Ok(report)
}
