//! The pass at open that folds again, with this build's rules, the streams whose snapshots
//! were folded with other rules.

use super::*;

/// Snapshots of other rules collected per walk of the snapshots (bounds the pass's memory).
const REFOLD_SCAN: usize = 65_536;

/// Streams folded again per commit of the pass.
const REFOLD_BATCH: usize = 512;

/// Index entries or counters removed per commit when the pass clears them.
const CLEAR_BATCH: usize = 4_096;

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
/// every session, with no manual redrive. The indexes and counters derive from the folds, so
/// the pass rebuilds them: it clears them first, then every stream adds its projection (the
/// streams folded again in their commits, the others in commits of their own). The store's
/// marker ([`EventStore::folded_with`]) says when there is nothing to do, so an open of a
/// store at these rules walks nothing.
pub(crate) fn refold_stale(shared: &Shared) -> Result<RefoldReport, EngineError> {
    let mut report = RefoldReport::default();
    if shared.store.folded_with()? == Some(RULES_VERSION) {
        return Ok(report);
    }
    report.ran = true;
    let mut wrote = clear_index(shared)?;
    let mut after: Option<SessionId> = None;
    loop {
        let mut stale = Vec::new();
        let mut current = Vec::new();
        let mut walked = 0;
        let mut last = None;
        shared
            .store
            .for_each_snapshot(after.as_ref(), &mut |stream, snapshot| {
                walked += 1;
                last = Some(stream.clone());
                if matches!(
                    read_snapshot_state(&snapshot.state),
                    SnapshotState::OtherRules(_)
                ) {
                    stale.push((stream, snapshot));
                } else {
                    current.push(stream);
                }
                if walked == REFOLD_SCAN {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })?;
        after = last;
        for chunk in stale.chunks(REFOLD_BATCH) {
            refold_chunk(shared, chunk, &mut report)?;
        }
        for chunk in current.chunks(REFOLD_BATCH) {
            wrote |= reindex_chunk(shared, chunk)?;
        }
        if walked < REFOLD_SCAN {
            break;
        }
    }
    if wrote || report.streams > 0 {
        // The new snapshots, account events and index entries are durable before the marker
        // says so.
        shared.store.sync()?;
    }
    shared.store.set_folded_with(RULES_VERSION)?;
    Ok(report)
}

/// Removes every index entry and counter, in commits of [`CLEAR_BATCH`]; answers whether
/// there was any.
fn clear_index(shared: &Shared) -> Result<bool, EngineError> {
    let mut wrote = false;
    loop {
        let mut commit = Commit::default();
        shared
            .store
            .for_each_index_key(&[0], &[u8::MAX], &mut |key| {
                commit.index.push(IndexChange::Delete(key.to_vec()));
                if commit.index.len() == CLEAR_BATCH {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })?;
        shared
            .store
            .for_each_counter(&[0], &[u8::MAX], &mut |cell, name, count| {
                commit.counters.push(CounterDelta::new(cell, name, -count));
                if commit.counters.len() == CLEAR_BATCH {
                    std::ops::ControlFlow::Break(())
                } else {
                    std::ops::ControlFlow::Continue(())
                }
            })?;
        if commit.is_empty() {
            return Ok(wrote);
        }
        shared.store.commit(commit)?;
        wrote = true;
    }
}

/// Adds the projection of every stream of `chunk` (folded with this build's rules, or folded
/// from its log when its snapshot cannot be read) to the cleared indexes, in one commit;
/// answers whether it wrote any.
fn reindex_chunk(shared: &Shared, chunk: &[SessionId]) -> Result<bool, EngineError> {
    let mut commit = Commit::default();
    let mut funnel = index::FunnelDeltas::default();
    for stream in chunk {
        if let Some(state) = load_state(shared.store.as_ref(), stream)? {
            let projection = index::project(&state);
            index::diff(
                stream,
                &Projection::default(),
                &projection,
                &mut commit,
                &mut funnel,
            );
        }
    }
    funnel.flush(&mut commit);
    if commit.is_empty() {
        return Ok(false);
    }
    shared.store.commit(commit)?;
    Ok(true)
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
