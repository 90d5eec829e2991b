//! Erasure keys in the database (`docs/privacy.md`): what the engine's keyring keeps in a key
//! file on sled, shared here by every node. Rows hold only wrapped keys and keyed hashes; a
//! destroyed key's row is deleted, the table vacuumed so the dead row goes too, and every node
//! told (`NOTIFY linkflow_keys`) to forget what it had unwrapped.

use std::sync::Arc;
use std::time::Duration;

use linkflow_store::StoreError;

use crate::error::backend;
use crate::store::PgStore;

/// A key's slot and its wrapped bytes.
pub type WrappedKey = (Vec<u8>, Vec<u8>);

/// The channel key destructions are announced on.
pub const KEYS_CHANNEL: &str = "linkflow_keys";

/// How long the key watcher waits before it reconnects, and how often it tells its node to
/// forget unwrapped keys when it cannot listen (a destruction it may have missed).
const WATCH_RETRY: Duration = Duration::from_secs(1);

/// The erasure keys of a PostgreSQL store.
#[derive(Clone)]
pub struct PgKeys {
    store: Arc<PgStore>,
}

impl std::fmt::Debug for PgKeys {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PgKeys")
    }
}

impl PgKeys {
    /// The keys of `store`'s database.
    pub fn new(store: Arc<PgStore>) -> PgKeys {
        PgKeys { store }
    }

    /// The wrapped index secret: the one stored, or `wrapped` stored now if there is none (the
    /// first node to store one wins; every node gets the same).
    pub fn index_secret(&self, wrapped: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "INSERT INTO linkflow_key_secret (wrapped) VALUES ($1) ON CONFLICT DO NOTHING",
                        &[&wrapped],
                    )
                    .await
                    .map_err(backend)?;
                let row = client
                    .query_one("SELECT wrapped FROM linkflow_key_secret", &[])
                    .await
                    .map_err(backend)?;
                row.try_get::<_, Vec<u8>>(0).map_err(backend)
            })
        }))
    }

    /// Whether the database holds erasure keys (an index secret): its personal fields are
    /// sealed, and it must not be opened without its master key.
    pub fn sealed(&self) -> Result<bool, StoreError> {
        self.store.run(Box::new(|client| {
            Box::pin(async move {
                let row = client
                    .query_one("SELECT count(*) FROM linkflow_key_secret", &[])
                    .await
                    .map_err(backend)?;
                let count: i64 = row.try_get(0).map_err(backend)?;
                Ok(count > 0)
            })
        }))
    }

    /// The wrapped key named `slot`, if there is one.
    pub fn get(&self, slot: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let slot = slot.to_vec();
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt(
                        "SELECT wrapped FROM linkflow_keys WHERE slot = $1",
                        &[&slot],
                    )
                    .await
                    .map_err(backend)?;
                row.map(|row| row.try_get::<_, Vec<u8>>(0).map_err(backend))
                    .transpose()
            })
        }))
    }

    /// Stores `wrapped` under `slot` unless a key is there, and returns the key that is (two
    /// nodes making the same key at once agree on the first one stored). Durable when it
    /// returns.
    pub fn insert(&self, slot: &[u8], wrapped: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        let slot = slot.to_vec();
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "INSERT INTO linkflow_keys (slot, wrapped) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&slot, &wrapped],
                    )
                    .await
                    .map_err(backend)?;
                let row = client
                    .query_one("SELECT wrapped FROM linkflow_keys WHERE slot = $1", &[&slot])
                    .await
                    .map_err(backend)?;
                row.try_get::<_, Vec<u8>>(0).map_err(backend)
            })
        }))
    }

    /// [`PgKeys::insert`] of many keys in one statement: each stored unless a key is under its
    /// slot; returns the keys that are, for the slots this statement inserted or found
    /// committed when it started (a slot another node is inserting at that moment may be
    /// missing: ask for it with [`PgKeys::insert`]). Durable when it returns.
    pub fn insert_many(&self, keys: Vec<WrappedKey>) -> Result<Vec<WrappedKey>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let (slots, wrapped): (Vec<Vec<u8>>, Vec<Vec<u8>>) = keys.into_iter().unzip();
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "WITH inserted AS (
                             INSERT INTO linkflow_keys (slot, wrapped)
                             SELECT * FROM unnest($1::bytea[], $2::bytea[])
                             ON CONFLICT DO NOTHING
                             RETURNING slot, wrapped)
                         SELECT slot, wrapped FROM inserted
                         UNION ALL
                         SELECT slot, wrapped FROM linkflow_keys
                         WHERE slot = ANY($1) AND slot NOT IN (SELECT slot FROM inserted)",
                        &[&slots, &wrapped],
                    )
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<_, Vec<u8>>(0).map_err(backend)?,
                            row.try_get::<_, Vec<u8>>(1).map_err(backend)?,
                        ))
                    })
                    .collect()
            })
        }))
    }

    /// Deletes the keys named `slots`, tells every node, and vacuums the table so that no dead
    /// row keeps them; returns how many there were.
    pub fn delete(&self, slots: Vec<Vec<u8>>) -> Result<usize, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let transaction = client.transaction().await.map_err(backend)?;
                let deleted = transaction
                    .execute("DELETE FROM linkflow_keys WHERE slot = ANY($1)", &[&slots])
                    .await
                    .map_err(backend)?;
                if deleted > 0 {
                    transaction
                        .execute(&format!("NOTIFY {KEYS_CHANNEL}"), &[])
                        .await
                        .map_err(backend)?;
                }
                transaction.commit().await.map_err(backend)?;
                if deleted > 0 {
                    client
                        .batch_execute("VACUUM linkflow_keys")
                        .await
                        .map_err(backend)?;
                }
                Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
            })
        }))
    }

    /// How many keys there are.
    pub fn count(&self) -> Result<usize, StoreError> {
        self.store.run(Box::new(|client| {
            Box::pin(async move {
                let row = client
                    .query_one("SELECT count(*) FROM linkflow_keys", &[])
                    .await
                    .map_err(backend)?;
                let count: i64 = row.try_get(0).map_err(backend)?;
                Ok(usize::try_from(count).unwrap_or(0))
            })
        }))
    }

    /// Replaces the index secret and every key in one transaction (a master key rotation).
    pub fn replace_all(&self, secret: Vec<u8>, keys: Vec<WrappedKey>) -> Result<(), StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let transaction = client.transaction().await.map_err(backend)?;
                transaction
                    .execute("UPDATE linkflow_key_secret SET wrapped = $1", &[&secret])
                    .await
                    .map_err(backend)?;
                for (slot, wrapped) in &keys {
                    transaction
                        .execute(
                            "UPDATE linkflow_keys SET wrapped = $2 WHERE slot = $1",
                            &[slot, wrapped],
                        )
                        .await
                        .map_err(backend)?;
                }
                transaction.commit().await.map_err(backend)
            })
        }))
    }

    /// Every key's slot and wrapped bytes (for a rotation).
    pub fn all(&self) -> Result<Vec<WrappedKey>, StoreError> {
        self.store.run(Box::new(|client| {
            Box::pin(async move {
                let rows = client
                    .query("SELECT slot, wrapped FROM linkflow_keys ORDER BY slot", &[])
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get(0).map_err(backend)?,
                            row.try_get(1).map_err(backend)?,
                        ))
                    })
                    .collect()
            })
        }))
    }

    /// Calls `forget` whenever any node destroys keys, and when the watch had to reconnect
    /// (it may have missed one), until the store's runtime stops.
    pub fn watch_destroyed(&self, forget: Box<dyn Fn() + Send + Sync>) {
        let pool = Arc::clone(&self.store.pool);
        // `forget` takes the engine's locks, which a destroy on this node holds while it waits
        // for this runtime to run its DELETE: it runs on a blocking thread, never on the
        // runtime's workers.
        let forget: Arc<dyn Fn() + Send + Sync> = Arc::from(forget);
        let call = move || {
            let forget = Arc::clone(&forget);
            drop(tokio::task::spawn_blocking(move || forget()));
        };
        self.store.bridge.handle().spawn(async move {
            loop {
                if let Err(error) = watch_once(&pool, &call).await {
                    tracing::warn!(%error, "PostgreSQL key watcher failed; reconnecting");
                }
                call();
                tokio::time::sleep(WATCH_RETRY).await;
            }
        });
    }
}

async fn watch_once(
    pool: &crate::pool::Pool,
    forget: &(dyn Fn() + Send + Sync),
) -> Result<(), StoreError> {
    let (_client, mut notifications) = crate::store::listen(pool, KEYS_CHANNEL).await?;
    // Listening now: whatever was destroyed before is forgotten too.
    forget();
    while notifications.recv().await.is_some() {
        forget();
    }
    Err(crate::error::unreachable("the LISTEN connection closed"))
}
