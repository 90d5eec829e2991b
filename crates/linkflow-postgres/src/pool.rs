//! Connections, and the bridge from the store's blocking API to the async driver.
//!
//! The store owns a small tokio runtime. A blocking call hands its work to that runtime and
//! waits on a plain channel, so it may be made from any thread, including one that is itself
//! driving async tasks (the engine's readers run on `spawn_blocking` threads, its writer on a
//! thread of its own). Each call takes a connection from a pool of at most
//! [`crate::PgOptions::pool_size`] (deadpool-postgres: a call waits for a free connection when
//! every one is busy, a broken connection is dropped and replaced, and each connection caches
//! the statements it prepared, so a hot statement is parsed once per connection).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use linkflow_store::StoreError;
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::{backend, unreachable};

/// A pooled connection: a [`tokio_postgres::Client`] (through `Deref`) with a statement cache.
pub(crate) type Conn = deadpool_postgres::Object;

pub(crate) type Work<T> =
    Box<dyn for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, Result<T, StoreError>> + Send>;
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) struct Pool {
    config: Config,
    pool: deadpool_postgres::Pool,
    /// How long a call waits for a free connection before failing.
    wait: Duration,
}

impl Pool {
    /// A pool of at most `size` connections to `config`; a call waits up to `wait` for one.
    pub(crate) fn new(
        mut config: Config,
        size: usize,
        wait: Duration,
    ) -> Result<Arc<Pool>, StoreError> {
        // Every connection's commits are durable when they return, whatever the server's
        // default: set at connection start-up, no statement needed.
        // Plans made for each call's parameters (a generic plan made while a table was small
        // keeps scanning it once it is not), and no JIT: a statement over 1,000 sessions is
        // estimated costly enough to compile, which took 20-80 ms per call for a 5 ms lookup
        // (measured in figure 7's batch ingest).
        let options = format!(
            "{} -c synchronous_commit=on -c plan_cache_mode=force_custom_plan -c jit=off",
            config.get_options().unwrap_or_default()
        );
        config.options(&options);
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = deadpool_postgres::Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(wait))
            .create_timeout(config.get_connect_timeout().copied())
            .build()
            .map_err(|error| StoreError::InvalidConfig(format!("connection pool: {error}")))?;
        Ok(Arc::new(Pool { config, pool, wait }))
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a connection of its own, outside the pool (a `LISTEN`er, the sequencer's lease).
    pub(crate) async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(backend)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "PostgreSQL connection ended");
            }
        });
        Ok(client)
    }

    /// Runs `work` on a pooled connection.
    pub(crate) async fn with<T>(&self, work: Work<T>) -> Result<T, StoreError> {
        let mut conn = self.pool.get().await.map_err(|error| match error {
            deadpool_postgres::PoolError::Backend(error) => backend(error),
            deadpool_postgres::PoolError::Timeout(_) => unreachable(&format!(
                "no PostgreSQL connection of the pool came free within {:?} (pool size {})",
                self.wait,
                self.pool.status().max_size
            )),
            other => unreachable(&other.to_string()),
        })?;
        // A transaction that failed midway was rolled back when it was dropped; a connection
        // whose query failed at the protocol level is closed, and the pool replaces it.
        work(&mut conn).await
    }
}

/// The runtime the driver runs on, owned by the store.
pub(crate) struct Bridge {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl Bridge {
    pub(crate) fn new() -> Result<Bridge, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("linkflow-pg")
            .enable_all()
            .build()
            .map_err(|error| {
                StoreError::Internal(format!("cannot start the PostgreSQL runtime: {error}"))
            })?;
        let handle = runtime.handle().clone();
        Ok(Bridge {
            runtime: Some(runtime),
            handle,
        })
    }

    pub(crate) fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `future` on the store's runtime and waits for it from this (any) thread.
    pub(crate) fn block_on<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = done.send(future.await);
        });
        answer.recv().map_err(|_| {
            StoreError::Internal("the PostgreSQL runtime stopped before answering".into())
        })?
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime waits for its tasks, which is not allowed from async code (where
        // an engine is often dropped): let them end in the background.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
