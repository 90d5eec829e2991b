//! Where the keys that verify Plaid's webhooks come from ([`PlaidKeys`]): a JWK set file (tests,
//! air-gapped deployments), or Plaid's `/webhook_verification_key/get` with the client id and
//! secret, each key cached for [`KEY_TTL`] (then fetched again, so that a key Plaid expired
//! since is refused), an unknown key id remembered for [`UNKNOWN_KEY_TTL`] (so that forged ids
//! cannot make linkflow call Plaid for every request), at most [`MAX_CACHED_KEYS`] ids, and at
//! most [`MAX_FETCHES_PER_MINUTE`] calls to Plaid (past it, a webhook whose key is not cached is
//! answered 503, which Plaid retries, rather than letting forged key ids turn linkflow into a
//! load on Plaid's API under its credentials).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use linkflow_providers::plaid_jwt::{Jwk, JwkSet, Unverified, VerifyError};
use serde::Deserialize;

/// How long a key fetched from Plaid is trusted before it is fetched again.
pub const KEY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a key id Plaid does not know is remembered as unknown.
pub const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(60);

/// The most key ids cached (known or unknown); past it the oldest entry goes.
pub const MAX_CACHED_KEYS: usize = 64;

/// The most calls to Plaid's key endpoint per minute.
pub const MAX_FETCHES_PER_MINUTE: u32 = 30;

/// How long a request to Plaid's key endpoint may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest key response read from Plaid.
const MAX_KEY_RESPONSE_BYTES: usize = 16 * 1024;

/// Plaid's production API.
pub const PLAID_PRODUCTION: &str = "https://production.plaid.com";

/// Plaid's sandbox API.
pub const PLAID_SANDBOX: &str = "https://sandbox.plaid.com";

/// Why a webhook could not be checked or was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The webhook's verification failed: answer 401.
    #[error(transparent)]
    Refused(#[from] VerifyError),
    /// Plaid's key endpoint could not be asked: answer 503, Plaid retries the webhook.
    #[error("Plaid's webhook verification key endpoint failed: {0}")]
    Unavailable(String),
}

/// The keys that verify Plaid's webhooks.
#[derive(Debug)]
pub enum PlaidKeys {
    /// A fixed set (a JWK set file).
    Fixed(JwkSet),
    /// Plaid's endpoint, cached.
    Endpoint(KeyEndpoint),
}

impl PlaidKeys {
    /// Checks a `Plaid-Verification` header against `body` at `now`.
    pub async fn verify(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<(), KeyError> {
        let unverified = Unverified::parse(header)?;
        let key = match self {
            PlaidKeys::Fixed(set) => set.get(&unverified.kid).cloned(),
            PlaidKeys::Endpoint(endpoint) => endpoint.key(&unverified.kid).await?,
        };
        let key = key.ok_or_else(|| VerifyError::UnknownKey(unverified.kid.clone()))?;
        Ok(unverified.verify(&key, body, now)?)
    }
}

/// A cached answer of Plaid's endpoint for one key id.
#[derive(Debug, Clone)]
struct Cached {
    key: Option<Jwk>,
    fetched: Instant,
}

impl Cached {
    fn fresh(&self) -> bool {
        let ttl = if self.key.is_some() {
            KEY_TTL
        } else {
            UNKNOWN_KEY_TTL
        };
        self.fetched.elapsed() < ttl
    }
}

/// Plaid's `/webhook_verification_key/get`, with a cache.
#[derive(Debug)]
pub struct KeyEndpoint {
    base_url: String,
    client_id: String,
    secret: String,
    client: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
    /// The current minute's start and the calls to Plaid in it.
    fetches: Mutex<(Instant, u32)>,
}

#[derive(Deserialize)]
struct KeyResponse {
    key: Jwk,
}

#[derive(Deserialize)]
struct ErrorResponse {
    #[serde(default)]
    error_code: String,
    #[serde(default)]
    error_message: String,
}

impl KeyEndpoint {
    /// Plaid's API at `base_url` ([`PLAID_PRODUCTION`], [`PLAID_SANDBOX`], or a stand-in).
    pub fn new(base_url: &str, client_id: &str, secret: &str) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .map_err(|error| format!("cannot build an HTTP client: {error}"))?;
        Ok(KeyEndpoint {
            base_url: base_url.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            secret: secret.to_owned(),
            client,
            cache: Mutex::new(HashMap::new()),
            fetches: Mutex::new((Instant::now(), 0)),
        })
    }

    fn cached(&self, kid: &str) -> Option<Cached> {
        let cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(kid).filter(|cached| cached.fresh()).cloned()
    }

    fn remember(&self, kid: &str, key: Option<Jwk>) {
        let mut cache = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !cache.contains_key(kid) && cache.len() >= MAX_CACHED_KEYS {
            let oldest = cache
                .iter()
                .min_by_key(|(_, cached)| cached.fetched)
                .map(|(kid, _)| kid.clone());
            if let Some(oldest) = oldest {
                cache.remove(&oldest);
            }
        }
        cache.insert(
            kid.to_owned(),
            Cached {
                key,
                fetched: Instant::now(),
            },
        );
    }

    /// The key `kid`: cached, or asked of Plaid. `None`: Plaid does not know it.
    pub async fn key(&self, kid: &str) -> Result<Option<Jwk>, KeyError> {
        if let Some(cached) = self.cached(kid) {
            return Ok(cached.key);
        }
        self.count_fetch()?;
        let key = self.fetch(kid).await?;
        self.remember(kid, key.clone());
        Ok(key)
    }

    /// Counts a call to Plaid, refusing it past [`MAX_FETCHES_PER_MINUTE`].
    fn count_fetch(&self) -> Result<(), KeyError> {
        let mut fetches = self
            .fetches
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if fetches.0.elapsed() >= Duration::from_secs(60) {
            *fetches = (Instant::now(), 0);
        }
        if fetches.1 >= MAX_FETCHES_PER_MINUTE {
            return Err(KeyError::Unavailable(format!(
                "more than {MAX_FETCHES_PER_MINUTE} key lookups this minute (key ids Plaid may never have issued)"
            )));
        }
        fetches.1 += 1;
        Ok(())
    }

    async fn fetch(&self, kid: &str) -> Result<Option<Jwk>, KeyError> {
        let unavailable = |error: String| KeyError::Unavailable(error);
        let response = self
            .client
            .post(format!("{}/webhook_verification_key/get", self.base_url))
            .json(&serde_json::json!({
                "client_id": self.client_id,
                "secret": self.secret,
                "key_id": kid,
            }))
            .send()
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|error| unavailable(error.to_string()))?;
        if body.len() > MAX_KEY_RESPONSE_BYTES {
            return Err(unavailable(format!(
                "a response of {} bytes, more than {MAX_KEY_RESPONSE_BYTES}",
                body.len()
            )));
        }
        if status.is_success() {
            let response: KeyResponse = serde_json::from_slice(&body)
                .map_err(|error| unavailable(format!("the key response: {error}")))?;
            if response.key.kid != kid {
                return Err(unavailable(format!(
                    "asked for key `{kid}`, Plaid answered key `{}`",
                    response.key.kid
                )));
            }
            return Ok(Some(response.key));
        }
        let error: Option<ErrorResponse> = serde_json::from_slice(&body).ok();
        match error {
            // Plaid's answer for a key id it never issued: the webhook is forged. Any other
            // error (bad credentials, rate limits, an outage) says nothing about the webhook.
            Some(error)
                if status.as_u16() == 400
                    && error.error_code == "INVALID_WEBHOOK_VERIFICATION_KEY_ID" =>
            {
                tracing::warn!(kid, code = %error.error_code, "Plaid does not know this webhook key id");
                Ok(None)
            }
            Some(error) => Err(unavailable(format!(
                "HTTP {status}: {} {}",
                error.error_code, error.error_message
            ))),
            None => Err(unavailable(format!("HTTP {status}"))),
        }
    }
}
