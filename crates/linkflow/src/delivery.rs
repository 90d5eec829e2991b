//! What outbound delivery keeps (`docs/notifications.md`, "Delivery"): the endpoints the
//! operator configured, each endpoint's cursor over the notifications, the attempts made, and
//! the redeliveries asked for. The sender itself (HTTP, signing, retries) is in
//! `linkflow-http`; this is its durable state.
//!
//! [`FileDeliveryState`] keeps it in files under the data directory's `delivery/` folder, so
//! that the CLI can add or remove an endpoint while `linkflow serve` holds the store (sled
//! allows one process): `endpoints.json` and each cursor are replaced whole (written to a
//! temporary file, synced, renamed, the folder synced), under an advisory lock on
//! `delivery/lock` for every change; attempts are appended to one log per endpoint, rotated
//! at [`ATTEMPT_LOG_BYTES`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use fs2::FileExt;
use linkflow_core::Position;
use serde::{Deserialize, Serialize};

use crate::notify::{NotificationId, NotificationKind};

/// Endpoints one store delivers to.
pub const MAX_ENDPOINTS: usize = 64;

/// Longest endpoint URL, in bytes.
pub const MAX_URL_BYTES: usize = 2_048;

/// An attempt log is rotated (the older half kept as `.1`) past this size.
pub const ATTEMPT_LOG_BYTES: u64 = 4 << 20;

/// Most attempts one read of the log returns.
pub const MAX_ATTEMPTS_SHOWN: usize = 1_000;

/// Most redeliveries waiting per endpoint.
pub const MAX_REDELIVERIES: usize = 256;

/// A secret's decoded length, in bytes (Standard Webhooks: 24 to 64).
pub const SECRET_BYTES: std::ops::RangeInclusive<usize> = 24..=64;

/// Why delivery state could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryStateError {
    /// An endpoint's settings are not acceptable.
    #[error("invalid endpoint: {0}")]
    Invalid(String),
    /// No endpoint has this id.
    #[error("no endpoint {0}")]
    UnknownEndpoint(String),
    /// Another node holds the endpoint's lease: this one must stop delivering to it.
    #[error("another node delivers to {0} now (its lease was taken over)")]
    LeaseLost(String),
    /// [`MAX_ENDPOINTS`] are configured.
    #[error("{MAX_ENDPOINTS} endpoints are configured already")]
    TooMany,
    /// A file of the state is damaged.
    #[error("delivery state file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The file system failed.
    #[error("delivery state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> DeliveryStateError + '_ {
    move |source| DeliveryStateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// An endpoint's being switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disabled {
    /// When.
    pub at: DateTime<Utc>,
    /// Why (a 410 from the endpoint, or the operator).
    pub reason: String,
}

/// Where notifications go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Its id (`ep_` and 16 hex digits).
    pub id: String,
    /// The URL notifications are POSTed to.
    pub url: String,
    /// Its signing secret (`whsec_` and base64).
    pub secret: String,
    /// The kinds it wants; `None`: every kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub types: Option<Vec<NotificationKind>>,
    /// When it was added.
    pub created_at: DateTime<Utc>,
    /// Set while it is switched off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<Disabled>,
}

impl Endpoint {
    /// Whether it wants notifications of `kind`.
    pub fn wants(&self, kind: NotificationKind) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(&kind))
    }

    /// The endpoint as shown to an operator: its secret withheld.
    pub fn redacted(&self) -> Endpoint {
        Endpoint {
            secret: "[withheld]".into(),
            ..self.clone()
        }
    }
}

impl Endpoint {
    /// A new endpoint with a fresh id, its settings checked (the secret made when `None`).
    pub fn new(
        url: &str,
        secret: Option<String>,
        types: Option<Vec<NotificationKind>>,
        now: DateTime<Utc>,
    ) -> Result<Endpoint, DeliveryStateError> {
        check_url(url)?;
        let secret = secret.unwrap_or_else(new_secret);
        secret_key(&secret)?;
        if types.as_ref().is_some_and(Vec::is_empty) {
            return Err(DeliveryStateError::Invalid("an empty list of types".into()));
        }
        let mut id = [0u8; 8];
        getrandom::fill(&mut id).expect("the operating system's random source works");
        Ok(Endpoint {
            id: format!("ep_{:016x}", u64::from_be_bytes(id)),
            url: url.to_owned(),
            secret,
            types,
            created_at: now,
            disabled: None,
        })
    }

    /// Its types as a comma-separated list, `all` without a filter.
    pub fn types_text(&self) -> String {
        self.types.as_ref().map_or("all".to_owned(), |types| {
            types
                .iter()
                .map(|kind| kind.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
    }
}

/// A new random secret: `whsec_` and the base64 of 32 random bytes.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    )
}

/// The secret's key bytes, if it is `whsec_` (optional) and the base64 of 24 to 64 bytes.
pub fn secret_key(secret: &str) -> Result<Vec<u8>, DeliveryStateError> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|error| {
            DeliveryStateError::Invalid(format!("the secret is not base64: {error}"))
        })?;
    if !SECRET_BYTES.contains(&key.len()) {
        return Err(DeliveryStateError::Invalid(format!(
            "the secret holds {} bytes, expected {} to {}",
            key.len(),
            SECRET_BYTES.start(),
            SECRET_BYTES.end()
        )));
    }
    Ok(key)
}

/// Checks an endpoint URL's form: `http://` or `https://`, no whitespace or control
/// characters, at most [`MAX_URL_BYTES`]. (The sender parses it fully.)
pub fn check_url(url: &str) -> Result<(), DeliveryStateError> {
    if url.len() > MAX_URL_BYTES {
        return Err(DeliveryStateError::Invalid(format!(
            "the URL is {} bytes, at most {MAX_URL_BYTES}",
            url.len()
        )));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| DeliveryStateError::Invalid(format!("`{url}` is not an http(s) URL")))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(DeliveryStateError::Invalid(format!(
            "`{url}` names no host"
        )));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DeliveryStateError::Invalid(format!(
            "`{}` holds whitespace or a control character",
            url.escape_debug()
        )));
    }
    Ok(())
}

/// How one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum AttemptOutcome {
    /// A 2xx answer: delivered.
    Delivered,
    /// Failed; tried again at `next_at`.
    Retrying {
        /// When it is tried again.
        next_at: DateTime<Utc>,
    },
    /// Failed, and the retry schedule is spent: only a manual redelivery sends it again.
    GaveUp,
    /// The endpoint answered 410 Gone: it is disabled; nothing more goes to it until it is
    /// enabled again (this notification first).
    EndpointDisabled,
}

/// One attempt to deliver one notification to one endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// The endpoint.
    pub endpoint: String,
    /// The notification's id (its `webhook-id`).
    pub notification: String,
    /// Its kind.
    #[serde(rename = "type")]
    pub kind: NotificationKind,
    /// The stream it is about.
    pub stream: String,
    /// The attempt's number for this notification (1 is the first).
    pub attempt: u32,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// The HTTP status, if an answer came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// What went wrong, if it failed without an answer or with a non-2xx one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A redelivery the operator asked for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redelivery: bool,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: AttemptOutcome,
}

/// The durable state of outbound delivery. Every method is blocking (files, or a database).
pub trait DeliveryState: Send + Sync {
    /// Every endpoint, in the order they were added.
    fn endpoints(&self) -> Result<Vec<Endpoint>, DeliveryStateError>;
    /// Adds an endpoint (its settings checked); the secret is made when `None`.
    fn add_endpoint(
        &self,
        url: &str,
        secret: Option<String>,
        types: Option<Vec<NotificationKind>>,
        now: DateTime<Utc>,
    ) -> Result<Endpoint, DeliveryStateError>;
    /// Removes an endpoint, its cursor and waiting redeliveries (its attempt log stays until
    /// it rotates away). `false` if there was none.
    fn remove_endpoint(&self, id: &str) -> Result<bool, DeliveryStateError>;
    /// Switches an endpoint off (`Some`) or on again (`None`).
    fn set_disabled(&self, id: &str, disabled: Option<Disabled>) -> Result<(), DeliveryStateError>;
    /// The last notification the endpoint is done with, and every one before it (`None`
    /// before its first delivery starts).
    fn cursor(&self, endpoint: &str) -> Result<Option<NotificationId>, DeliveryStateError>;
    /// Moves the endpoint's cursor, durably.
    fn set_cursor(&self, endpoint: &str, through: NotificationId)
        -> Result<(), DeliveryStateError>;
    /// Records an attempt.
    fn record(&self, attempt: &Attempt) -> Result<(), DeliveryStateError>;
    /// Records attempts (one call for many where the state can).
    fn record_many(&self, attempts: &[Attempt]) -> Result<(), DeliveryStateError> {
        attempts.iter().try_for_each(|attempt| self.record(attempt))
    }
    /// The latest attempts (of one endpoint, or every one), newest last, at most `limit`
    /// (capped at [`MAX_ATTEMPTS_SHOWN`]).
    fn attempts(
        &self,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Attempt>, DeliveryStateError>;
    /// Asks for a notification to be sent to an endpoint again.
    fn request_redelivery(
        &self,
        endpoint: &str,
        notification: NotificationId,
    ) -> Result<(), DeliveryStateError>;
    /// The redeliveries asked for an endpoint, removed from the queue.
    fn take_redeliveries(&self, endpoint: &str) -> Result<Vec<NotificationId>, DeliveryStateError>;
    /// Takes or renews this process's lease of an endpoint for `ttl` (`false`: another
    /// process holds it; a sender delivers only while it holds it). A state only one process
    /// uses (the data directory's files: sled allows one) always grants it.
    fn lease(
        &self,
        _endpoint: &str,
        _ttl: std::time::Duration,
    ) -> Result<bool, DeliveryStateError> {
        Ok(true)
    }
    /// Gives this process's lease of an endpoint up (another may take it at once).
    fn release(&self, _endpoint: &str) -> Result<(), DeliveryStateError> {
        Ok(())
    }
}

/// [`DeliveryState`] in files under a folder (the data directory's `delivery/`).
pub struct FileDeliveryState {
    dir: PathBuf,
    /// Open attempt logs by endpoint, appended to by the one sender.
    logs: Mutex<Vec<(String, File, u64)>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct EndpointsFile {
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CursorFile {
    through: String,
    updated_at: DateTime<Utc>,
}

impl FileDeliveryState {
    /// The state under `dir` (created if missing).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, DeliveryStateError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        Ok(FileDeliveryState {
            dir,
            logs: Mutex::new(Vec::new()),
        })
    }

    /// The state of the store at `data_dir` (its `delivery/` folder).
    pub fn for_data_dir(data_dir: &Path) -> Result<Self, DeliveryStateError> {
        Self::open(data_dir.join("delivery"))
    }

    fn locked<T>(
        &self,
        change: impl FnOnce() -> Result<T, DeliveryStateError>,
    ) -> Result<T, DeliveryStateError> {
        let path = self.dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_error(&path))?;
        lock.lock_exclusive().map_err(io_error(&path))?;
        let result = change();
        let _ = FileExt::unlock(&lock);
        result
    }

    fn read_endpoints(&self) -> Result<EndpointsFile, DeliveryStateError> {
        let path = self.dir.join("endpoints.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|error| DeliveryStateError::Damaged {
                    path,
                    reason: error.to_string(),
                })
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(EndpointsFile::default()),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    fn write_endpoints(&self, file: &EndpointsFile) -> Result<(), DeliveryStateError> {
        let bytes = serde_json::to_vec_pretty(file).expect("endpoints serialize");
        self.replace("endpoints.json", &bytes)
    }

    /// Replaces a file whole: a temporary file written and synced, renamed over it, the
    /// folder synced.
    fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), DeliveryStateError> {
        let path = self.dir.join(name);
        let temporary = self.dir.join(format!("{name}.tmp"));
        let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
        file.write_all(bytes).map_err(io_error(&temporary))?;
        file.sync_all().map_err(io_error(&temporary))?;
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        File::open(&self.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(io_error(&self.dir))
    }

    fn endpoint_file(&self, kind: &str, endpoint: &str) -> Result<String, DeliveryStateError> {
        if !is_endpoint_id(endpoint) {
            return Err(DeliveryStateError::UnknownEndpoint(
                endpoint.escape_debug().to_string(),
            ));
        }
        Ok(format!("{kind}-{endpoint}"))
    }

    fn read_log(
        path: &Path,
        endpoint: Option<&str>,
        into: &mut Vec<Attempt>,
    ) -> Result<(), DeliveryStateError> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(path)(error)),
        };
        // A torn last line (a crash mid-append) is skipped; the log is diagnostics.
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io_error(path))?;
            if let Ok(attempt) = serde_json::from_str::<Attempt>(&line) {
                if endpoint.is_none_or(|id| attempt.endpoint == id) {
                    into.push(attempt);
                }
            }
        }
        Ok(())
    }
}

fn is_endpoint_id(id: &str) -> bool {
    id.len() == 19 && id.starts_with("ep_") && id[3..].bytes().all(|b| b.is_ascii_hexdigit())
}

impl DeliveryState for FileDeliveryState {
    fn endpoints(&self) -> Result<Vec<Endpoint>, DeliveryStateError> {
        Ok(self.read_endpoints()?.endpoints)
    }

    fn add_endpoint(
        &self,
        url: &str,
        secret: Option<String>,
        types: Option<Vec<NotificationKind>>,
        now: DateTime<Utc>,
    ) -> Result<Endpoint, DeliveryStateError> {
        let endpoint = Endpoint::new(url, secret, types, now)?;
        self.locked(|| {
            let mut file = self.read_endpoints()?;
            if file.endpoints.len() >= MAX_ENDPOINTS {
                return Err(DeliveryStateError::TooMany);
            }
            file.endpoints.push(endpoint.clone());
            self.write_endpoints(&file)?;
            Ok(endpoint)
        })
    }

    fn remove_endpoint(&self, id: &str) -> Result<bool, DeliveryStateError> {
        self.locked(|| {
            let mut file = self.read_endpoints()?;
            let before = file.endpoints.len();
            file.endpoints.retain(|endpoint| endpoint.id != id);
            if file.endpoints.len() == before {
                return Ok(false);
            }
            self.write_endpoints(&file)?;
            for kind in ["cursor", "redeliver"] {
                let path = self.dir.join(self.endpoint_file(kind, id)?);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(&path)(error)),
                }
            }
            Ok(true)
        })
    }

    fn set_disabled(&self, id: &str, disabled: Option<Disabled>) -> Result<(), DeliveryStateError> {
        self.locked(|| {
            let mut file = self.read_endpoints()?;
            let endpoint = file
                .endpoints
                .iter_mut()
                .find(|endpoint| endpoint.id == id)
                .ok_or_else(|| DeliveryStateError::UnknownEndpoint(id.to_owned()))?;
            endpoint.disabled = disabled;
            self.write_endpoints(&file)
        })
    }

    fn cursor(&self, endpoint: &str) -> Result<Option<NotificationId>, DeliveryStateError> {
        let path = self.dir.join(self.endpoint_file("cursor", endpoint)?);
        match fs::read(&path) {
            Ok(bytes) => {
                let damaged = |reason: String| DeliveryStateError::Damaged {
                    path: path.clone(),
                    reason,
                };
                let file: CursorFile =
                    serde_json::from_slice(&bytes).map_err(|error| damaged(error.to_string()))?;
                NotificationId::parse(&file.through)
                    .map(Some)
                    .ok_or_else(|| damaged(format!("`{}` is not a notification id", file.through)))
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(io_error(&path)(error)),
        }
    }

    fn set_cursor(
        &self,
        endpoint: &str,
        through: NotificationId,
    ) -> Result<(), DeliveryStateError> {
        let name = self.endpoint_file("cursor", endpoint)?;
        let file = CursorFile {
            through: through.to_string(),
            updated_at: Utc::now(),
        };
        self.replace(
            &name,
            &serde_json::to_vec(&file).expect("a cursor serializes"),
        )
    }

    fn record(&self, attempt: &Attempt) -> Result<(), DeliveryStateError> {
        let name = self.endpoint_file("attempts", &attempt.endpoint)?;
        let path = self.dir.join(&name);
        let mut line = serde_json::to_vec(attempt).expect("an attempt serializes");
        line.push(b'\n');
        let mut logs = self
            .logs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let index = match logs.iter().position(|(id, _, _)| *id == attempt.endpoint) {
            Some(index) => index,
            None => {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(io_error(&path))?;
                let size = file.metadata().map_err(io_error(&path))?.len();
                logs.push((attempt.endpoint.clone(), file, size));
                logs.len() - 1
            }
        };
        let (_, file, size) = &mut logs[index];
        if *size + line.len() as u64 > ATTEMPT_LOG_BYTES {
            let older = self.dir.join(format!("{name}.1"));
            fs::rename(&path, &older).map_err(io_error(&older))?;
            *file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_error(&path))?;
            *size = 0;
        }
        file.write_all(&line).map_err(io_error(&path))?;
        *size += line.len() as u64;
        Ok(())
    }

    fn attempts(
        &self,
        endpoint: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Attempt>, DeliveryStateError> {
        let limit = limit.clamp(1, MAX_ATTEMPTS_SHOWN);
        let ids: Vec<String> = match endpoint {
            Some(id) => vec![id.to_owned()],
            None => self.endpoints()?.into_iter().map(|e| e.id).collect(),
        };
        let mut attempts = Vec::new();
        for id in ids {
            let name = self.endpoint_file("attempts", &id)?;
            let mut own = Vec::new();
            Self::read_log(&self.dir.join(format!("{name}.1")), Some(&id), &mut own)?;
            Self::read_log(&self.dir.join(&name), Some(&id), &mut own)?;
            let skip = own.len().saturating_sub(limit);
            attempts.extend(own.into_iter().skip(skip));
        }
        attempts.sort_by_key(|attempt| attempt.at);
        let skip = attempts.len().saturating_sub(limit);
        Ok(attempts.into_iter().skip(skip).collect())
    }

    fn request_redelivery(
        &self,
        endpoint: &str,
        notification: NotificationId,
    ) -> Result<(), DeliveryStateError> {
        let name = self.endpoint_file("redeliver", endpoint)?;
        self.locked(|| {
            if !self
                .read_endpoints()?
                .endpoints
                .iter()
                .any(|e| e.id == endpoint)
            {
                return Err(DeliveryStateError::UnknownEndpoint(endpoint.to_owned()));
            }
            let mut waiting = self.read_redeliveries(&name)?;
            if waiting.len() >= MAX_REDELIVERIES {
                return Err(DeliveryStateError::Invalid(format!(
                    "{MAX_REDELIVERIES} redeliveries wait for {endpoint} already"
                )));
            }
            if !waiting.contains(&notification) {
                waiting.push(notification);
            }
            self.write_redeliveries(&name, &waiting)
        })
    }

    fn take_redeliveries(&self, endpoint: &str) -> Result<Vec<NotificationId>, DeliveryStateError> {
        let name = self.endpoint_file("redeliver", endpoint)?;
        if !self.dir.join(&name).exists() {
            return Ok(Vec::new());
        }
        self.locked(|| {
            let waiting = self.read_redeliveries(&name)?;
            let path = self.dir.join(&name);
            fs::remove_file(&path).map_err(io_error(&path))?;
            Ok(waiting)
        })
    }
}

impl FileDeliveryState {
    fn read_redeliveries(&self, name: &str) -> Result<Vec<NotificationId>, DeliveryStateError> {
        let path = self.dir.join(name);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(error) => return Err(io_error(&path)(error)),
        };
        text.lines()
            .filter(|line| !line.is_empty())
            .map(|line| {
                NotificationId::parse(line).ok_or_else(|| DeliveryStateError::Damaged {
                    path: path.clone(),
                    reason: format!("`{line}` is not a notification id"),
                })
            })
            .collect()
    }

    fn write_redeliveries(
        &self,
        name: &str,
        ids: &[NotificationId],
    ) -> Result<(), DeliveryStateError> {
        let text: String = ids.iter().map(|id| format!("{id}\n")).collect();
        self.replace(name, text.as_bytes())
    }
}

/// The notification id just before `id`: the cursor that says every notification before
/// `id` is done.
pub fn before(id: NotificationId) -> NotificationId {
    match id.index {
        0 => NotificationId {
            position: Position(id.position.0.saturating_sub(1)),
            index: u8::MAX,
        },
        index => NotificationId {
            position: id.position,
            index: index - 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(position: u64, index: u8) -> NotificationId {
        NotificationId {
            position: Position(position),
            index,
        }
    }

    #[test]
    fn endpoints_cursors_attempts_and_redeliveries_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileDeliveryState::open(dir.path()).unwrap();
        let now = Utc::now();
        let endpoint = state
            .add_endpoint(
                "http://127.0.0.1:9/hook",
                None,
                Some(vec![NotificationKind::SessionExited]),
                now,
            )
            .unwrap();
        assert!(endpoint.secret.starts_with("whsec_"));
        assert!(secret_key(&endpoint.secret).is_ok());
        assert!(endpoint.wants(NotificationKind::SessionExited));
        assert!(!endpoint.wants(NotificationKind::SessionSucceeded));
        state.set_cursor(&endpoint.id, id(12, 255)).unwrap();
        state
            .record(&Attempt {
                endpoint: endpoint.id.clone(),
                notification: id(3, 0).to_string(),
                kind: NotificationKind::SessionExited,
                stream: "s1".into(),
                attempt: 1,
                at: now,
                status: Some(500),
                error: None,
                redelivery: false,
                outcome: AttemptOutcome::GaveUp,
            })
            .unwrap();
        state.request_redelivery(&endpoint.id, id(3, 0)).unwrap();
        drop(state);
        let state = FileDeliveryState::open(dir.path()).unwrap();
        assert_eq!(state.endpoints().unwrap(), std::slice::from_ref(&endpoint));
        assert_eq!(state.cursor(&endpoint.id).unwrap(), Some(id(12, 255)));
        let attempts = state.attempts(None, 10).unwrap();
        assert_eq!(attempts.len(), 1);
        assert_eq!(attempts[0].outcome, AttemptOutcome::GaveUp);
        assert_eq!(state.take_redeliveries(&endpoint.id).unwrap(), [id(3, 0)]);
        assert!(state.take_redeliveries(&endpoint.id).unwrap().is_empty());
        assert!(state.remove_endpoint(&endpoint.id).unwrap());
        assert!(!state.remove_endpoint(&endpoint.id).unwrap());
        assert_eq!(state.cursor(&endpoint.id).unwrap(), None);
    }

    #[test]
    fn bad_settings_are_refused_naming_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileDeliveryState::open(dir.path()).unwrap();
        let now = Utc::now();
        for (url, secret, wanted) in [
            ("ftp://host/x", None, "not an http(s) URL"),
            ("http:///x", None, "names no host"),
            ("http://host/a b", None, "whitespace"),
            ("http://host/x", Some("whsec_!!"), "not base64"),
            ("http://host/x", Some("whsec_c2hvcnQ="), "expected 24 to 64"),
        ] {
            let error = state
                .add_endpoint(url, secret.map(str::to_owned), None, now)
                .unwrap_err()
                .to_string();
            assert!(error.contains(wanted), "{url}: {error}");
        }
        let error = state
            .add_endpoint("http://host/x", None, Some(Vec::new()), now)
            .unwrap_err();
        assert!(error.to_string().contains("empty list"), "{error}");
        assert!(matches!(
            state.cursor("../../etc/passwd"),
            Err(DeliveryStateError::UnknownEndpoint(_))
        ));
        assert!(state.endpoints().unwrap().is_empty());
    }

    #[test]
    fn the_cursor_before_an_id_steps_back_across_positions() {
        assert_eq!(before(id(7, 2)), id(7, 1));
        assert_eq!(before(id(7, 0)), id(6, 255));
    }

    #[test]
    fn an_attempt_log_rotates_and_reads_stay_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let state = FileDeliveryState::open(dir.path()).unwrap();
        let endpoint = state
            .add_endpoint("http://127.0.0.1:9/hook", None, None, Utc::now())
            .unwrap();
        let attempt = |n: u32| Attempt {
            endpoint: endpoint.id.clone(),
            notification: id(u64::from(n), 0).to_string(),
            kind: NotificationKind::SessionSucceeded,
            stream: "x".repeat(2_000),
            attempt: 1,
            at: Utc::now(),
            status: Some(200),
            error: None,
            redelivery: false,
            outcome: AttemptOutcome::Delivered,
        };
        let per_log = ATTEMPT_LOG_BYTES / 2_200;
        for n in 0..(2 * per_log as u32 + 10) {
            state.record(&attempt(n)).unwrap();
        }
        let files = fs::read_dir(dir.path()).unwrap().count();
        assert!(files <= 5, "{files} files");
        let shown = state.attempts(Some(&endpoint.id), usize::MAX).unwrap();
        assert_eq!(shown.len(), MAX_ATTEMPTS_SHOWN);
        assert_eq!(
            shown.last().unwrap().notification,
            id(u64::from(2 * per_log as u32 + 9), 0).to_string()
        );
    }
}
