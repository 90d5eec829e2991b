//! Deciding a group's events: the working copies of its sessions, each event's fate, the
//! re-fold of a session a late event lands in, and the accounts that follow the folds.

use super::*;

/// An event's fate, before the commit fills in versions and positions.
pub(super) enum Planned {
    /// Appended to its stream by op `op`.
    Stored {
        op: usize,
        session: SessionId,
        phase_before: Option<Phase>,
        phase_after: Option<Phase>,
        /// Accepted, or rejected with why, as the stream's fold stands with it.
        verdict: Result<(), String>,
        late: bool,
        /// The stream's rejected events with it.
        rejected: u32,
        accounts: Vec<PlannedAccount>,
        /// Why the payload is in quarantine, when the event is a quarantine entry's payload.
        quarantined: Option<String>,
    },
    /// The same dedupe key came earlier in this group.
    DuplicateOfOp {
        op: usize,
        session: SessionId,
    },
    Duplicate {
        session: SessionId,
        original: DedupeHit,
    },
    Refused(EventError),
}

/// What a session event did to its linked account, before the commit says where it went.
pub(super) enum PlannedAccount {
    Linked { op: usize, stream: SessionId },
    Withdrawn { op: usize, stream: SessionId },
    NotLinked(String),
}

/// Whether a session's fold links an account.
#[derive(Debug, Clone, PartialEq)]
enum Link {
    /// It has no accepted success (or is not a session).
    None,
    /// It succeeded but cannot link one, for the reason given.
    Missing(&'static str),
    /// It links this account, with its success's time and link type.
    Account {
        key: AccountKey,
        at: Option<DateTime<Utc>>,
        link_type: Option<LinkType>,
    },
}

impl Link {
    /// The link of a session's fold: an accepted success with a known user and institution,
    /// or for Plaid with a known item (Plaid's item webhooks name the item alone, so a Plaid
    /// item is its own account: user id empty, the item id in the institution's place).
    fn of(state: &SessionState) -> Link {
        let Some(session) = state.folded.as_session() else {
            return Link::None;
        };
        if session.phase() != Phase::Succeeded {
            return Link::None;
        }
        let at = session.journey().entered_at[usize::from(Phase::Succeeded.rank())];
        if state.provider == Provider::Plaid {
            let Some(item) = session.item_id() else {
                return Link::Missing("the Plaid session names no item_id (forward it with onSuccess once /item/public_token/exchange returned it)");
            };
            return Link::Account {
                key: AccountKey::plaid_item(item),
                at,
                link_type: session.link_type(),
            };
        }
        let Some(user) = session.external_user_id() else {
            return Link::Missing("the session names no external user id");
        };
        let Some(institution) = session.institution() else {
            return Link::Missing("the session names no institution");
        };
        Link::Account {
            key: AccountKey {
                provider: state.provider,
                external_user_id: user.to_owned(),
                institution_id: institution.id.clone(),
            },
            at,
            link_type: session.link_type(),
        }
    }

    fn key(&self) -> Option<&AccountKey> {
        match self {
            Link::Account { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A stream being changed by this group: a copy of its state and whether its snapshot must be
/// rewritten, with what a re-fold of it needs.
pub(super) struct Working {
    pub(super) state: SessionState,
    dirty: bool,
    /// The stream had no event when the group began, so the store holds no dedupe entry for
    /// it: only this group's own keys can match (`Plan::keys`).
    fresh: bool,
    /// Its version when the group began.
    start: Version,
    /// The bodies of its events stored before the group, loaded by its first re-fold.
    stored: Option<Vec<EventBody>>,
    /// This group's appends to it (indexes in `Plan::commit.appends`), in order.
    appended: Vec<usize>,
    /// What its state when the group began added to the indexes and counters (the commit
    /// writes the difference to what the new state adds).
    before: Projection,
}

/// One group's plan: the operations to commit and the copies of the states they lead to.
pub(super) struct Plan<'a> {
    shared: &'a Shared,
    pub(super) now: DateTime<Utc>,
    pub(super) sessions: HashMap<SessionId, Working>,
    /// What the group writes, as decided so far.
    commit: Commit,
    /// Dedupe keys appended in this group, and the append that did it.
    keys: HashMap<DedupeKey, usize>,
    /// On a shared store: the group's sessions and dedupe keys, read in one go before planning.
    read_ahead: Option<StreamsRead>,
    /// The commit's funnel counter deltas, merged.
    funnel: index::FunnelDeltas,
}

impl<'a> Plan<'a> {
    pub(super) fn new(shared: &'a Shared, read_ahead: Option<StreamsRead>) -> Self {
        Plan {
            shared,
            now: Utc::now(),
            sessions: HashMap::new(),
            commit: Commit::default(),
            keys: HashMap::new(),
            read_ahead,
            funnel: index::FunnelDeltas::default(),
        }
    }

    /// Where a dedupe key's first delivery went: from the read-ahead when it asked about the
    /// key, else from the store.
    fn find_dedupe(
        &self,
        session: &SessionId,
        key: &DedupeKey,
    ) -> Result<Option<DedupeHit>, EngineError> {
        if let Some(known) = self
            .read_ahead
            .as_ref()
            .and_then(|read| read.dedupe(session, key))
        {
            return Ok(known.cloned());
        }
        Ok(self.shared.store.find_dedupe(session, key)?)
    }

    /// Adds an append to the commit; returns its index there.
    fn push(&mut self, append: NewAppend) -> usize {
        let index = self.commit.appends.len();
        self.keys.insert(append.event.dedupe_key, index);
        self.commit.appends.push(append);
        index
    }

    /// The working copy of a session, loaded from the cache or the store on first use.
    fn working(
        &mut self,
        session: &SessionId,
        provider: Provider,
        body: &EventBody,
    ) -> Result<&mut Working, EngineError> {
        if !self.sessions.contains_key(session) {
            // On a store other processes write, a remembered state may be stale: re-read it.
            // The commit's expected versions (and its snapshot's) make it fail if the stream
            // changes before it lands.
            let shared_store = self.shared.store_is_shared;
            let cached = if shared_store {
                None
            } else {
                self.shared.cache().get(session)
            };
            let read = self
                .read_ahead
                .as_mut()
                .and_then(|read| read.streams.remove(session));
            let loaded = match (cached, read) {
                (Some(state), _) => Some(state),
                (None, Some(read)) => state_from_read(self.shared.store.as_ref(), session, read)?,
                (None, None) => load_state(self.shared.store.as_ref(), session)?,
            };
            let state = loaded.unwrap_or_else(|| SessionState {
                provider,
                folded: Folded::initial_for(body),
            });
            let start = state.folded.version();
            let before = index::project(&state);
            self.sessions.insert(
                session.clone(),
                Working {
                    state,
                    dirty: false,
                    fresh: start == Version::EMPTY,
                    start,
                    stored: None,
                    appended: Vec::new(),
                    before,
                },
            );
        }
        Ok(self
            .sessions
            .get_mut(session)
            .expect("the session was inserted just above"))
    }

    /// Plans one event. A stream whose stored data cannot be read (a damaged record or head, a
    /// log that no longer folds) refuses only its own events: the rest of the group commits.
    pub(super) fn plan_event(&mut self, incoming: &IncomingEvent) -> Result<Planned, EngineError> {
        match self.plan_event_in_stream(incoming) {
            Err(error) if error.is_damage() => Ok(Planned::Refused(EventError::StreamUnreadable {
                session: incoming.session.clone(),
                reason: error.to_string(),
            })),
            planned => planned,
        }
    }

    fn plan_event_in_stream(&mut self, incoming: &IncomingEvent) -> Result<Planned, EngineError> {
        let key = incoming
            .dedupe_key
            .unwrap_or_else(|| default_dedupe_key(incoming));
        if let Some(duplicate) = self.duplicate(incoming, &key)? {
            return Ok(duplicate);
        }
        let new = NewEvent {
            event_id: incoming.event_id.unwrap_or_else(Uuid::now_v7),
            dedupe_key: key,
            provider: incoming.provider,
            body: incoming.body.clone(),
            raw_name: incoming.raw_name.clone(),
            raw: incoming.raw.clone(),
            received_at: incoming.received_at.unwrap_or(self.now),
        };
        if let Some(refused) = self.refusal(incoming, &new)? {
            return Ok(Planned::Refused(refused));
        }
        self.plan_new(&incoming.session, new)
    }

    /// The event's duplicate outcome, if its dedupe key came earlier in this group or is
    /// stored in its stream.
    fn duplicate(
        &mut self,
        incoming: &IncomingEvent,
        key: &DedupeKey,
    ) -> Result<Option<Planned>, EngineError> {
        let session = &incoming.session;
        if let Some(&op) = self.keys.get(key) {
            return Ok(Some(Planned::DuplicateOfOp {
                op,
                session: session.clone(),
            }));
        }
        // Load the session before the dedupe check. On a shared store this also guards it:
        // another node storing this key after the check then moves the version the commit
        // expects (or holds the key the commit appends: a refused commit, decided again). A
        // stream that was empty when the group began has no stored dedupe entry, so its events
        // skip the store lookup (most events of new sessions in a batch).
        let fresh = self
            .working(session, incoming.provider, &incoming.body)?
            .fresh;
        if fresh {
            return Ok(None);
        }
        Ok(self
            .find_dedupe(session, key)?
            .map(|original| Planned::Duplicate {
                session: session.clone(),
                original,
            }))
    }

    /// Why the stream refuses the event, if it does: too large, another provider's stream,
    /// another kind of stream, or a full one.
    fn refusal(
        &mut self,
        incoming: &IncomingEvent,
        new: &NewEvent,
    ) -> Result<Option<EventError>, EngineError> {
        let session = &incoming.session;
        if let Err(CommitError::TooLarge { bytes, limit, .. }) = check_event_size(session, new) {
            return Ok(Some(EventError::TooLarge {
                session: session.clone(),
                bytes,
                limit,
            }));
        }
        let limit = self.shared.max_events_per_stream;
        let working = self.working(session, incoming.provider, &new.body)?;
        if working.state.provider != incoming.provider {
            return Ok(Some(EventError::ProviderMismatch {
                session: session.clone(),
                stored: working.state.provider,
                incoming: incoming.provider,
            }));
        }
        let folded = &working.state.folded;
        if !folded.holds(&new.body) {
            return Ok(Some(EventError::StreamKindMismatch {
                session: session.clone(),
                stream: folded.kind_name(),
                event: new.body.name(),
            }));
        }
        if folded.is_timeline() && folded.version().0 >= u64::from(limit) {
            return Ok(Some(EventError::StreamFull {
                session: session.clone(),
                limit,
            }));
        }
        Ok(None)
    }

    /// Folds a new event into its session (in place, or by folding the session again), adds
    /// its append to the commit, and makes the session's account follow.
    fn plan_new(&mut self, session: &SessionId, new: NewEvent) -> Result<Planned, EngineError> {
        let working = self
            .sessions
            .get_mut(session)
            .expect("the session was loaded by the refusal checks");
        let folded = &working.state.folded;
        let before = folded.version();
        let phase_before = folded.as_session().map(|state| state.phase());
        let link_before = Link::of(&working.state);
        let (verdict, late) = match working.state.folded.append(&new.body) {
            Ok(Append::Accepted(_)) => (Ok(()), false),
            Ok(Append::Rejected(reason)) => (Err(reason), false),
            Ok(Append::Refold) => self.refold(session, &new.body)?,
            Err(reason) => {
                return Ok(Planned::Refused(EventError::QuarantineRule {
                    session: session.clone(),
                    reason,
                }))
            }
        };
        let quarantined = match &new.body {
            EventBody::Quarantined(entry) => Some(entry.reason.clone()),
            _ => None,
        };
        let received_at = new.received_at;
        let op = self.push(NewAppend {
            stream: session.clone(),
            expected: before,
            stored_at: self.now,
            rejected: verdict.is_err(),
            event: new,
        });
        let working = self
            .sessions
            .get_mut(session)
            .expect("the session is being planned");
        working.dirty = true;
        working.appended.push(op);
        let phase_after = working.state.folded.as_session().map(|state| state.phase());
        let rejected = working.state.folded.rejected();
        let link_after = Link::of(&working.state);
        let provider = working.state.provider;
        let version = before.next();
        let accounts = self.follow(
            session,
            provider,
            &version.0.to_be_bytes(),
            received_at,
            link_before,
            link_after,
        )?;
        Ok(Planned::Stored {
            op,
            session: session.clone(),
            phase_before,
            phase_after,
            verdict,
            late,
            rejected,
            accounts,
            quarantined,
        })
    }

    /// Folds `session` again with its new arrival `body`, which does not sort last: every
    /// event it stored before this group, this group's, then `body`. Returns the new arrival's
    /// verdict and whether it is late.
    fn refold(
        &mut self,
        session: &SessionId,
        body: &EventBody,
    ) -> Result<(Result<(), String>, bool), EngineError> {
        let store = Arc::clone(&self.shared.store);
        let working = self
            .sessions
            .get_mut(session)
            .expect("refold is called for a working session");
        if working.stored.is_none() {
            working.stored = Some(read_bodies(store.as_ref(), session, working.start)?);
        }
        let working = &self.sessions[session];
        let mut bodies: Vec<&EventBody> = working
            .stored
            .as_ref()
            .expect("loaded just above")
            .iter()
            .collect();
        for &op in &working.appended {
            bodies.push(&self.commit.appends[op].event.body);
        }
        bodies.push(body);
        let arrival = bodies.len() as u64;
        let stream = Folded::fold_all(&bodies)
            .map_err(|(version, reason)| EngineError::Replay {
                session: session.clone(),
                version: Version(version),
                reason,
            })?
            .expect("the stream holds at least the new event");
        let placed = stream
            .placements
            .iter()
            .find(|placed| placed.arrival == arrival)
            .expect("every event of a fold is placed");
        let verdict = placed.verdict.clone().map(|_| ());
        let late = placed.late;
        self.sessions
            .get_mut(session)
            .expect("refold is called for a working session")
            .state
            .folded = stream.folded;
        Ok((verdict, late))
    }

    /// Makes the session's linked account follow its fold: an account it no longer links gets
    /// a `link_withdrawn` event, one it now links a `linked` event. Their dedupe keys derive
    /// from the session and `cause` (the arrival that changed the fold, or the rules a pass
    /// re-folded it with), so a replanned group writes them once.
    fn follow(
        &mut self,
        session: &SessionId,
        provider: Provider,
        cause: &[u8],
        received_at: DateTime<Utc>,
        before: Link,
        after: Link,
    ) -> Result<Vec<PlannedAccount>, EngineError> {
        let mut accounts = Vec::new();
        if before == after {
            return Ok(accounts);
        }
        let arrival = cause;
        if let Link::Account { key, at, .. } = &before {
            if after.key() != Some(key) {
                let mut event = AccountEvent::new(AccountEventKind::LinkWithdrawn);
                event.occurred_at = *at;
                // A key without a stream id was never linked.
                if let Ok(stream) = account_stream(key) {
                    let derived = Derived {
                        session,
                        provider,
                        arrival,
                        received_at,
                    }
                    .event(stream, key, event, "link_withdrawn");
                    accounts.extend(self.plan_account(&derived, false)?);
                }
            }
        }
        match after {
            Link::Account { key, at, link_type } if before.key() != Some(&key) => {
                let mut event = AccountEvent::new(AccountEventKind::Linked);
                event.occurred_at = at;
                event.link_type = link_type;
                let stream = match account_stream(&key) {
                    Ok(stream) => stream,
                    Err(reason) => {
                        accounts.push(PlannedAccount::NotLinked(reason));
                        return Ok(accounts);
                    }
                };
                let derived = Derived {
                    session,
                    provider,
                    arrival,
                    received_at,
                }
                .event(stream, &key, event, "linked");
                accounts.extend(self.plan_account(&derived, true)?);
            }
            Link::Missing(reason) if !matches!(before, Link::Missing(_)) => {
                accounts.push(PlannedAccount::NotLinked(reason.to_owned()));
            }
            _ => {}
        }
        Ok(accounts)
    }

    /// Plans an account event a session caused.
    fn plan_account(
        &mut self,
        derived: &IncomingEvent,
        link: bool,
    ) -> Result<Option<PlannedAccount>, EngineError> {
        let stream = derived.session.clone();
        Ok(match self.plan_event(derived)? {
            Planned::Stored { op, .. } if link => Some(PlannedAccount::Linked { op, stream }),
            Planned::Stored { op, .. } => Some(PlannedAccount::Withdrawn { op, stream }),
            Planned::Refused(error) if link => Some(PlannedAccount::NotLinked(format!(
                "the account stream `{stream}` refused the link: {error}"
            ))),
            Planned::Refused(_) | Planned::Duplicate { .. } | Planned::DuplicateOfOp { .. } => None,
        })
    }

    /// Folds `stream`, whose snapshot `old` was folded with other rules, again with this
    /// build's, and makes its linked account follow the difference.
    pub(super) fn plan_refold(
        &mut self,
        stream: &SessionId,
        old: &Snapshot,
    ) -> Result<Vec<PlannedAccount>, EngineError> {
        if let Some(working) = self.sessions.get_mut(stream) {
            // Loaded already (an account a session of this batch links): folded with this
            // build's rules, its snapshot only needs writing.
            working.dirty = true;
            return Ok(Vec::new());
        }
        // The snapshot is of other rules, so the state is folded from the log.
        let Some(state) = load_state(self.shared.store.as_ref(), stream)? else {
            return Ok(Vec::new());
        };
        let before = decode_state_any_rules(&old.state).map(|folded| SessionState {
            provider: old.provider,
            folded,
        });

        let link_before = before.as_ref().map_or(Link::None, Link::of);
        let link_after = Link::of(&state);
        let provider = state.provider;
        // Its snapshot, of this version, guards the decision on a shared store.
        let start = state.folded.version();
        self.sessions.insert(
            stream.clone(),
            Working {
                state,
                dirty: true,
                fresh: start == Version::EMPTY,
                start,
                stored: None,
                appended: Vec::new(),
                // The pass cleared the indexes before folding again (`refold_stale`).
                before: Projection::default(),
            },
        );
        let mut cause = b"rules".to_vec();
        cause.extend_from_slice(&RULES_VERSION.to_be_bytes());
        let now = self.now;
        self.follow(stream, provider, &cause, now, link_before, link_after)
    }

    /// Adds a snapshot of every session this group changed; returns the commit.
    pub(super) fn finish(&mut self) -> Commit {
        for (session, working) in &self.sessions {
            if working.dirty {
                let after = index::project(&working.state);
                index::diff(
                    session,
                    &working.before,
                    &after,
                    &mut self.commit,
                    &mut self.funnel,
                );
                let state = encode_snapshot_state(&working.state.folded);
                self.commit.snapshots.push((
                    session.clone(),
                    Snapshot {
                        provider: working.state.provider,
                        version: working.state.folded.version(),
                        compacted: working.state.folded.compacted(),
                        state,
                    },
                ));
            }
        }
        self.funnel.flush(&mut self.commit);
        std::mem::take(&mut self.commit)
    }
}

/// An account's stream id, or why the account cannot have one (a user and institution id
/// too long together for a stream id).
fn account_stream(key: &AccountKey) -> Result<SessionId, String> {
    key.stream_id().map_err(|error| {
        format!(
            "the account of user `{}` at `{}` has no valid stream id: {error}",
            key.external_user_id, key.institution_id
        )
    })
}

/// What an account event a session's fold change derives is made of: the session, its
/// provider, the arrival (or rules) that changed the fold, and when.
struct Derived<'a> {
    session: &'a SessionId,
    provider: Provider,
    arrival: &'a [u8],
    received_at: DateTime<Utc>,
}

impl Derived<'_> {
    /// The account event `kind` (`linked`, `link_withdrawn`) for the account's `stream`, its
    /// dedupe key derived from the kind, the session and the arrival, so that a group decided
    /// again writes it once.
    fn event(
        &self,
        stream: SessionId,
        key: &AccountKey,
        event: AccountEvent,
        kind: &'static str,
    ) -> IncomingEvent {
        IncomingEvent {
            session: stream,
            provider: self.provider,
            body: EventBody::Account {
                account: key.clone(),
                event,
            },
            raw_name: Some(format!(
                "{} by session {}",
                kind.replace('_', " "),
                self.session
            )),
            raw: None,
            event_id: None,
            dedupe_key: Some(DedupeKey::derive(&[
                kind.as_bytes(),
                self.session.as_str().as_bytes(),
                self.arrival,
            ])),
            received_at: Some(self.received_at),
        }
    }
}
