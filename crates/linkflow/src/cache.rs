//! The bounded in-memory cache of session states.

use std::collections::HashMap;

use linkflow_core::compact::{from_compact, to_compact};
use linkflow_core::{Provider, SessionId, Version};

use crate::folded::Folded;

/// What the engine knows about one stream: its folded state and its provider.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionState {
    pub provider: Provider,
    pub folded: Folded,
}

/// The session cache's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Cached stream states (sessions, accounts, merchant statuses).
    pub states: usize,
    /// The bytes they take as the cache accounts them: each state's compact form and stream
    /// id, plus the hash tables' slots (one per bucket, used or not). The allocator's own
    /// overhead (rounding each of the two allocations per state up, typically 8-24 bytes)
    /// comes on top.
    pub bytes: usize,
}

/// A state as the cache holds it: the folded state in its compact form (a few times smaller
/// than the value: see `linkflow_core::compact`), decoded on each lookup.
pub(crate) struct PackedState {
    provider: Provider,
    /// The stream's version the state folds.
    version: Version,
    folded: Box<[u8]>,
}

impl PackedState {
    /// Packs `state`; done before taking the cache's lock.
    pub fn pack(state: &SessionState) -> Self {
        PackedState {
            provider: state.provider,
            version: state.folded.version(),
            folded: to_compact(&state.folded).into_boxed_slice(),
        }
    }

    fn unpack(&self) -> Option<SessionState> {
        let folded = from_compact::<Folded>(&self.folded);
        debug_assert!(folded.is_ok(), "a packed state decodes: {folded:?}");
        Some(SessionState {
            provider: self.provider,
            folded: folded.ok()?,
        })
    }
}

/// A two-generation cache: lookups promote from `old` to `young`; when `young` is full it
/// becomes `old` and the previous `old` is dropped. Recently used states survive at least one
/// generation, memory stays within `capacity` entries, and every operation is O(1) without
/// the bookkeeping of an exact LRU. States are held packed: a cached session costs its
/// compact form (~100-200 bytes) plus its id and the map's slot, not the ~1 KB of the value
/// with its strings.
pub(crate) struct SessionCache {
    young: HashMap<SessionId, PackedState>,
    old: HashMap<SessionId, PackedState>,
    generation_size: usize,
}

impl SessionCache {
    pub fn new(capacity: usize) -> Self {
        SessionCache {
            young: HashMap::new(),
            old: HashMap::new(),
            generation_size: (capacity / 2).max(1),
        }
    }

    /// The cached state of `id`. A packed state that does not decode (a bug, asserted in debug
    /// builds) is dropped and reported as a miss, so the caller reloads it from the store.
    pub fn get(&mut self, id: &SessionId) -> Option<SessionState> {
        if let Some(packed) = self.young.get(id) {
            let state = packed.unpack();
            if state.is_none() {
                self.young.remove(id);
            }
            return state;
        }
        let packed = self.old.remove(id)?;
        let state = packed.unpack()?;
        self.insert(id.clone(), packed);
        Some(state)
    }

    pub fn insert(&mut self, id: SessionId, state: PackedState) {
        if self.young.len() >= self.generation_size && !self.young.contains_key(&id) {
            // The old generation's table is cleared and reused as the young one: no table is
            // allocated or regrown once both have reached the generation size.
            std::mem::swap(&mut self.young, &mut self.old);
            self.young.clear();
        }
        self.old.remove(&id);
        self.young.insert(id, state);
    }

    /// [`SessionCache::insert`], unless the cache holds a later version of the stream (several
    /// writers: one that committed later may have cached its state first).
    pub fn insert_unless_newer(&mut self, id: SessionId, state: PackedState) {
        let cached = self.young.get(&id).or_else(|| self.old.get(&id));
        if cached.is_some_and(|cached| cached.version > state.version) {
            return;
        }
        self.insert(id, state);
    }

    pub fn remove(&mut self, id: &SessionId) {
        self.young.remove(id);
        self.old.remove(id);
    }

    /// What the cache holds now, and the bytes it accounts for.
    pub fn stats(&self) -> CacheStats {
        let slot = std::mem::size_of::<(SessionId, PackedState)>() + 1;
        // A session id's text sits behind its two reference counts (it is an `Arc<str>`).
        let id_header = 2 * std::mem::size_of::<usize>();
        let payload: usize = self
            .young
            .iter()
            .chain(self.old.iter())
            .map(|(id, packed)| id_header + id.as_str().len() + packed.folded.len())
            .sum();
        CacheStats {
            states: self.young.len() + self.old.len(),
            bytes: payload + (self.young.capacity() + self.old.capacity()) * slot,
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> PackedState {
        PackedState::pack(&SessionState {
            provider: Provider::Moneykit,
            folded: Folded::Session(Box::default()),
        })
    }

    #[test]
    fn the_cache_never_holds_more_than_its_capacity_and_keeps_recent_entries() {
        let mut cache = SessionCache::new(10);
        for n in 0..100 {
            cache.insert(SessionId::new(format!("s{n}")).unwrap(), state());
            assert!(cache.len() <= 10);
        }
        assert!(cache.get(&SessionId::new("s99").unwrap()).is_some());
        assert!(cache.get(&SessionId::new("s0").unwrap()).is_none());
    }

    #[test]
    fn a_state_comes_back_from_the_cache_as_it_went_in() {
        let mut cache = SessionCache::new(10);
        let state = SessionState {
            provider: Provider::Knot,
            folded: Folded::Merchant {
                status: None,
                version: linkflow_core::Version(4),
            },
        };
        let id = SessionId::new("merchant:10:card_switcher:ios:-").unwrap();
        cache.insert(id.clone(), PackedState::pack(&state));
        assert_eq!(cache.get(&id), Some(state));
    }

    #[test]
    fn the_cache_accounts_for_its_states_and_tables() {
        let mut cache = SessionCache::new(100);
        assert_eq!(cache.stats().states, 0);
        for n in 0..60 {
            cache.insert(SessionId::new(format!("s{n}")).unwrap(), state());
        }
        let stats = cache.stats();
        assert_eq!(stats.states, 60);
        let payload = 60 * (to_compact(&Folded::Session(Box::default())).len() + 2);
        assert!(stats.bytes > payload, "{stats:?}");
        cache.remove(&SessionId::new("s1").unwrap());
        assert_eq!(cache.stats().states, 59);
    }
}
