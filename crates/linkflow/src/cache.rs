//! The bounded in-memory cache of session states.

use std::collections::HashMap;

use linkflow_core::{Provider, SessionId};

use crate::folded::Folded;

/// What the engine knows about one stream: its folded state, its provider, and how many of
/// its events are parked (so that retries cost nothing for the streams that have none).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SessionState {
    pub provider: Provider,
    pub folded: Folded,
    pub parked: u32,
}

/// A two-generation cache: lookups promote from `old` to `young`; when `young` is full it
/// becomes `old` and the previous `old` is dropped. Recently used states survive at least one
/// generation, memory stays within `capacity` entries, and every operation is O(1) without
/// the bookkeeping of an exact LRU.
pub(crate) struct SessionCache {
    young: HashMap<SessionId, SessionState>,
    old: HashMap<SessionId, SessionState>,
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

    pub fn get(&mut self, id: &SessionId) -> Option<SessionState> {
        if let Some(state) = self.young.get(id) {
            return Some(state.clone());
        }
        let state = self.old.remove(id)?;
        self.insert(id.clone(), state.clone());
        Some(state)
    }

    pub fn insert(&mut self, id: SessionId, state: SessionState) {
        if self.young.len() >= self.generation_size && !self.young.contains_key(&id) {
            self.old = std::mem::take(&mut self.young);
        }
        self.old.remove(&id);
        self.young.insert(id, state);
    }

    pub fn remove(&mut self, id: &SessionId) {
        self.young.remove(id);
        self.old.remove(id);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.young.len() + self.old.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SessionState {
        SessionState {
            provider: Provider::Moneykit,
            folded: Folded::Session(Box::default()),
            parked: 0,
        }
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
}
