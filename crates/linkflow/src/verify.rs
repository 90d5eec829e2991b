//! The engine's consistency check: the store's own walk, plus every session folded from its log
//! and compared with its snapshot.

use std::ops::ControlFlow;

use linkflow_core::{Session, SessionId};
use linkflow_store::{EventStore, Problem, VerifyReport};

use crate::error::EngineError;
use crate::query::decode_snapshot;

/// Walks the log and indexes (the store's check), then folds every session from its events:
/// each must fold without a rejection and equal its snapshot.
pub(crate) fn verify(store: &dyn EventStore) -> Result<VerifyReport, EngineError> {
    let mut report = store.verify()?;
    // (session, its fold so far, the first refusal if any)
    type Fold = (SessionId, Session, Option<String>);
    let mut folded: Vec<Fold> = Vec::new();
    let mut current: Option<Fold> = None;
    store.for_each_event_by_stream(&mut |stored| {
        if current.as_ref().map(|(id, _, _)| id) != Some(&stored.stream) {
            folded.extend(current.take());
            current = Some((stored.stream.clone(), Session::new(), None));
        }
        if let Some((_, session, refused @ None)) = &mut current {
            if let Err(rejection) = session.apply_in_place(&stored.data.event) {
                *refused = Some(format!(
                    "version {} is refused on replay: {rejection}",
                    stored.version
                ));
            }
        }
        ControlFlow::Continue(())
    })?;
    folded.extend(current.take());
    let folded = folded
        .into_iter()
        .map(|(id, session, refused)| match refused {
            Some(message) => (id, Err(message)),
            None => (id, Ok(session)),
        });
    for (session_id, result) in folded {
        let what = format!("session `{session_id}`");
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
                        message: "cannot be decoded by this build (reads fall back to a full replay)"
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
