//! Erasure keys on PostgreSQL: the engine's [`KeyTable`] over `linkflow_keys`, shared by every
//! node, and the watch that makes every node forget unwrapped keys when any node destroys some.

use std::sync::Arc;

use linkflow_postgres::PgKeys;

use crate::error::EngineError;
use crate::privacy::{KeyError, KeyTable, MasterKey, Privacy, SlotId};

fn table(error: linkflow_store::StoreError) -> KeyError {
    KeyError::Table(error.to_string())
}

impl KeyTable for PgKeys {
    fn index_secret(&self, wrapped: Vec<u8>) -> Result<Vec<u8>, KeyError> {
        PgKeys::index_secret(self, wrapped).map_err(table)
    }

    fn get(&self, slot: &SlotId) -> Result<Option<Vec<u8>>, KeyError> {
        PgKeys::get(self, slot).map_err(table)
    }

    fn insert(&self, slot: &SlotId, wrapped: Vec<u8>) -> Result<Vec<u8>, KeyError> {
        PgKeys::insert(self, slot, wrapped).map_err(table)
    }

    fn insert_many(
        &self,
        keys: Vec<(SlotId, Vec<u8>)>,
    ) -> Result<Vec<(SlotId, Vec<u8>)>, KeyError> {
        PgKeys::insert_many(
            self,
            keys.into_iter()
                .map(|(slot, wrapped)| (slot.to_vec(), wrapped))
                .collect(),
        )
        .map_err(table)
        .and_then(named)
    }

    fn delete(&self, slots: &[SlotId]) -> Result<usize, KeyError> {
        PgKeys::delete(self, slots.iter().map(|slot| slot.to_vec()).collect()).map_err(table)
    }

    fn count(&self) -> Result<usize, KeyError> {
        PgKeys::count(self).map_err(table)
    }

    fn all(&self) -> Result<Vec<(SlotId, Vec<u8>)>, KeyError> {
        PgKeys::all(self).map_err(table).and_then(named)
    }

    fn replace_all(&self, secret: Vec<u8>, keys: Vec<(SlotId, Vec<u8>)>) -> Result<(), KeyError> {
        PgKeys::replace_all(
            self,
            secret,
            keys.into_iter()
                .map(|(slot, wrapped)| (slot.to_vec(), wrapped))
                .collect(),
        )
        .map_err(table)
    }
}

/// Sealing over `keys` under `master`, forgetting unwrapped keys whenever any node destroys
/// some.
pub(crate) fn open(keys: PgKeys, master: &MasterKey) -> Result<Arc<Privacy>, EngineError> {
    let privacy = Arc::new(
        Privacy::open_table(Box::new(keys.clone()), master)
            .map_err(|error| EngineError::Keys(error.to_string()))?,
    );
    let watched = Arc::downgrade(&privacy);
    keys.watch_destroyed(Box::new(move || {
        if let Some(privacy) = watched.upgrade() {
            privacy.forget();
        }
    }));
    Ok(privacy)
}

/// Rows of the key table as the keyring names keys: a slot that is not 16 bytes is an error.
fn named(rows: Vec<(Vec<u8>, Vec<u8>)>) -> Result<Vec<(SlotId, Vec<u8>)>, KeyError> {
    rows.into_iter()
        .map(|(slot, wrapped)| {
            let slot: SlotId = slot
                .try_into()
                .map_err(|_| KeyError::Table("a key's slot is not 16 bytes".into()))?;
            Ok((slot, wrapped))
        })
        .collect()
}
