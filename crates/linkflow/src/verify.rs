//! The engine's consistency check: the store's own walk, plus every stream folded from its log
//! and compared with its snapshot.

use std::ops::ControlFlow;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

use linkflow_core::{SessionId, RULES_VERSION};
use linkflow_store::{EventStore, Problem, VerifyReport};

use crate::cache::SessionState;
use crate::error::EngineError;
use crate::folded::{read_snapshot_state, SnapshotState};
use crate::index::{self, FAMILIES};
use crate::query::StreamFold;

/// Counters listed one by one in a report, at most.
const MAX_COUNTER_PROBLEMS: usize = 20;

/// An index family's entries as a count and an order-free sum of their hashes: what the fold
/// expects and what the store holds compare without holding every key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct FamilySum {
    entries: u64,
    hash: u64,
}

impl FamilySum {
    fn add(&mut self, key: &[u8]) {
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        self.entries += 1;
        self.hash = self.hash.wrapping_add(hasher.finish());
    }
}

/// What the indexes and counters should hold, from the fold of every stream.
#[derive(Default)]
struct Expected {
    families: BTreeMap<u8, FamilySum>,
    counters: BTreeMap<(Vec<u8>, Vec<u8>), i64>,
}

impl Expected {
    fn add(&mut self, stream: &SessionId, state: &SessionState) {
        let projection = index::project(state);
        for key in &index::keys_of(&projection, stream) {
            self.families.entry(key[0]).or_default().add(key);
        }
        index::counters_of(&projection, &mut self.counters);
    }

    /// Compares the store's index entries and counters with the fold's.
    fn check(
        mut self,
        store: &dyn EventStore,
        report: &mut VerifyReport,
    ) -> Result<(), EngineError> {
        self.counters.retain(|_, count| *count != 0);
        let mut stored: BTreeMap<u8, FamilySum> = BTreeMap::new();
        store.for_each_index_key(&[0], &[u8::MAX], &mut |key| {
            stored.entry(key[0]).or_default().add(key);
            ControlFlow::Continue(())
        })?;
        for (family, name) in FAMILIES {
            let want = self.families.remove(&family).unwrap_or_default();
            let have = stored.remove(&family).unwrap_or_default();
            if want != have {
                report.problems.push(Problem {
                    record: format!("index `{name}`"),
                    message: format!(
                        "differs from the fold of the log: {} entries stored, {} expected{}",
                        have.entries,
                        want.entries,
                        if have.entries == want.entries {
                            " (other keys)"
                        } else {
                            ""
                        }
                    ),
                });
            }
        }
        for (family, sum) in stored {
            report.problems.push(Problem {
                record: format!("index family {:?}", char::from(family)),
                message: format!("holds {} entries of no family linkflow writes", sum.entries),
            });
        }
        let mut wrong = 0usize;
        let mut note =
            |report: &mut VerifyReport, cell: &[u8], name: &[u8], have: i64, want: i64| {
                wrong += 1;
                if wrong <= MAX_COUNTER_PROBLEMS {
                    report.problems.push(Problem {
                        record: format!(
                            "counter {:?} of cell {:?}",
                            String::from_utf8_lossy(name),
                            String::from_utf8_lossy(cell)
                        ),
                        message: format!("holds {have}, the fold of the log gives {want}"),
                    });
                }
            };
        store.for_each_counter(&[0], &[u8::MAX], &mut |cell, name, have| {
            let want = self
                .counters
                .remove(&(cell.to_vec(), name.to_vec()))
                .unwrap_or(0);
            if want != have {
                note(report, cell, name, have, want);
            }
            ControlFlow::Continue(())
        })?;
        for ((cell, name), want) in std::mem::take(&mut self.counters) {
            note(report, &cell, &name, 0, want);
        }
        if wrong > MAX_COUNTER_PROBLEMS {
            report.problems.push(Problem {
                record: "counters".into(),
                message: format!(
                    "{} more counters differ from the fold of the log",
                    wrong - MAX_COUNTER_PROBLEMS
                ),
            });
        }
        Ok(())
    }
}

/// Walks the log and indexes (the store's check), then folds every stream from its events,
/// one stream at a time (memory does not grow with the streams): each must fold (every event of
/// the stream's kind) and equal its snapshot; a compacted session's snapshot is its fold once
/// the events after its compaction check out; and the engine's index entries and counters must
/// be what the folds add up to.
pub(crate) fn verify(store: &dyn EventStore) -> Result<VerifyReport, EngineError> {
    let mut report = store.verify()?;
    let mut expected = Expected::default();
    let mut current: Option<(SessionId, StreamFold)> = None;
    let mut failure = None;
    store.for_each_event_by_stream(&mut |stored| {
        if current.as_ref().map(|(id, _)| id) != Some(&stored.stream) {
            if let Some((stream, fold)) = current.take() {
                if let Err(error) = check_stream(store, stream, fold, &mut expected, &mut report) {
                    failure = Some(error);
                    return ControlFlow::Break(());
                }
            }
            current = Some((stored.stream.clone(), StreamFold::starting_with(&stored)));
        }
        if let Some((_, fold)) = &mut current {
            fold.push(stored);
        }
        ControlFlow::Continue(())
    })?;
    if let Some(error) = failure {
        return Err(error);
    }
    if let Some((stream, fold)) = current.take() {
        check_stream(store, stream, fold, &mut expected, &mut report)?;
    }
    // Sessions compacted with no event after their compaction have no event to walk: their
    // snapshots are their folds. (A snapshot of a stream without events that is not one of
    // them is named by the store's walk: it is ahead of its stream.)
    let walk = crate::query::for_each_wholly_compacted(store, &mut |stream, folded| match folded {
        Ok((provider, folded)) => expected.add(&stream, &SessionState { provider, folded }),
        Err(error) => report.problems.push(Problem {
            record: format!("snapshot of `{stream}`"),
            message: error.to_string(),
        }),
    });
    match walk {
        Ok(_) => {}
        // The store's walk names the damaged head; the sessions after it are not added, so
        // the index comparison below may name more.
        Err(EngineError::Store(store_error)) => match &*store_error {
            linkflow_store::StoreError::Corrupt(corrupt) => report.problems.push(Problem {
                record: corrupt.key.clone(),
                message: format!("the walk of the snapshots stopped here: {}", corrupt.reason),
            }),
            _ => return Err(EngineError::Store(store_error)),
        },
        Err(error) => return Err(error),
    }
    expected.check(store, &mut report)?;
    Ok(report)
}

/// Checks one stream walked from its events: its fold (or, compacted, its snapshot once the
/// events after the compaction check out) against its snapshot, and adds its projection to
/// what the indexes should hold. Damage is a problem in `report`; only a failure to read is an
/// error.
fn check_stream(
    store: &dyn EventStore,
    stream: SessionId,
    fold: StreamFold,
    expected: &mut Expected,
    report: &mut VerifyReport,
) -> Result<(), EngineError> {
    let what = format!("stream `{stream}`");
    let state = match fold {
        StreamFold::Whole(folder) => match folder.finish() {
            Ok(Some(state)) => state,
            Ok(None) => return Ok(()),
            Err((version, reason)) => {
                report.problems.push(Problem {
                    record: what,
                    message: format!("version {version} cannot be folded: {reason}"),
                });
                return Ok(());
            }
        },
        compacted => {
            match compacted.finish(store, &stream) {
                Ok(Some((provider, state))) => expected.add(
                    &stream,
                    &SessionState {
                        provider: provider.expect("a compacted fold names its provider"),
                        folded: state,
                    },
                ),
                Ok(None) => {}
                Err(error) if error.is_damage() => report.problems.push(Problem {
                    record: what,
                    message: error.to_string(),
                }),
                Err(error) => return Err(error),
            }
            return Ok(());
        }
    };
    let snapshot = match store.stream_start(&stream).map(|start| start.snapshot) {
        // A damaged head is one more problem to report, not a reason to stop.
        Err(linkflow_store::StoreError::Corrupt(corrupt)) => {
            report.problems.push(corrupt.into());
            return Ok(());
        }
        Err(error) => return Err(error.into()),
        Ok(None) => {
            report.problems.push(Problem {
                record: what,
                message: "has events but no snapshot".into(),
            });
            return Ok(());
        }
        Ok(Some(snapshot)) => snapshot,
    };
    let record = format!("snapshot of `{stream}`");
    let message = match read_snapshot_state(&snapshot.state) {
        SnapshotState::Unreadable => {
            Some("cannot be decoded by this build (reads fold the stream from its log)".to_owned())
        }
        SnapshotState::OtherRules(rules) => Some(format!(
            "was folded with rules version {rules}, this build's are {RULES_VERSION} (reads fold the stream again)"
        )),
        SnapshotState::Current(snapshot_state) if snapshot_state != state => Some(format!(
            "differs from the fold of the log (snapshot version {}, log version {})",
            snapshot_state.version(),
            state.version()
        )),
        SnapshotState::Current(_) if snapshot.version != state.version() => Some(format!(
            "is labelled version {}, the log's is {}",
            snapshot.version,
            state.version()
        )),
        SnapshotState::Current(_) => None,
    };
    expected.add(
        &stream,
        &SessionState {
            provider: snapshot.provider,
            folded: state,
        },
    );
    if let Some(message) = message {
        report.problems.push(Problem { record, message });
    }
    Ok(())
}
