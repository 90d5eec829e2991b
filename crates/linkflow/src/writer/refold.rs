//! The pass at open that folds again, with this build's rules, the streams whose snapshots
//! were folded with other rules.

use super::*;

/// Snapshots of other rules collected per walk of the snapshots (bounds the pass's memory).
const REFOLD_SCAN: usize = 65_536;

/// Streams folded again per commit of the pass.
const REFOLD_BATCH: usize = 512;

/// What the pass over snapshots folded with other rules did when the engine opened
/// ([`crate::Engine::refolded_at_open`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RefoldReport {
    /// Whether the pass ran: the store did not record that its snapshots were folded with this
    /// build's rules ([`linkflow_core::RULES_VERSION`]).
    pub ran: bool,
    /// Streams folded again (their snapshots were folded with other rules).
    pub streams: u64,
    /// Accounts linked because a session's new fold accepts its success.
    pub linked: u64,
    /// Links withdrawn because a session's new fold no longer does (or names another account).
    pub withdrawn: u64,
}

/// Folds again every stream whose snapshot was folded with other rules, before the engine
/// takes its first request, and makes linked accounts follow: the rules of this build decide
/// every session, with no manual redrive. The store's marker ([`EventStore::folded_with`])
/// says when there is nothing to do, so an open of a store at these rules walks nothing.
pub(crate) fn refold_stale(shared: &Shared) -> Result<RefoldReport, EngineError> {
    let mut report = RefoldReport::default();
    if shared.store.folded_with()? == Some(RULES_VERSION) {
        return Ok(report);
    }
    report.ran = true;
    loop {
        let mut stale = Vec::new();
        shared
            .store
            .for_each_snapshot(None, &mut |stream, snapshot| {
                if matches!(
                    read_snapshot_state(&snapshot.state),
                    SnapshotState::OtherRules(_)
                ) {
                    stale.push((stream, snapshot));
                }
                if stale.len() == REFOLD_SCAN {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })?;
        let more = stale.len() == REFOLD_SCAN;
        for chunk in stale.chunks(REFOLD_BATCH) {
            refold_chunk(shared, chunk, &mut report)?;
        }
        if !more {
            break;
        }
    }
    if report.streams > 0 {
        // The new snapshots and account events are durable before the marker says so.
        shared.store.sync()?;
    }
    shared.store.set_folded_with(RULES_VERSION)?;
    Ok(report)
}

/// Folds a chunk of streams again in one commit (planned again after a conflict on a shared
/// store).
fn refold_chunk(
    shared: &Shared,
    chunk: &[(SessionId, Snapshot)],
    report: &mut RefoldReport,
) -> Result<(), EngineError> {
    let retries = if shared.store_is_shared {
        MAX_SHARED_CONFLICT_RETRIES
    } else {
        MAX_CONFLICT_RETRIES
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut plan = Plan::new(shared, None);
        let mut accounts = Vec::new();
        for (stream, snapshot) in chunk {
            accounts.extend(plan.plan_refold(stream, snapshot)?);
        }
        let commit = plan.finish();
        let result = if commit.is_empty() {
            Ok(())
        } else {
            shared.store.commit(commit).map(drop)
        };
        evict(shared, plan.sessions.keys());
        match result {
            Ok(()) => {
                for account in accounts {
                    match account {
                        PlannedAccount::Linked { .. } => report.linked += 1,
                        PlannedAccount::Withdrawn { .. } => report.withdrawn += 1,
                        PlannedAccount::NotLinked(_) => {}
                    }
                }
                report.streams += chunk.len() as u64;
                return Ok(());
            }
            Err(error) if is_race(&error) && attempt < retries => back_off(attempt, plan.now),
            Err(error) => return Err(error.into()),
        }
    }
}
