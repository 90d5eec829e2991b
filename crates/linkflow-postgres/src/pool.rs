//! Connections, and the bridge from the store's blocking API to the async driver.
//!
//! The store owns a small tokio runtime. A blocking call hands its work to that runtime and
//! waits on a plain channel, so it may be made from any thread, including one that is itself
//! driving async tasks (the engine's readers run on `spawn_blocking` threads, its writer on a
//! thread of its own). Each call takes an idle connection or opens one, and gives it back
//! unless it broke.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use linkflow_store::StoreError;
use tokio::runtime::{Handle, Runtime};
use tokio_postgres::{Client, Config, NoTls};

use crate::error::backend;

/// Idle connections kept for reuse; more are opened when more calls run at once.
const MAX_IDLE: usize = 16;

pub(crate) type Work<T> =
    Box<dyn for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, StoreError>> + Send>;
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) struct Pool {
    config: Config,
    idle: Mutex<Vec<Client>>,
}

impl Pool {
    pub(crate) fn new(config: Config) -> Arc<Pool> {
        Arc::new(Pool {
            config,
            idle: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn config(&self) -> &Config {
        &self.config
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Client>> {
        self.idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Opens a connection whose commits are durable when they return.
    pub(crate) async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(backend)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "PostgreSQL connection ended");
            }
        });
        client
            .batch_execute("SET synchronous_commit = on")
            .await
            .map_err(backend)?;
        Ok(client)
    }

    async fn take(&self) -> Result<Client, StoreError> {
        loop {
            let candidate = self.idle().pop();
            match candidate {
                Some(client) if client.is_closed() => continue,
                Some(client) => return Ok(client),
                None => return self.connect().await,
            }
        }
    }

    fn give_back(&self, client: Client) {
        if client.is_closed() {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < MAX_IDLE {
            idle.push(client);
        }
    }

    /// Runs `work` on a pooled connection.
    pub(crate) async fn with<T>(&self, work: Work<T>) -> Result<T, StoreError> {
        let mut client = self.take().await?;
        let result = work(&mut client).await;
        // A transaction that failed midway was rolled back when it was dropped; a connection
        // whose query failed at the protocol level is closed and not reused.
        self.give_back(client);
        result
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
