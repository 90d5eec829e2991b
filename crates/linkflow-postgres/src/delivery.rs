//! Outbound delivery's state in the database (`docs/notifications.md`), shared by every node:
//! endpoints as JSON documents, each endpoint's cursor and lease, attempts, redeliveries. The
//! engine's `PgDeliveryState` gives them their types; this is the storage.
//!
//! **Leases**: one node delivers to an endpoint at a time. A node takes an endpoint's lease
//! when no one holds it or the holder's has run out, renews it while it delivers, and writes
//! the cursor only while it holds it; a node that died stops renewing, and another takes over
//! once the lease runs out, from the cursor the dead one last wrote.

use std::sync::Arc;

use linkflow_store::StoreError;

use crate::error::backend;
use crate::store::PgStore;

/// Attempts kept per endpoint (older ones are deleted as new ones are written).
pub const KEPT_ATTEMPTS: i64 = 10_000;

/// Outbound delivery's tables of one database.
#[derive(Clone)]
pub struct PgDelivery {
    store: Arc<PgStore>,
}

impl std::fmt::Debug for PgDelivery {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PgDelivery")
    }
}

impl PgDelivery {
    /// The delivery tables of `store`'s database.
    pub fn new(store: Arc<PgStore>) -> PgDelivery {
        PgDelivery { store }
    }

    /// Every endpoint's id and document, in the order they were added.
    pub fn endpoints(&self) -> Result<Vec<(String, String)>, StoreError> {
        self.store.run(Box::new(|client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT id, endpoint FROM linkflow_endpoints ORDER BY added",
                        &[],
                    )
                    .await
                    .map_err(backend)?;
                rows.iter()
                    .map(|row| Ok((crate::error::col(row, 0)?, crate::error::col(row, 1)?)))
                    .collect()
            })
        }))
    }

    /// Adds an endpoint unless `max` are there already (`false`).
    pub fn insert_endpoint(
        &self,
        id: String,
        document: String,
        max: i64,
    ) -> Result<bool, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let transaction = client.transaction().await.map_err(backend)?;
                transaction
                    .execute("LOCK TABLE linkflow_endpoints IN EXCLUSIVE MODE", &[])
                    .await
                    .map_err(backend)?;
                let count: i64 = crate::error::col(
                    &transaction
                        .query_one("SELECT count(*) FROM linkflow_endpoints", &[])
                        .await
                        .map_err(backend)?,
                    0,
                )?;
                if count >= max {
                    return Ok(false);
                }
                transaction
                    .execute(
                        "INSERT INTO linkflow_endpoints (id, endpoint) VALUES ($1, $2)",
                        &[&id, &document],
                    )
                    .await
                    .map_err(backend)?;
                transaction.commit().await.map_err(backend)?;
                Ok(true)
            })
        }))
    }

    /// Replaces an endpoint's document; `false` if there is none.
    pub fn update_endpoint(&self, id: String, document: String) -> Result<bool, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let updated = client
                    .execute(
                        "UPDATE linkflow_endpoints SET endpoint = $2 WHERE id = $1",
                        &[&id, &document],
                    )
                    .await
                    .map_err(backend)?;
                Ok(updated == 1)
            })
        }))
    }

    /// Removes an endpoint, its cursor and its redeliveries; `false` if there was none.
    pub fn delete_endpoint(&self, id: String) -> Result<bool, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let transaction = client.transaction().await.map_err(backend)?;
                let deleted = transaction
                    .execute("DELETE FROM linkflow_endpoints WHERE id = $1", &[&id])
                    .await
                    .map_err(backend)?;
                for table in ["linkflow_delivery_cursors", "linkflow_redeliveries"] {
                    transaction
                        .execute(&format!("DELETE FROM {table} WHERE endpoint = $1"), &[&id])
                        .await
                        .map_err(backend)?;
                }
                transaction.commit().await.map_err(backend)?;
                Ok(deleted == 1)
            })
        }))
    }

    /// The endpoint's cursor, if one was written.
    pub fn cursor(&self, endpoint: String) -> Result<Option<String>, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let row = client
                    .query_opt(
                        "SELECT through FROM linkflow_delivery_cursors WHERE endpoint = $1",
                        &[&endpoint],
                    )
                    .await
                    .map_err(backend)?;
                match row {
                    Some(row) => crate::error::col(&row, 0),
                    None => Ok(None),
                }
            })
        }))
    }

    /// Writes the endpoint's cursor if `holder` holds its lease, or no one does (`false`:
    /// another node does).
    pub fn set_cursor(
        &self,
        endpoint: String,
        through: String,
        holder: String,
    ) -> Result<bool, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let written = client
                    .execute(
                        "INSERT INTO linkflow_delivery_cursors (endpoint, through) VALUES ($1, $2)
                         ON CONFLICT (endpoint) DO UPDATE SET through = excluded.through
                          WHERE linkflow_delivery_cursors.holder IS NULL
                             OR linkflow_delivery_cursors.holder = $3
                             OR linkflow_delivery_cursors.lease_until < now()",
                        &[&endpoint, &through, &holder],
                    )
                    .await
                    .map_err(backend)?;
                Ok(written == 1)
            })
        }))
    }

    /// Takes or renews the endpoint's lease for `holder`, for `millis` from now; `false` while
    /// another node's has not run out.
    pub fn lease(&self, endpoint: String, holder: String, millis: i64) -> Result<bool, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let taken = client
                    .execute(
                        "INSERT INTO linkflow_delivery_cursors (endpoint, holder, lease_until)
                         VALUES ($1, $2, now() + $3 * interval '1 millisecond')
                         ON CONFLICT (endpoint) DO UPDATE
                            SET holder = excluded.holder, lease_until = excluded.lease_until
                          WHERE linkflow_delivery_cursors.holder IS NULL
                             OR linkflow_delivery_cursors.holder = $2
                             OR linkflow_delivery_cursors.lease_until < now()",
                        &[&endpoint, &holder, &(millis as f64)],
                    )
                    .await
                    .map_err(backend)?;
                Ok(taken == 1)
            })
        }))
    }

    /// Gives the endpoint's lease up, if `holder` holds it (another node may take it at once).
    pub fn release(&self, endpoint: String, holder: String) -> Result<(), StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                client
                    .execute(
                        "UPDATE linkflow_delivery_cursors SET holder = NULL, lease_until = now()
                          WHERE endpoint = $1 AND holder = $2",
                        &[&endpoint, &holder],
                    )
                    .await
                    .map_err(backend)?;
                Ok(())
            })
        }))
    }

    /// Appends attempts of one endpoint (documents), then deletes all but its newest
    /// [`KEPT_ATTEMPTS`].
    pub fn record(&self, endpoint: String, attempts: Vec<String>) -> Result<(), StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let transaction = client.transaction().await.map_err(backend)?;
                transaction
                    .execute(
                        "INSERT INTO linkflow_delivery_attempts (endpoint, attempt)
                         SELECT $1, unnest($2::text[])",
                        &[&endpoint, &attempts],
                    )
                    .await
                    .map_err(backend)?;
                transaction
                    .execute(
                        "DELETE FROM linkflow_delivery_attempts
                          WHERE endpoint = $1 AND id <= (
                              SELECT id FROM linkflow_delivery_attempts WHERE endpoint = $1
                               ORDER BY id DESC OFFSET $2 LIMIT 1)",
                        &[&endpoint, &KEPT_ATTEMPTS],
                    )
                    .await
                    .map_err(backend)?;
                transaction.commit().await.map_err(backend)
            })
        }))
    }

    /// The newest `limit` attempts (of one endpoint, or every one), oldest first.
    pub fn attempts(
        &self,
        endpoint: Option<String>,
        limit: i64,
    ) -> Result<Vec<String>, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "SELECT attempt FROM (
                             SELECT id, attempt FROM linkflow_delivery_attempts
                              WHERE $1::text IS NULL OR endpoint = $1
                              ORDER BY id DESC LIMIT $2) newest
                          ORDER BY id",
                        &[&endpoint, &limit],
                    )
                    .await
                    .map_err(backend)?;
                rows.iter().map(|row| crate::error::col(row, 0)).collect()
            })
        }))
    }

    /// Asks for a redelivery unless `max` wait already (`false`).
    pub fn request_redelivery(
        &self,
        endpoint: String,
        notification: String,
        max: i64,
    ) -> Result<bool, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let waiting: i64 = crate::error::col(
                    &client
                        .query_one(
                            "SELECT count(*) FROM linkflow_redeliveries WHERE endpoint = $1",
                            &[&endpoint],
                        )
                        .await
                        .map_err(backend)?,
                    0,
                )?;
                if waiting >= max {
                    return Ok(false);
                }
                client
                    .execute(
                        "INSERT INTO linkflow_redeliveries (endpoint, notification) VALUES ($1, $2)
                         ON CONFLICT DO NOTHING",
                        &[&endpoint, &notification],
                    )
                    .await
                    .map_err(backend)?;
                Ok(true)
            })
        }))
    }

    /// The redeliveries asked for an endpoint, removed.
    pub fn take_redeliveries(&self, endpoint: String) -> Result<Vec<String>, StoreError> {
        self.store.run(Box::new(move |client| {
            Box::pin(async move {
                let rows = client
                    .query(
                        "DELETE FROM linkflow_redeliveries WHERE endpoint = $1 RETURNING notification",
                        &[&endpoint],
                    )
                    .await
                    .map_err(backend)?;
                rows.iter().map(|row| crate::error::col(row, 0)).collect()
            })
        }))
    }
}
