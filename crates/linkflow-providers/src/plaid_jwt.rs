//! Plaid's webhook verification: the `Plaid-Verification` header is a JWS (compact form) that
//! Plaid signs with ES256, its header naming the key (`kid`), its claims holding `iat` (when it
//! was signed) and `request_body_sha256` (the hex SHA-256 of the raw body). Checked as Plaid
//! specifies (its docs, "Webhook verification"): the algorithm must be ES256 (anything else,
//! `none` and HS256 included, is refused before any key is looked up); the key is the P-256
//! JWK Plaid's `/webhook_verification_key/get` returns for the `kid`, refused once it has an
//! `expired_at`; the signature must verify; `iat` must be at most [`MAX_AGE`] old; and the
//! body's SHA-256 must equal the claim, compared in constant time. Unlike Knot's scheme this
//! covers the body.
//!
//! Two steps, so that the key can be fetched between them (over the network, asynchronously,
//! by the caller): [`Unverified::parse`] reads the header and refuses a wrong algorithm, then
//! [`Unverified::verify`] checks the rest with the key. [`JwkSet`] holds keys from a JWK set
//! file (tests, air-gapped deployments) or from Plaid's endpoint.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chrono::{DateTime, Duration, Utc};
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::EncodedPoint;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The oldest `iat` accepted: Plaid's limit.
pub const MAX_AGE: Duration = Duration::minutes(5);

/// The longest `Plaid-Verification` header read: a real one is well under 1 KiB.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;

/// The most keys a [`JwkSet`] holds.
pub const MAX_KEYS: usize = 256;

/// Why a Plaid webhook was refused. Nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// No `Plaid-Verification` header.
    #[error("the Plaid-Verification header is missing")]
    Missing,
    /// The header is not a JWS of three Base64url parts with JSON header and claims.
    #[error("the Plaid-Verification header is malformed: {0}")]
    Malformed(String),
    /// The JWS is not signed with ES256.
    #[error("the Plaid-Verification JWT is signed with `{0}`; only ES256 is accepted")]
    Algorithm(String),
    /// No key with the JWT's `kid`.
    #[error("no Plaid verification key `{0}`")]
    UnknownKey(String),
    /// The key has expired (`expired_at` is set).
    #[error("the Plaid verification key `{0}` has expired")]
    ExpiredKey(String),
    /// The key is not a P-256 public key.
    #[error("the Plaid verification key `{kid}` is not a P-256 key: {reason}")]
    BadKey {
        /// The key.
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The signature does not verify with the key.
    #[error("the Plaid-Verification signature does not verify")]
    BadSignature,
    /// `iat` is too old (or too far in the future).
    #[error(
        "the Plaid-Verification JWT was issued at {issued_at}, more than 5 minutes from {now}"
    )]
    Stale {
        /// The `iat` claim.
        issued_at: DateTime<Utc>,
        /// The time of the check.
        now: DateTime<Utc>,
    },
    /// The body is not the one that was signed.
    #[error("the body's SHA-256 is not the request_body_sha256 the JWT signs")]
    BodyMismatch,
}

/// A P-256 public key as a JWK (what Plaid's `/webhook_verification_key/get` returns under
/// `key`, and what a JWK set file lists under `keys`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// The key id the JWT names.
    pub kid: String,
    /// `EC`.
    #[serde(default)]
    pub kty: String,
    /// `P-256`.
    #[serde(default)]
    pub crv: String,
    /// `ES256`, when given.
    #[serde(default)]
    pub alg: Option<String>,
    /// The point's x coordinate, Base64url.
    pub x: String,
    /// The point's y coordinate, Base64url.
    pub y: String,
    /// When Plaid created the key (epoch seconds), when given.
    #[serde(default)]
    pub created_at: Option<i64>,
    /// When Plaid expired the key (epoch seconds); a key with one is refused.
    #[serde(default)]
    pub expired_at: Option<i64>,
}

impl Jwk {
    fn verifying_key(&self) -> Result<VerifyingKey, VerifyError> {
        let bad = |reason: String| VerifyError::BadKey {
            kid: self.kid.clone(),
            reason,
        };
        if self.kty != "EC" || self.crv != "P-256" {
            return Err(bad(format!("kty `{}`, crv `{}`", self.kty, self.crv)));
        }
        if self.alg.as_deref().is_some_and(|alg| alg != "ES256") {
            return Err(bad(format!("alg `{}`", self.alg.as_deref().unwrap_or(""))));
        }
        let coordinate = |text: &str| -> Result<[u8; 32], VerifyError> {
            let bytes = URL_SAFE_NO_PAD
                .decode(text)
                .map_err(|error| bad(format!("a coordinate is not Base64url: {error}")))?;
            bytes.try_into().map_err(|bytes: Vec<u8>| {
                bad(format!("a coordinate of {} bytes, not 32", bytes.len()))
            })
        };
        let (x, y) = (coordinate(&self.x)?, coordinate(&self.y)?);
        let point = EncodedPoint::from_affine_coordinates(&x.into(), &y.into(), false);
        VerifyingKey::from_encoded_point(&point).map_err(|_| bad("not a point of the curve".into()))
    }
}

/// Keys by id, at most [`MAX_KEYS`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JwkSet {
    keys: Vec<Jwk>,
}

/// What a JWK set file holds: `{"keys": [...]}` (a JWK set), or Plaid's
/// `/webhook_verification_key/get` response, `{"key": {...}}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum JwkFile {
    Set { keys: Vec<Jwk> },
    One { key: Jwk },
}

impl JwkSet {
    /// Reads a JWK set (`{"keys": [...]}`) or one Plaid key response (`{"key": {...}}`).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let file: JwkFile = serde_json::from_str(text)
            .map_err(|error| format!("not a JWK set ({{\"keys\": [...]}}) nor a Plaid key response ({{\"key\": {{...}}}}): {error}"))?;
        let keys = match file {
            JwkFile::Set { keys } => keys,
            JwkFile::One { key } => vec![key],
        };
        if keys.len() > MAX_KEYS {
            return Err(format!("{} keys; at most {MAX_KEYS} are read", keys.len()));
        }
        Ok(JwkSet { keys })
    }

    /// The key `kid`, if the set holds it.
    pub fn get(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|key| key.kid == kid)
    }

    /// Adds or replaces a key; past [`MAX_KEYS`] the oldest added is dropped.
    pub fn insert(&mut self, key: Jwk) {
        self.keys.retain(|known| known.kid != key.kid);
        if self.keys.len() == MAX_KEYS {
            self.keys.remove(0);
        }
        self.keys.push(key);
    }

    /// How many keys it holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when it holds none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Claims {
    iat: i64,
    request_body_sha256: String,
}

/// A `Plaid-Verification` header whose algorithm is ES256, not yet verified.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// The key id it names.
    pub kid: String,
    signed: String,
    signature: Vec<u8>,
    claims: Vec<u8>,
}

fn part(text: &str, what: &str) -> Result<Vec<u8>, VerifyError> {
    URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|error| VerifyError::Malformed(format!("the {what} is not Base64url: {error}")))
}

impl Unverified {
    /// Reads the header (`None`: it is missing), refusing any algorithm but ES256.
    pub fn parse(header: Option<&str>) -> Result<Self, VerifyError> {
        let header = header.ok_or(VerifyError::Missing)?.trim();
        if header.len() > MAX_HEADER_BYTES {
            return Err(VerifyError::Malformed(format!(
                "{} bytes, more than {MAX_HEADER_BYTES}",
                header.len()
            )));
        }
        let mut parts = header.split('.');
        let (Some(head), Some(claims), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VerifyError::Malformed(
                "not three dot-separated parts".into(),
            ));
        };
        let decoded: Header = serde_json::from_slice(&part(head, "JOSE header")?)
            .map_err(|error| VerifyError::Malformed(format!("the JOSE header: {error}")))?;
        if decoded.alg != "ES256" {
            return Err(VerifyError::Algorithm(decoded.alg));
        }
        let kid = decoded
            .kid
            .filter(|kid| !kid.is_empty())
            .ok_or_else(|| VerifyError::Malformed("the JOSE header names no kid".into()))?;
        Ok(Unverified {
            kid,
            signed: format!("{head}.{claims}"),
            signature: part(signature, "signature")?,
            claims: part(claims, "claims")?,
        })
    }

    /// Checks the signature with `key`, the age of `iat` at `now`, and that `body` is the one
    /// signed.
    pub fn verify(&self, key: &Jwk, body: &[u8], now: DateTime<Utc>) -> Result<(), VerifyError> {
        if key.kid != self.kid {
            return Err(VerifyError::UnknownKey(self.kid.clone()));
        }
        if key.expired_at.is_some() {
            return Err(VerifyError::ExpiredKey(key.kid.clone()));
        }
        let signature =
            Signature::from_slice(&self.signature).map_err(|_| VerifyError::BadSignature)?;
        key.verifying_key()?
            .verify(self.signed.as_bytes(), &signature)
            .map_err(|_| VerifyError::BadSignature)?;
        let claims: Claims = serde_json::from_slice(&self.claims)
            .map_err(|error| VerifyError::Malformed(format!("the claims: {error}")))?;
        let issued_at = DateTime::from_timestamp(claims.iat, 0)
            .ok_or_else(|| VerifyError::Malformed(format!("iat {} is out of range", claims.iat)))?;
        // A clock a little ahead of ours is tolerated as much as one behind.
        if (now - issued_at).abs() > MAX_AGE {
            return Err(VerifyError::Stale { issued_at, now });
        }
        let digest = Sha256::digest(body);
        let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
        let claimed = claims.request_body_sha256.to_ascii_lowercase();
        if !bool::from(hex.as_bytes().ct_eq(claimed.as_bytes())) {
            return Err(VerifyError::BodyMismatch);
        }
        Ok(())
    }
}

/// Checks a `Plaid-Verification` header against `body` with a key of `keys`.
pub fn verify(
    keys: &JwkSet,
    header: Option<&str>,
    body: &[u8],
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let unverified = Unverified::parse(header)?;
    let key = keys
        .get(&unverified.kid)
        .ok_or_else(|| VerifyError::UnknownKey(unverified.kid.clone()))?;
    unverified.verify(key, body, now)
}

/// Signing, for tests and local stand-ins of Plaid (behind the `test-signing` feature):
/// a P-256 key pair that makes `Plaid-Verification` headers.
#[cfg(any(test, feature = "test-signing"))]
pub mod signing {
    use p256::ecdsa::signature::Signer;
    use p256::ecdsa::{Signature, SigningKey};

    use super::*;

    /// A key pair for tests.
    pub struct TestKey {
        /// Its id.
        pub kid: String,
        key: SigningKey,
    }

    impl TestKey {
        /// A key made from 32 seed bytes (deterministic, for tests).
        pub fn from_seed(kid: &str, seed: [u8; 32]) -> Self {
            TestKey {
                kid: kid.to_owned(),
                key: SigningKey::from_slice(&seed).expect("a test seed is a valid scalar"),
            }
        }

        /// Its public half as a JWK.
        pub fn jwk(&self) -> Jwk {
            let point = self.key.verifying_key().to_encoded_point(false);
            Jwk {
                kid: self.kid.clone(),
                kty: "EC".into(),
                crv: "P-256".into(),
                alg: Some("ES256".into()),
                x: URL_SAFE_NO_PAD.encode(point.x().expect("an uncompressed point has x")),
                y: URL_SAFE_NO_PAD.encode(point.y().expect("an uncompressed point has y")),
                created_at: Some(1_560_000_000),
                expired_at: None,
            }
        }

        /// A `Plaid-Verification` header for `body` issued at `iat`, with the JOSE header
        /// `header` (normally `{"alg":"ES256","kid":...,"typ":"JWT"}`).
        pub fn sign_with_header(&self, header: &str, body: &[u8], iat: i64) -> String {
            let hash: String = Sha256::digest(body)
                .iter()
                .map(|byte| format!("{byte:02x}"))
                .collect();
            let claims = format!("{{\"iat\":{iat},\"request_body_sha256\":\"{hash}\"}}");
            let signed = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let signature: Signature = self.key.sign(signed.as_bytes());
            format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
        }

        /// A `Plaid-Verification` header for `body` issued at `iat`.
        pub fn sign(&self, body: &[u8], iat: i64) -> String {
            let header = format!(
                "{{\"alg\":\"ES256\",\"kid\":\"{}\",\"typ\":\"JWT\"}}",
                self.kid
            );
            self.sign_with_header(&header, body, iat)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::signing::TestKey;
    use super::*;

    const BODY: &[u8] =
        br#"{"webhook_type":"ITEM","webhook_code":"LOGIN_REPAIRED","item_id":"item_1"}"#;

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_767_225_600, 0).unwrap()
    }

    fn key() -> TestKey {
        TestKey::from_seed("6c5516e1-92dc-479e-a8ff-5a51992e0001", [7; 32])
    }

    fn keys(key: &TestKey) -> JwkSet {
        let mut set = JwkSet::default();
        set.insert(key.jwk());
        set
    }

    #[test]
    fn a_good_signature_passes() {
        let key = key();
        let header = key.sign(BODY, now().timestamp() - 60);
        verify(&keys(&key), Some(&header), BODY, now()).unwrap();
    }

    #[test]
    fn a_wrong_key_an_unknown_kid_and_an_expired_key_are_refused() {
        let key = key();
        let other = TestKey::from_seed(&key.kid, [9; 32]);
        let header = other.sign(BODY, now().timestamp());
        assert_eq!(
            verify(&keys(&key), Some(&header), BODY, now()),
            Err(VerifyError::BadSignature)
        );
        let stranger = TestKey::from_seed("not-known", [9; 32]);
        let header = stranger.sign(BODY, now().timestamp());
        assert_eq!(
            verify(&keys(&key), Some(&header), BODY, now()),
            Err(VerifyError::UnknownKey("not-known".into()))
        );
        let mut expired = key.jwk();
        expired.expired_at = Some(1_700_000_000);
        let mut set = JwkSet::default();
        set.insert(expired);
        let header = key.sign(BODY, now().timestamp());
        assert_eq!(
            verify(&set, Some(&header), BODY, now()),
            Err(VerifyError::ExpiredKey(key.kid.clone()))
        );
    }

    #[test]
    fn an_old_iat_and_a_changed_body_are_refused() {
        let key = key();
        let header = key.sign(BODY, now().timestamp() - 301);
        assert!(matches!(
            verify(&keys(&key), Some(&header), BODY, now()),
            Err(VerifyError::Stale { .. })
        ));
        let header = key.sign(BODY, now().timestamp() - 299);
        verify(&keys(&key), Some(&header), BODY, now()).unwrap();
        let changed =
            br#"{"webhook_type":"ITEM","webhook_code":"LOGIN_REPAIRED","item_id":"item_2"}"#;
        assert_eq!(
            verify(&keys(&key), Some(&header), changed, now()),
            Err(VerifyError::BodyMismatch)
        );
    }

    #[test]
    fn none_and_hs256_are_refused_before_any_key_is_looked_up() {
        let key = key();
        for alg in ["none", "HS256", "RS256", "es256"] {
            let header = format!("{{\"alg\":\"{alg}\",\"kid\":\"{}\"}}", key.kid);
            let token = key.sign_with_header(&header, BODY, now().timestamp());
            assert_eq!(
                verify(&keys(&key), Some(&token), BODY, now()),
                Err(VerifyError::Algorithm(alg.into())),
                "{alg}"
            );
        }
        // An unsigned token (`alg: none`, empty signature) is refused the same way.
        let unsigned = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(format!("{{\"alg\":\"none\",\"kid\":\"{}\"}}", key.kid)),
            URL_SAFE_NO_PAD.encode("{\"iat\":0,\"request_body_sha256\":\"\"}")
        );
        assert_eq!(
            verify(&keys(&key), Some(&unsigned), BODY, now()),
            Err(VerifyError::Algorithm("none".into()))
        );
    }

    #[test]
    fn a_missing_or_malformed_header_is_refused_never_a_panic() {
        let key = key();
        assert_eq!(
            verify(&keys(&key), None, BODY, now()),
            Err(VerifyError::Missing)
        );
        for header in [
            "",
            "a.b",
            "a.b.c.d",
            "!!!.e30.",
            "e30.e30.e30",
            &"x".repeat(MAX_HEADER_BYTES + 1),
        ] {
            assert!(
                matches!(
                    verify(&keys(&key), Some(header), BODY, now()),
                    Err(VerifyError::Malformed(_))
                ),
                "{header:.20}"
            );
        }
    }

    #[test]
    fn key_files_are_jwk_sets_or_plaid_key_responses() {
        let key = key();
        let jwk = serde_json::json!({
            "alg": "ES256", "created_at": 1560466150, "crv": "P-256", "expired_at": null,
            "kid": key.kid, "kty": "EC", "use": "sig", "x": key.jwk().x, "y": key.jwk().y
        });
        let set =
            JwkSet::from_json(&serde_json::json!({"keys": [jwk.clone()]}).to_string()).unwrap();
        let mut expected = key.jwk();
        expected.created_at = Some(1_560_466_150);
        assert_eq!(set.get(&key.kid), Some(&expected));
        let header = key.sign(BODY, now().timestamp());
        verify(&set, Some(&header), BODY, now()).unwrap();
        let one =
            JwkSet::from_json(&serde_json::json!({"key": jwk, "request_id": "r"}).to_string())
                .unwrap();
        assert_eq!(one.len(), 1);
        assert!(JwkSet::from_json("{\"nope\": 1}").is_err());
    }
}
