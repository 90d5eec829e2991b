//! The keys erasure and retention are built on (issue 29; see `docs/privacy.md`): the
//! operator's master key, the keys derived from it, data keys kept wrapped in a key file of
//! their own, sealing and opening of fields, and keyed hashes of user ids.
//!
//! **Not used by the engine yet**: this is the first piece of the design in `docs/privacy.md`;
//! nothing linkflow stores is sealed with it today.
//!
//! - [`MasterKey`]: 32 bytes from `LINKFLOW_MASTER_KEY` (64 hex characters) or
//!   `LINKFLOW_MASTER_KEY_FILE`. It encrypts nothing itself: HKDF-SHA256 derives a key-wrapping
//!   key and an index key from it.
//! - [`Keyring`]: data keys (32 random bytes each) by [`KeyId`], each stored wrapped with
//!   XChaCha20-Poly1305 under the wrapping key, its id as associated data, in one file that is
//!   rewritten whole (temporary file, fsync, rename, fsync of the directory) on every change, so
//!   a destroyed key is in no file afterwards. A key file that does not check out (bad magic,
//!   bad checksum, cut short) is an error naming it, never an empty keyring.
//! - [`seal`] / [`open`]: a field under a data key: version byte, 24-byte random nonce,
//!   ciphertext and tag; associated data binds it to its place.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Why a key could not be read, used or kept.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The master key's text is not 64 hex characters.
    #[error("the master key must be 64 hex characters (32 bytes): {0}")]
    BadMasterKey(String),
    /// Both `LINKFLOW_MASTER_KEY` and `LINKFLOW_MASTER_KEY_FILE` are set.
    #[error("set LINKFLOW_MASTER_KEY or LINKFLOW_MASTER_KEY_FILE, not both")]
    BothSources,
    /// The key file (or the master key file) could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        error: std::io::Error,
    },
    /// The key file is damaged: never read as an empty keyring.
    #[error("the key file {path} is damaged: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong, and where.
        reason: String,
    },
    /// A wrapped key or a sealed field does not open under its key (a wrong master key, or
    /// damaged bytes).
    #[error("{0} does not open under its key (a different master key, or damaged bytes)")]
    DoesNotOpen(String),
}

/// The operator's master key.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("MasterKey([secret])")
    }
}

impl MasterKey {
    /// From 64 hex characters (surrounding white space ignored).
    pub fn from_hex(text: &str) -> Result<MasterKey, KeyError> {
        let text = text.trim();
        if text.len() != 64 {
            return Err(KeyError::BadMasterKey(format!(
                "{} characters given",
                text.len()
            )));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        for (index, pair) in text.as_bytes().chunks(2).enumerate() {
            let pair = std::str::from_utf8(pair).ok();
            key[index] = pair
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| {
                    KeyError::BadMasterKey(format!(
                        "characters {}-{} are not hex",
                        index * 2 + 1,
                        index * 2 + 2
                    ))
                })?;
        }
        Ok(MasterKey(key))
    }

    /// From `LINKFLOW_MASTER_KEY` or the file `LINKFLOW_MASTER_KEY_FILE` names; `None` when
    /// neither is set (then erasure is unavailable).
    pub fn from_env() -> Result<Option<MasterKey>, KeyError> {
        let value = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        MasterKey::from_sources(
            value("LINKFLOW_MASTER_KEY"),
            value("LINKFLOW_MASTER_KEY_FILE"),
        )
    }

    /// From the key's text or the path of a file holding it (at most one of the two).
    pub fn from_sources(
        text: Option<String>,
        file: Option<String>,
    ) -> Result<Option<MasterKey>, KeyError> {
        match (text, file) {
            (Some(_), Some(_)) => Err(KeyError::BothSources),
            (Some(text), None) => MasterKey::from_hex(&Zeroizing::new(text)).map(Some),
            (None, Some(path)) => {
                let text = Zeroizing::new(std::fs::read_to_string(&path).map_err(|error| {
                    KeyError::Io {
                        path: path.clone().into(),
                        error,
                    }
                })?);
                MasterKey::from_hex(&text).map(Some)
            }
            (None, None) => Ok(None),
        }
    }

    /// A key for one purpose (HKDF-SHA256, the purpose as its info).
    fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let hkdf = hkdf::Hkdf::<Sha256>::new(Some(b"linkflow"), &self.0[..]);
        let mut key = Zeroizing::new([0u8; 32]);
        hkdf.expand(purpose.as_bytes(), &mut key[..])
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        key
    }
}

/// What a data key is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum KeyId {
    /// One user's: the keyed hash of their external user id ([`Keyring::subject`]).
    User([u8; 16]),
    /// One session's, until it names its user.
    Session(String),
    /// One day's raw payloads (days since the epoch).
    Day(i64),
}

impl KeyId {
    fn encode(&self) -> Vec<u8> {
        match self {
            KeyId::User(hash) => [&[b'u'][..], hash].concat(),
            KeyId::Session(id) => [&[b's'][..], id.as_bytes()].concat(),
            KeyId::Day(day) => [&[b'd'][..], &day.to_be_bytes()].concat(),
        }
    }

    fn decode(bytes: &[u8]) -> Option<KeyId> {
        let (tag, rest) = bytes.split_first()?;
        match tag {
            b'u' => Some(KeyId::User(rest.try_into().ok()?)),
            b's' => Some(KeyId::Session(String::from_utf8(rest.to_vec()).ok()?)),
            b'd' => Some(KeyId::Day(i64::from_be_bytes(rest.try_into().ok()?))),
            _ => None,
        }
    }
}

/// A data key.
pub type DataKey = Zeroizing<[u8; 32]>;

const SEALED_VERSION: u8 = 1;
const NONCE_BYTES: usize = 24;
const KEY_FILE_MAGIC: &[u8; 8] = b"LFKEYS1\n";
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "keys";

/// Seals `plaintext` under `key`, bound to `associated` (where it is kept).
pub fn seal(key: &[u8; 32], associated: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(key.into());
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).expect("the operating system's random source works");
    let sealed = cipher
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: associated,
            },
        )
        .expect("XChaCha20-Poly1305 encrypts any length linkflow stores");
    let mut out = Vec::with_capacity(1 + NONCE_BYTES + sealed.len());
    out.push(SEALED_VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&sealed);
    out
}

/// Opens what [`seal`] sealed under `key` with the same `associated` data.
pub fn open(key: &[u8; 32], associated: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    let does_not_open = || KeyError::DoesNotOpen("a sealed field".into());
    let (version, rest) = sealed.split_first().ok_or_else(does_not_open)?;
    if *version != SEALED_VERSION || rest.len() < NONCE_BYTES {
        return Err(does_not_open());
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
    XChaCha20Poly1305::new(key.into())
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: associated,
            },
        )
        .map_err(|_| does_not_open())
}

/// Data keys, wrapped, in their file.
pub struct Keyring {
    path: PathBuf,
    wrapping: Zeroizing<[u8; 32]>,
    index: Zeroizing<[u8; 32]>,
    /// Each key's wrapped bytes.
    wrapped: BTreeMap<KeyId, Vec<u8>>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Keyring")
            .field("path", &self.path)
            .field("keys", &self.wrapped.len())
            .finish_non_exhaustive()
    }
}

impl Keyring {
    /// Opens the key file in `dir` (none yet: an empty keyring), under `master`.
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Keyring, KeyError> {
        let path = dir.join(KEY_FILE);
        let wrapped = match std::fs::read(&path) {
            Ok(bytes) => parse_key_file(&path, &bytes)?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => return Err(KeyError::Io { path, error }),
        };
        let keyring = Keyring {
            path,
            wrapping: master.derive("key wrapping"),
            index: master.derive("index"),
            wrapped,
        };
        // Every key must open under this master key: a wrong one is found now, not at a read.
        for id in keyring.wrapped.keys() {
            keyring.unwrap_key(id)?;
        }
        Ok(keyring)
    }

    /// The keyed hash a user is known by in keys and indexes: the first 16 bytes of
    /// HMAC-SHA256 of the id under the index key. The id itself is never stored.
    pub fn subject(&self, external_user_id: &str) -> [u8; 16] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.index[..])
            .expect("HMAC takes a key of any length");
        mac.update(external_user_id.as_bytes());
        let digest = mac.finalize().into_bytes();
        let mut subject = [0u8; 16];
        subject.copy_from_slice(&digest[..16]);
        subject
    }

    /// The data key `id`, made and kept durably first if there is none.
    pub fn key(&mut self, id: &KeyId) -> Result<DataKey, KeyError> {
        if self.wrapped.contains_key(id) {
            return self.unwrap_key(id);
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut key[..]).expect("the operating system's random source works");
        let wrapped = seal(&self.wrapping, &id.encode(), &key[..]);
        self.wrapped.insert(id.clone(), wrapped);
        if let Err(error) = self.persist() {
            self.wrapped.remove(id);
            return Err(error);
        }
        Ok(key)
    }

    /// The data key `id` if it exists (`None`: never made, or destroyed).
    pub fn existing(&self, id: &KeyId) -> Result<Option<DataKey>, KeyError> {
        if self.wrapped.contains_key(id) {
            self.unwrap_key(id).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Destroys the data key `id` durably: when this returns, no file holds it. Destroying a
    /// key that is not there is not an error (an erasure can be run again).
    pub fn destroy(&mut self, id: &KeyId) -> Result<(), KeyError> {
        let Some(wrapped) = self.wrapped.remove(id) else {
            return Ok(());
        };
        if let Err(error) = self.persist() {
            self.wrapped.insert(id.clone(), wrapped);
            return Err(error);
        }
        Ok(())
    }

    /// How many data keys the keyring holds.
    pub fn len(&self) -> usize {
        self.wrapped.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.wrapped.is_empty()
    }

    fn unwrap_key(&self, id: &KeyId) -> Result<DataKey, KeyError> {
        let wrapped = self
            .wrapped
            .get(id)
            .ok_or_else(|| KeyError::DoesNotOpen(format!("key {id:?}")))?;
        let bytes = Zeroizing::new(
            open(&self.wrapping, &id.encode(), wrapped)
                .map_err(|_| KeyError::DoesNotOpen(format!("key {id:?}")))?,
        );
        let mut key = Zeroizing::new([0u8; 32]);
        if bytes.len() != 32 {
            return Err(KeyError::DoesNotOpen(format!("key {id:?}")));
        }
        key.copy_from_slice(&bytes);
        Ok(key)
    }

    /// Writes the whole key file anew: a temporary file, synced, renamed over the old one, and
    /// the directory synced, so that the file is the old one or the new one after a crash.
    fn persist(&self) -> Result<(), KeyError> {
        let io = |error| KeyError::Io {
            path: self.path.clone(),
            error,
        };
        let mut body = KEY_FILE_MAGIC.to_vec();
        body.extend_from_slice(&(self.wrapped.len() as u32).to_be_bytes());
        for (id, wrapped) in &self.wrapped {
            let id = id.encode();
            body.extend_from_slice(&(id.len() as u16).to_be_bytes());
            body.extend_from_slice(&id);
            body.extend_from_slice(&(wrapped.len() as u16).to_be_bytes());
            body.extend_from_slice(wrapped);
        }
        body.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
        let temporary = self.path.with_extension("new");
        let mut file = std::fs::File::create(&temporary).map_err(io)?;
        file.write_all(&body).map_err(io)?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&temporary, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(io)?;
        }
        Ok(())
    }
}

/// Reads a key file's entries; anything that does not check out is [`KeyError::Damaged`].
fn parse_key_file(path: &Path, bytes: &[u8]) -> Result<BTreeMap<KeyId, Vec<u8>>, KeyError> {
    let damaged = |reason: String| KeyError::Damaged {
        path: path.to_owned(),
        reason,
    };
    if bytes.len() < KEY_FILE_MAGIC.len() + 8 || !bytes.starts_with(KEY_FILE_MAGIC) {
        return Err(damaged(
            "it does not start with linkflow's key file header".into(),
        ));
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 4);
    if crc32fast::hash(body).to_be_bytes() != checksum {
        return Err(damaged(
            "its checksum does not match (cut short or changed)".into(),
        ));
    }
    let mut at = KEY_FILE_MAGIC.len();
    let mut take = |count: usize, what: &str| -> Result<&[u8], KeyError> {
        let slice = body
            .get(at..at + count)
            .ok_or_else(|| damaged(format!("{what} at byte {at} runs past the end")))?;
        at += count;
        Ok(slice)
    };
    let count = u32::from_be_bytes(take(4, "the key count")?.try_into().expect("4 bytes"));
    let mut keys = BTreeMap::new();
    for entry in 0..count {
        let id_len = u16::from_be_bytes(take(2, "a key id's length")?.try_into().expect("2"));
        let id_bytes = take(usize::from(id_len), "a key id")?;
        let id = KeyId::decode(id_bytes)
            .ok_or_else(|| damaged(format!("key {entry} has an unreadable id")))?;
        let len = u16::from_be_bytes(take(2, "a wrapped key's length")?.try_into().expect("2"));
        let wrapped = take(usize::from(len), "a wrapped key")?.to_vec();
        keys.insert(id, wrapped);
    }
    if at != body.len() {
        return Err(damaged(format!(
            "{} bytes follow the last key",
            body.len() - at
        )));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASTER: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn master() -> MasterKey {
        MasterKey::from_hex(MASTER).unwrap()
    }

    #[test]
    fn the_master_key_is_64_hex_characters() {
        assert!(MasterKey::from_hex(&format!("  {MASTER}\n")).is_ok());
        let short = MasterKey::from_hex(&MASTER[..62]).unwrap_err().to_string();
        assert!(short.contains("62 characters"), "{short}");
        let bad = MasterKey::from_hex(&format!("zz{}", &MASTER[2..])).unwrap_err();
        assert!(bad.to_string().contains("characters 1-2"), "{bad}");
        // Never printed.
        assert_eq!(format!("{:?}", master()), "MasterKey([secret])");
    }

    #[test]
    fn the_master_key_comes_from_its_text_or_a_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("master.key");
        std::fs::write(&file, format!("{MASTER}\n")).unwrap();
        let file = file.to_str().unwrap().to_owned();
        assert!(MasterKey::from_sources(None, None).unwrap().is_none());
        assert!(MasterKey::from_sources(Some(MASTER.into()), None)
            .unwrap()
            .is_some());
        assert!(MasterKey::from_sources(None, Some(file.clone()))
            .unwrap()
            .is_some());
        assert!(matches!(
            MasterKey::from_sources(Some(MASTER.into()), Some(file)),
            Err(KeyError::BothSources)
        ));
        let missing = dir.path().join("missing").to_str().unwrap().to_owned();
        assert!(matches!(
            MasterKey::from_sources(None, Some(missing)),
            Err(KeyError::Io { .. })
        ));
    }

    #[test]
    fn a_sealed_field_opens_only_under_its_key_and_place() {
        let key = [7u8; 32];
        let sealed = seal(&key, b"session s1 search_term", b"first platypus bank");
        assert!(!sealed.windows(8).any(|window| window == b"platypus"));
        assert_eq!(
            open(&key, b"session s1 search_term", &sealed).unwrap(),
            b"first platypus bank"
        );
        assert!(open(&[8u8; 32], b"session s1 search_term", &sealed).is_err());
        assert!(open(&key, b"session s2 search_term", &sealed).is_err());
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open(&key, b"session s1 search_term", &tampered).is_err());
        assert!(open(&key, b"", &[]).is_err());
        // Two seals of the same text differ (random nonces).
        assert_ne!(
            sealed,
            seal(&key, b"session s1 search_term", b"first platypus bank")
        );
    }

    #[test]
    fn keys_are_kept_wrapped_and_a_destroyed_key_is_in_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let alice = {
            let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
            let subject = keyring.subject("alice@example.com");
            assert_eq!(subject, keyring.subject("alice@example.com"));
            assert_ne!(subject, keyring.subject("bob@example.com"));
            let alice = keyring.key(&KeyId::User(subject)).unwrap();
            keyring.key(&KeyId::Session("s-9".into())).unwrap();
            keyring.key(&KeyId::Day(20_000)).unwrap();
            assert_eq!(keyring.len(), 3);
            (subject, alice)
        };
        let file = std::fs::read(dir.path().join(KEY_FILE)).unwrap();
        // The key file holds neither the user's id nor the key in the clear.
        assert!(!file.windows(5).any(|window| window == b"alice"));
        assert!(!file.windows(32).any(|window| window == &alice.1[..]));
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        let again = keyring.existing(&KeyId::User(alice.0)).unwrap().unwrap();
        assert_eq!(&again[..], &alice.1[..]);
        let wrapped = keyring.wrapped[&KeyId::User(alice.0)].clone();
        assert!(file
            .windows(wrapped.len())
            .any(|window| window == &wrapped[..]));
        keyring.destroy(&KeyId::User(alice.0)).unwrap();
        // Again: nothing to do, not an error.
        keyring.destroy(&KeyId::User(alice.0)).unwrap();
        let keyring = Keyring::open(dir.path(), &master()).unwrap();
        assert!(keyring.existing(&KeyId::User(alice.0)).unwrap().is_none());
        assert_eq!(keyring.len(), 2);
        // No file in the directory holds the destroyed key's wrapped bytes any more.
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            assert!(!bytes
                .windows(wrapped.len())
                .any(|window| window == &wrapped[..]));
        }
    }

    #[test]
    fn a_wrong_master_key_or_a_damaged_file_is_an_error_never_an_empty_keyring() {
        let dir = tempfile::tempdir().unwrap();
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        keyring.key(&KeyId::Day(1)).unwrap();
        let other = MasterKey::from_hex(&MASTER.replace('0', "1")).unwrap();
        assert!(matches!(
            Keyring::open(dir.path(), &other),
            Err(KeyError::DoesNotOpen(_))
        ));
        let path = dir.path().join(KEY_FILE);
        let whole = std::fs::read(&path).unwrap();
        for cut in [0, 5, 12, whole.len() - 1] {
            std::fs::write(&path, &whole[..cut]).unwrap();
            assert!(
                matches!(
                    Keyring::open(dir.path(), &master()),
                    Err(KeyError::Damaged { .. })
                ),
                "cut at {cut}"
            );
        }
        let mut flipped = whole.clone();
        flipped[20] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let error = Keyring::open(dir.path(), &master()).unwrap_err();
        assert!(error.to_string().contains("checksum"), "{error}");
    }
}
