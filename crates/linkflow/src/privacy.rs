//! The keys erasure and retention are built on (issue 29; see `docs/privacy.md`): the
//! operator's master key, the keys derived from it, data keys kept wrapped in a key file of
//! their own, sealing and opening of fields, and keyed hashes of user ids.
//!
//! - [`MasterKey`]: 32 bytes from `LINKFLOW_MASTER_KEY` (64 hex characters) or
//!   `LINKFLOW_MASTER_KEY_FILE`. It encrypts nothing itself: HKDF-SHA256 derives a key-wrapping
//!   key and an index key from it.
//! - [`Keyring`]: data keys (32 random bytes each) by [`KeyId`] (a user, a stream, a day), each
//!   wrapped with AES-256-GCM under the wrapping key in a fixed-size slot of the key file
//!   `keys` beside the store, named by a keyed hash of its id. A destroyed key's slot is
//!   overwritten with zeros and synced: sled and the write-ahead log never see a key, so no
//!   other copy exists. A key file that does not check out is an error naming the slot, never
//!   a missing key.
//! - [`Privacy`]: the engine's sealing of personal fields into tokens (deterministic for text,
//!   so sealed user ids still key indexes; raw payloads under their stream's and their day's
//!   keys) and their opening for reads, [`ERASED`] once a key is gone.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

use std::os::unix::fs::FileExt as _;

use crate::key_index::{Found, SlotIndex};

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
    /// The shared key table (PostgreSQL) failed.
    #[error("the key table: {0}")]
    Table(String),
    /// A raw payload's day (days since the epoch) outside what its token holds (`i32`).
    #[error("day {0} is outside the days a sealed raw payload names (a 32-bit day number)")]
    DayOutOfRange(i64),
    /// An earlier write or sync of the key file failed: it takes no more changes until the
    /// process opens it again.
    #[error("the key file takes no more changes since a write or sync of it failed ({0}); open it again")]
    Failed(String),
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyId {
    /// One user's: the keyed hash of their external user id ([`Keyring::subject`]).
    User([u8; 16]),
    /// One stream's (a session's, or an account's that names no user).
    Stream(String),
    /// One day's raw payloads (days since the epoch).
    Day(i64),
}

impl KeyId {
    fn encode(&self) -> Vec<u8> {
        match self {
            KeyId::User(hash) => [&[b'u'][..], hash].concat(),
            KeyId::Stream(id) => [&[b's'][..], id.as_bytes()].concat(),
            KeyId::Day(day) => [&[b'd'][..], &day.to_be_bytes()].concat(),
        }
    }
}

/// A key's name in the key file: a keyed hash of its [`KeyId`], so that the file names no
/// user and no session.
pub type SlotId = [u8; 16];

/// A data key.
pub type DataKey = Zeroizing<[u8; 32]>;

const SEALED_VERSION: u8 = 1;
const NONCE_BYTES: usize = 12;
const KEY_FILE_MAGIC: &[u8; 8] = b"LFKEYS3\n";
/// The key file's header: `magic(8) u64(slots the last completed sync covered)
/// wrapped-index-secret(73) zeros(35) crc32(4)`. The index secret keys every keyed hash (user
/// subjects, slot names): random, kept wrapped under the master key, so that rotating the
/// master key rewraps it and every hash stays the same.
const HEADER_BYTES: u64 = 128;
/// One key's slot: `u8(1) id(16) wrapped(73) zeros(34) crc32(4)`; a destroyed key's slot is
/// all zeros.
const SLOT_BYTES: usize = 128;
const WRAPPED_BYTES: usize = 1 + NONCE_BYTES + 32 + 16;
/// How far back [`Privacy::destroy_days_before`] looks for day keys: 20 years.
pub const MAX_RETENTION_SCAN_DAYS: i64 = 20 * 366;
/// The unwrapped keys kept in memory; past it the cache starts again empty.
pub const MAX_CACHED_KEYS: usize = 65_536;
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "keys";

/// Seals `plaintext` under `key` (AES-256-GCM), bound to `associated` (where it is kept),
/// with a random 96-bit nonce.
///
/// The nonces come from the operating system's random source, drawn [`NONCE_POOL_BYTES`] at a
/// time rather than by a system call per seal. Random 96-bit nonces are safe far past what any
/// linkflow key seals: a raw payload key seals one stream's payloads of one day, and the
/// wrapping key one 32-byte key per session (NIST's bound for random nonces is 2^32 seals per
/// key).
pub fn seal(key: &[u8; 32], associated: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(key, random_nonce(), associated, plaintext)
}

/// Random bytes fetched from the operating system at once for nonces.
const NONCE_POOL_BYTES: usize = 4_096;

fn random_nonce() -> [u8; NONCE_BYTES] {
    struct Pool {
        bytes: [u8; NONCE_POOL_BYTES],
        used: usize,
    }
    static POOL: std::sync::Mutex<Pool> = std::sync::Mutex::new(Pool {
        bytes: [0; NONCE_POOL_BYTES],
        used: NONCE_POOL_BYTES,
    });
    let mut pool = POOL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if pool.used + NONCE_BYTES > NONCE_POOL_BYTES {
        getrandom::fill(&mut pool.bytes).expect("the operating system's random source works");
        pool.used = 0;
    }
    let mut nonce = [0u8; NONCE_BYTES];
    let at = pool.used;
    nonce.copy_from_slice(&pool.bytes[at..at + NONCE_BYTES]);
    // Never handed out twice.
    pool.bytes[at..at + NONCE_BYTES].fill(0);
    pool.used += NONCE_BYTES;
    nonce
}

/// Seals `plaintext` under `key` with a nonce derived from the key, `associated` and the
/// plaintext (HMAC-SHA256, as SIV constructions do): the same text under the same key seals to
/// the same bytes, so sealed ids can be compared and looked up. It reveals only equality.
pub fn seal_deterministic(key: &[u8; 32], associated: &[u8], plaintext: &[u8]) -> Vec<u8> {
    seal_with(
        key,
        deterministic_nonce(key, associated, plaintext),
        associated,
        plaintext,
    )
}

fn seal_with(
    key: &[u8; 32],
    nonce: [u8; NONCE_BYTES],
    associated: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(SEALED_OVERHEAD + plaintext.len());
    seal_onto(&mut out, key, nonce, associated, plaintext);
    out
}

/// The bytes sealing adds to a plaintext: `u8(version) nonce(12) tag(16)`.
const SEALED_OVERHEAD: usize = 1 + NONCE_BYTES + 16;

/// Appends `u8(version) nonce ciphertext tag` to `out`, encrypting in place: one buffer for
/// what a token holds around the sealed bytes too (sealing runs once per personal field of
/// every event ingested, so copies count).
fn seal_onto(
    out: &mut Vec<u8>,
    key: &[u8; 32],
    nonce: [u8; NONCE_BYTES],
    associated: &[u8],
    plaintext: &[u8],
) {
    out.reserve(SEALED_OVERHEAD + plaintext.len());
    out.push(SEALED_VERSION);
    out.extend_from_slice(&nonce);
    let start = out.len();
    out.extend_from_slice(plaintext);
    let tag = Aes256Gcm::new(key.into())
        .encrypt_in_place_detached(Nonce::from_slice(&nonce), associated, &mut out[start..])
        .expect("AES-256-GCM encrypts any length linkflow stores");
    out.extend_from_slice(&tag);
}

/// The nonce [`seal_deterministic`] uses: a keyed hash of what it seals.
fn deterministic_nonce(key: &[u8; 32], associated: &[u8], plaintext: &[u8]) -> [u8; NONCE_BYTES] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(b"linkflow nonce");
    mac.update(&(associated.len() as u64).to_be_bytes());
    mac.update(associated);
    mac.update(plaintext);
    let digest = mac.finalize().into_bytes();
    let mut nonce = [0u8; NONCE_BYTES];
    nonce.copy_from_slice(&digest[..NONCE_BYTES]);
    nonce
}

/// Opens what [`seal`] or [`seal_deterministic`] sealed under `key` with the same
/// `associated` data.
pub fn open(key: &[u8; 32], associated: &[u8], sealed: &[u8]) -> Result<Vec<u8>, KeyError> {
    let does_not_open = || KeyError::DoesNotOpen("a sealed field".into());
    let (version, rest) = sealed.split_first().ok_or_else(does_not_open)?;
    if *version != SEALED_VERSION || rest.len() < NONCE_BYTES {
        return Err(does_not_open());
    }
    let (nonce, ciphertext) = rest.split_at(NONCE_BYTES);
    Aes256Gcm::new(key.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: associated,
            },
        )
        .map_err(|_| does_not_open())
}

/// Data keys, wrapped, one per fixed-size slot of the key file.
///
/// A new key is written to the slot after the last (`pwrite`, no sync); [`Keyring::sync`]
/// makes every key written so far durable, and the engine calls it before any event sealed
/// under them is committed. A destroyed key's slot is overwritten with zeros in place and
/// synced at once: no other copy was ever written (sled and the write-ahead log never see a
/// key), so nothing of it is left in any file linkflow writes. Slots are never reused.
///
/// The header counts the slots its last sync covered: a slot below that count that does not
/// check out is damage and an error naming it, never a missing key; one past it was being
/// written when the process stopped, was never relied on, and is cleared at open.
///
/// Memory does not grow with the keys: a key is found by its slot name through the slot index
/// (`keys.index`, [`crate::key_index`]), a table on disk read through the page cache, and at
/// most [`MAX_CACHED_KEYS`] unwrapped keys are kept. Opening reads the key file once, in
/// chunks of [`SCAN_SLOTS`] slots.
pub struct Keyring {
    path: PathBuf,
    file: std::fs::File,
    wrapping: Zeroizing<[u8; 32]>,
    index: Zeroizing<[u8; 32]>,
    /// The index secret wrapped under the master key, as the header holds it.
    index_wrapped: Vec<u8>,
    /// Each live key's slot, by name.
    slots: SlotIndex,
    /// Live keys.
    live: u64,
    /// Slots in the file (live and destroyed).
    used: u64,
    /// Slots the last sync covered.
    synced: u64,
    /// Unwrapped keys, at most [`MAX_CACHED_KEYS`].
    cache: HashMap<SlotId, DataKey>,
    /// Set by a write or sync of the key file that failed: what the file holds is no longer
    /// known, so it takes no more changes (no new key, no destroy, no sync) until it is opened
    /// again, which reads what is really there.
    failed: Option<String>,
    /// Tests: the write or sync (counted from 1) that fails, with this OS error code.
    #[cfg(test)]
    fault: Option<(u64, i32)>,
    #[cfg(test)]
    operations: u64,
}

/// Where [`Keyring::locate`] found a key: `Ok((slot number, table position))`, or
/// `Err((table position, whether empty))` where its entry would go.
type Located = Result<(u64, u64), (u64, bool)>;

/// The key file's slots read at a time when it is opened or rotated (128 KiB a chunk at 1,024).
pub const SCAN_SLOTS: usize = 1_024;

impl std::fmt::Debug for Keyring {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Keyring")
            .field("path", &self.path)
            .field("keys", &self.live)
            .finish_non_exhaustive()
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        // A clean close lets the next open use the slot index as it is; if it fails, or the
        // key file failed (what it holds is not known), the next open rebuilds it.
        if self.failed.is_some() {
            return;
        }
        if let Err(error) = self.slots.close(self.used) {
            tracing::warn!(%error, "the key slot index was not closed cleanly; the next open rebuilds it");
        }
    }
}

impl Keyring {
    /// Opens the key file in `dir` (none yet: an empty keyring), under `master`.
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Keyring, KeyError> {
        let path = dir.join(KEY_FILE);
        let io = |error| KeyError::Io {
            path: path.clone(),
            error,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        let length = file.metadata().map_err(io)?.len();
        let wrapping = master.derive("key wrapping");
        let (index, index_wrapped) = if length == 0 {
            let mut secret = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut secret[..]).expect("the operating system's random source works");
            let wrapped = seal(&wrapping, INDEX_SECRET, &secret[..]);
            (secret, wrapped)
        } else {
            let mut header = vec![0u8; (HEADER_BYTES.min(length)) as usize];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut header, 0).map_err(io)?;
            read_header(&path, &header, &wrapping)?
        };
        let index_path = SlotIndex::path_for(&path);
        if length == 0 {
            file.write_all_at(&header_bytes(0, &index_wrapped), 0)
                .map_err(io)?;
            file.sync_all().map_err(io)?;
            sync_dir(&path)?;
        }
        let (used, live) = if length == 0 {
            (0, 0)
        } else {
            check_slots(&path, &file, length, &index_wrapped)?
        };
        let slots = match SlotIndex::open_trusted(&index_path, used)? {
            Some(slots) => slots,
            None => build_index(&path, &file, used, live)?,
        };
        Ok(Keyring {
            path,
            file,
            wrapping,
            index,
            index_wrapped,
            slots,
            live,
            used,
            synced: used,
            cache: HashMap::new(),
            failed: None,
            #[cfg(test)]
            fault: None,
            #[cfg(test)]
            operations: 0,
        })
    }

    /// Rewraps every key of the key file in `dir` from the master key `old` to `new` (and the
    /// index secret, so that every keyed hash stays the same): the new file is written whole
    /// beside the old one, synced and renamed over it, so that after a crash the file is
    /// wholly under one key or the other. Destroyed keys' slots are left out. Returns how
    /// many keys it rewrapped.
    pub fn rotate(dir: &Path, old: &MasterKey, new: &MasterKey) -> Result<usize, KeyError> {
        Keyring::open(dir, old)?.rotate_to(new)
    }

    /// [`Keyring::rotate`] of this open keyring, which then goes on under `new`.
    pub fn rotate_to(&mut self, new: &MasterKey) -> Result<usize, KeyError> {
        let wrapping = new.derive("key wrapping");
        let index_wrapped = seal(&wrapping, INDEX_SECRET, &self.index[..]);
        let path = self.path.clone();
        let io = |error| KeyError::Io {
            path: path.clone(),
            error,
        };
        let temporary = path.with_extension("rotating");
        let file = std::fs::File::create(&temporary).map_err(io)?;
        let mut out = std::io::BufWriter::with_capacity(SCAN_SLOTS * SLOT_BYTES, file);
        use std::io::Write as _;
        out.write_all(&header_bytes(self.live, &index_wrapped))
            .map_err(io)?;
        let mut count = 0u64;
        let old_wrapping = self.wrapping.clone();
        scan(&self.path, &self.file, self.used, |number, slot| {
            let Slot::Live(slot_id) = read_slot(slot) else {
                return Ok(());
            };
            let key = Zeroizing::new(
                open(&old_wrapping, &slot_id, &slot[17..17 + WRAPPED_BYTES])
                    .map_err(|_| KeyError::DoesNotOpen(format!("key slot {number}")))?,
            );
            out.write_all(&slot_bytes(&slot_id, &seal(&wrapping, &slot_id, &key)))
                .map_err(io)?;
            count += 1;
            Ok(())
        })?;
        let file = out.into_inner().map_err(|error| io(error.into_error()))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&temporary, &path).map_err(io)?;
        sync_dir(&path)?;
        let dir = path.parent().unwrap_or(Path::new(".")).to_owned();
        *self = Keyring::open(&dir, new)?;
        Ok(count as usize)
    }

    /// Builds the slot index again from the key file.
    fn rebuild_index(&mut self) -> Result<(), KeyError> {
        self.slots = build_index(&self.path, &self.file, self.used, self.live)?;
        Ok(())
    }

    /// Where the live key named `slot_id` is: its slot number and table position, after
    /// checking that the slot names it (a stale entry is a miss). A damaged table is rebuilt.
    fn locate(&mut self, slot_id: &SlotId) -> Result<Located, KeyError> {
        let found = match self.slots.find(slot_id) {
            Ok(found) => found,
            Err(KeyError::Damaged { reason, .. }) => {
                tracing::warn!(reason, "rebuilding the key slot index: it is damaged");
                self.rebuild_index()?;
                self.slots.find(slot_id)?
            }
            Err(error) => return Err(error),
        };
        match found {
            Found::Absent { free, empty } => Ok(Err((free, empty))),
            Found::At { position, number } => {
                let mut slot = [0u8; SLOT_BYTES];
                if number >= self.used {
                    return Ok(Err((position, false)));
                }
                self.read_at(HEADER_BYTES + number * SLOT_BYTES as u64, &mut slot)?;
                match read_slot(&slot) {
                    Slot::Live(name) if name == *slot_id => Ok(Ok((number, position))),
                    Slot::Bad(reason) => Err(KeyError::Damaged {
                        path: self.path.clone(),
                        reason: format!("key slot {number} {reason}"),
                    }),
                    // Destroyed, or another key's: the entry is stale, and its place is free.
                    _ => Ok(Err((position, false))),
                }
            }
        }
    }

    /// The keyed hash a user is known by in keys and indexes: the first 16 bytes of
    /// HMAC-SHA256 of the id under the index key. The id itself is never stored.
    pub fn subject(&self, external_user_id: &str) -> [u8; 16] {
        self.keyed_hash(b"user", external_user_id.as_bytes())
    }

    /// The slot name of `id`.
    pub fn slot_id(&self, id: &KeyId) -> SlotId {
        self.keyed_hash(b"key", &id.encode())
    }

    fn keyed_hash(&self, purpose: &[u8], bytes: &[u8]) -> [u8; 16] {
        keyed_hash(&self.index, purpose, bytes)
    }

    /// The data key `id`, made if there is none (written, not yet synced: see
    /// [`Keyring::sync`]). Returns its slot name too.
    pub fn key(&mut self, id: &KeyId) -> Result<(SlotId, DataKey), KeyError> {
        let slot_id = self.slot_id(id);
        if let Some(key) = self.cache.get(&slot_id) {
            return Ok((slot_id, key.clone()));
        }
        let (free, empty) = match self.locate(&slot_id)? {
            Ok((number, _)) => return Ok((slot_id, self.unwrap_slot(number, &slot_id)?)),
            Err(free) => free,
        };
        self.check_failed()?;
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut key[..]).expect("the operating system's random source works");
        let wrapped = seal(&self.wrapping, &slot_id, &key[..]);
        let slot = slot_bytes(&slot_id, &wrapped);
        let number = self.used;
        self.write_at(HEADER_BYTES + number * SLOT_BYTES as u64, &slot)?;
        self.used += 1;
        self.live += 1;
        if self.slots.is_full() {
            self.rebuild_index()?;
        } else {
            self.slots.insert(free, empty, &slot_id, number)?;
        }
        self.remember(slot_id, &key);
        Ok((slot_id, key))
    }

    /// The data key named `slot_id` if it exists (`None`: never made, or destroyed).
    pub fn existing(&mut self, slot_id: &SlotId) -> Result<Option<DataKey>, KeyError> {
        if let Some(key) = self.cache.get(slot_id) {
            return Ok(Some(key.clone()));
        }
        match self.locate(slot_id)? {
            Ok((number, _)) => self.unwrap_slot(number, slot_id).map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Whether the key `id` exists.
    pub fn contains(&mut self, id: &KeyId) -> Result<bool, KeyError> {
        let slot_id = self.slot_id(id);
        if self.cache.contains_key(&slot_id) {
            return Ok(true);
        }
        Ok(self.locate(&slot_id)?.is_ok())
    }

    /// Makes every key written so far durable (one `fdatasync` of the key file, then the
    /// header's count). Nothing to do when nothing was written since the last.
    pub fn sync(&mut self) -> Result<(), KeyError> {
        self.check_failed()?;
        if self.synced == self.used {
            return Ok(());
        }
        self.sync_file()?;
        let used = self.used;
        self.write_header(used)?;
        self.synced = used;
        Ok(())
    }

    /// Destroys the data keys `ids` durably: when this returns, no file holds them. Keys that
    /// are not there are not an error (an erasure can be run again). Returns how many were
    /// there.
    pub fn destroy(&mut self, ids: &[KeyId]) -> Result<usize, KeyError> {
        self.check_failed()?;
        let mut destroyed = 0;
        for id in ids {
            let slot_id = self.slot_id(id);
            self.cache.remove(&slot_id);
            let Ok((number, position)) = self.locate(&slot_id)? else {
                continue;
            };
            self.write_at(
                HEADER_BYTES + number * SLOT_BYTES as u64,
                &[0u8; SLOT_BYTES],
            )?;
            self.slots.remove(position)?;
            self.live -= 1;
            destroyed += 1;
        }
        if destroyed > 0 {
            self.sync_file()?;
        }
        Ok(destroyed)
    }

    /// How many data keys the keyring holds.
    pub fn len(&self) -> usize {
        self.live as usize
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn remember(&mut self, slot_id: SlotId, key: &DataKey) {
        if self.cache.len() >= MAX_CACHED_KEYS {
            self.cache.clear();
        }
        self.cache.insert(slot_id, key.clone());
    }

    /// The key in slot `number`, which [`Keyring::locate`] found naming `slot_id`.
    fn unwrap_slot(&mut self, number: u64, slot_id: &SlotId) -> Result<DataKey, KeyError> {
        let mut slot = [0u8; SLOT_BYTES];
        self.read_at(HEADER_BYTES + number * SLOT_BYTES as u64, &mut slot)?;
        let describe = || KeyError::DoesNotOpen(format!("key slot {number}"));
        match read_slot(&slot) {
            Slot::Live(id) if id == *slot_id => {}
            Slot::Bad(reason) => {
                return Err(KeyError::Damaged {
                    path: self.path.clone(),
                    reason: format!("key slot {number} {reason}"),
                })
            }
            _ => return Err(describe()),
        }
        let bytes = Zeroizing::new(
            open(&self.wrapping, slot_id, &slot[17..17 + WRAPPED_BYTES]).map_err(|_| describe())?,
        );
        if bytes.len() != 32 {
            return Err(describe());
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        self.remember(*slot_id, &key);
        Ok(key)
    }

    fn write_header(&mut self, synced: u64) -> Result<(), KeyError> {
        let header = header_bytes(synced, &self.index_wrapped);
        self.write_at(0, &header)
    }

    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<(), KeyError> {
        let result = self
            .injected_fault()
            .and_then(|()| self.file.write_all_at(bytes, offset));
        self.failing(result)
    }

    fn sync_file(&mut self) -> Result<(), KeyError> {
        let result = self.injected_fault().and_then(|()| self.file.sync_data());
        self.failing(result)
    }

    /// `result`, and on an error the keyring stopped (see [`Keyring::failed`]).
    fn failing(&mut self, result: std::io::Result<()>) -> Result<(), KeyError> {
        result.map_err(|error| {
            let reason = format!("{}: {error}", self.path.display());
            tracing::error!(
                reason,
                "the key file failed; it takes no more changes until it is opened again"
            );
            self.failed = Some(reason);
            KeyError::Io {
                path: self.path.clone(),
                error,
            }
        })
    }

    fn check_failed(&self) -> Result<(), KeyError> {
        match &self.failed {
            None => Ok(()),
            Some(reason) => Err(KeyError::Failed(reason.clone())),
        }
    }

    #[cfg(test)]
    fn injected_fault(&mut self) -> std::io::Result<()> {
        self.operations += 1;
        match self.fault {
            Some((at, code)) if at == self.operations => {
                Err(std::io::Error::from_raw_os_error(code))
            }
            _ => Ok(()),
        }
    }

    #[cfg(not(test))]
    fn injected_fault(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn read_at(&self, offset: u64, bytes: &mut [u8]) -> Result<(), KeyError> {
        use std::os::unix::fs::FileExt as _;
        self.file
            .read_exact_at(bytes, offset)
            .map_err(|error| KeyError::Io {
                path: self.path.clone(),
                error,
            })
    }
}

/// Calls `each` with every slot of the key file below `used`, [`SCAN_SLOTS`] read at a time.
fn scan(
    path: &Path,
    file: &std::fs::File,
    used: u64,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), KeyError>,
) -> Result<(), KeyError> {
    let mut chunk = vec![0u8; SCAN_SLOTS * SLOT_BYTES];
    let mut number = 0u64;
    while number < used {
        let count = (used - number).min(SCAN_SLOTS as u64) as usize;
        let bytes = &mut chunk[..count * SLOT_BYTES];
        file.read_exact_at(bytes, HEADER_BYTES + number * SLOT_BYTES as u64)
            .map_err(|error| KeyError::Io {
                path: path.to_owned(),
                error,
            })?;
        for slot in bytes.chunks(SLOT_BYTES) {
            each(number, slot)?;
            number += 1;
        }
    }
    Ok(())
}

/// Checks every slot of a key file of `length` bytes: one below the header's synced count that
/// does not check out is damage (an error naming it); the first past it that does not, and
/// everything after, was being written when a process stopped and is cut off (the header
/// rewritten, the file synced). Returns the slots kept and how many of them are live.
fn check_slots(
    path: &Path,
    file: &std::fs::File,
    length: u64,
    index_wrapped: &[u8],
) -> Result<(u64, u64), KeyError> {
    let damaged = |reason: String| KeyError::Damaged {
        path: path.to_owned(),
        reason,
    };
    let io = |error| KeyError::Io {
        path: path.to_owned(),
        error,
    };
    if length < HEADER_BYTES {
        return Err(damaged(
            "it does not start with linkflow's key file header".into(),
        ));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0).map_err(io)?;
    let synced = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let whole = (length - HEADER_BYTES) / SLOT_BYTES as u64;
    if synced > whole {
        return Err(damaged(format!(
            "its header counts {synced} keys but the file holds {whole} whole slots (cut short)"
        )));
    }
    let (mut used, mut live) = (0, 0);
    let mut torn = None;
    scan(path, file, whole, |number, slot| {
        if torn.is_some() {
            return Ok(());
        }
        match read_slot(slot) {
            Slot::Live(_) => {
                live += 1;
                used = number + 1;
            }
            Slot::Destroyed => used = number + 1,
            Slot::Bad(reason) if number < synced => {
                return Err(damaged(format!("key slot {number} {reason}")));
            }
            Slot::Bad(reason) => torn = Some((number, reason)),
        }
        Ok(())
    })?;
    // A cut last slot is past the synced count (checked above).
    if torn.is_none() && (length - HEADER_BYTES) % SLOT_BYTES as u64 != 0 {
        torn = Some((whole, "is cut short"));
    }
    if let Some((number, reason)) = torn {
        // Written after the last completed sync, when the process stopped: never relied on.
        // Cleared so that the next key takes its place.
        tracing::warn!(
            slot = number,
            reason,
            "clearing a key slot written when the process stopped"
        );
    }
    file.set_len(HEADER_BYTES + used * SLOT_BYTES as u64)
        .map_err(io)?;
    file.write_all_at(&header_bytes(used, index_wrapped), 0)
        .map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok((used, live))
}

/// A slot index of the key file's live slots below `used`, built afresh.
fn build_index(
    path: &Path,
    file: &std::fs::File,
    used: u64,
    live: u64,
) -> Result<SlotIndex, KeyError> {
    let mut slots = SlotIndex::create(
        &SlotIndex::path_for(path),
        SlotIndex::capacity_for(live + 1),
    )?;
    scan(path, file, used, |number, slot| {
        if let Slot::Live(name) = read_slot(slot) {
            let (position, empty) = match slots.find(&name)? {
                Found::Absent { free, empty } => (free, empty),
                Found::At { position, .. } => (position, false),
            };
            slots.insert(position, empty, &name, number)?;
        }
        Ok(())
    })?;
    Ok(slots)
}

/// The associated data of the wrapped index secret.
const INDEX_SECRET: &[u8] = b"linkflow index secret";

fn header_bytes(synced: u64, index_wrapped: &[u8]) -> [u8; HEADER_BYTES as usize] {
    let mut header = [0u8; HEADER_BYTES as usize];
    header[..8].copy_from_slice(KEY_FILE_MAGIC);
    header[8..16].copy_from_slice(&synced.to_be_bytes());
    header[16..16 + WRAPPED_BYTES].copy_from_slice(index_wrapped);
    let end = HEADER_BYTES as usize - 4;
    let crc = crc32fast::hash(&header[..end]);
    header[end..].copy_from_slice(&crc.to_be_bytes());
    header
}

/// The index secret from a key file's header, checked and unwrapped.
fn read_header(
    path: &Path,
    bytes: &[u8],
    wrapping: &[u8; 32],
) -> Result<(Zeroizing<[u8; 32]>, Vec<u8>), KeyError> {
    let damaged = |reason: &str| KeyError::Damaged {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let header = bytes
        .get(..HEADER_BYTES as usize)
        .filter(|header| header.starts_with(KEY_FILE_MAGIC))
        .ok_or_else(|| damaged("it does not start with linkflow's key file header"))?;
    let end = HEADER_BYTES as usize - 4;
    if crc32fast::hash(&header[..end]).to_be_bytes() != header[end..] {
        return Err(damaged("its header does not check out (checksum)"));
    }
    let wrapped = header[16..16 + WRAPPED_BYTES].to_vec();
    let secret = Zeroizing::new(
        open(wrapping, INDEX_SECRET, &wrapped)
            .map_err(|_| KeyError::DoesNotOpen("the key file's index secret".into()))?,
    );
    let mut index = Zeroizing::new([0u8; 32]);
    if secret.len() != 32 {
        return Err(damaged("its index secret is not 32 bytes"));
    }
    index.copy_from_slice(&secret);
    Ok((index, wrapped))
}

fn slot_bytes(slot_id: &SlotId, wrapped: &[u8]) -> [u8; SLOT_BYTES] {
    let mut slot = [0u8; SLOT_BYTES];
    slot[0] = 1;
    slot[1..17].copy_from_slice(slot_id);
    slot[17..17 + WRAPPED_BYTES].copy_from_slice(wrapped);
    let crc = crc32fast::hash(&slot[..SLOT_BYTES - 4]);
    slot[SLOT_BYTES - 4..].copy_from_slice(&crc.to_be_bytes());
    slot
}

/// Syncs the directory holding `path`, so that a file created or renamed in it stays.
fn sync_dir(path: &Path) -> Result<(), KeyError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|error| KeyError::Io {
            path: dir.to_owned(),
            error,
        })
}

enum Slot {
    Live(SlotId),
    Destroyed,
    Bad(&'static str),
}

fn read_slot(slot: &[u8]) -> Slot {
    if slot.len() < SLOT_BYTES {
        return Slot::Bad("is cut short");
    }
    if slot.iter().all(|byte| *byte == 0) {
        return Slot::Destroyed;
    }
    let crc = u32::from_be_bytes(slot[SLOT_BYTES - 4..].try_into().expect("4 bytes"));
    if slot[0] != 1 || crc32fast::hash(&slot[..SLOT_BYTES - 4]) != crc {
        return Slot::Bad("does not check out (checksum)");
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&slot[1..17]);
    Slot::Live(id)
}

/// What [`Privacy`] asks of a keyring: the key file's [`Keyring`], or [`TableKeyring`] over a
/// table every node shares.
trait Keys: Send {
    fn subject(&self, external_user_id: &str) -> [u8; 16];
    /// The slot name of the key `id` (a keyed hash: what a token names a key by).
    fn slot_of(&self, id: &KeyId) -> SlotId;
    fn key(&mut self, id: &KeyId) -> Result<(SlotId, DataKey), KeyError>;
    fn existing(&mut self, slot_id: &SlotId) -> Result<Option<DataKey>, KeyError>;
    fn contains(&mut self, id: &KeyId) -> Result<bool, KeyError>;
    fn sync(&mut self) -> Result<(), KeyError>;
    fn destroy(&mut self, ids: &[KeyId]) -> Result<usize, KeyError>;
    fn len(&mut self) -> usize;
    fn rotate_to(&mut self, new: &MasterKey) -> Result<usize, KeyError>;
    fn forget(&mut self);
    /// Whether [`Keys::prepare`] saves anything (a table across the network).
    fn prepares(&self) -> bool {
        false
    }
    /// Makes or fetches the keys `ids` at once, ahead of sealing a batch under them.
    fn prepare(&mut self, _ids: &[KeyId]) -> Result<(), KeyError> {
        Ok(())
    }
}

impl Keys for Keyring {
    fn subject(&self, external_user_id: &str) -> [u8; 16] {
        Keyring::subject(self, external_user_id)
    }

    fn slot_of(&self, id: &KeyId) -> SlotId {
        self.slot_id(id)
    }

    fn key(&mut self, id: &KeyId) -> Result<(SlotId, DataKey), KeyError> {
        Keyring::key(self, id)
    }

    fn existing(&mut self, slot_id: &SlotId) -> Result<Option<DataKey>, KeyError> {
        Keyring::existing(self, slot_id)
    }

    fn contains(&mut self, id: &KeyId) -> Result<bool, KeyError> {
        Keyring::contains(self, id)
    }

    fn sync(&mut self) -> Result<(), KeyError> {
        Keyring::sync(self)
    }

    fn destroy(&mut self, ids: &[KeyId]) -> Result<usize, KeyError> {
        Keyring::destroy(self, ids)
    }

    fn len(&mut self) -> usize {
        Keyring::len(self)
    }

    fn rotate_to(&mut self, new: &MasterKey) -> Result<usize, KeyError> {
        Keyring::rotate_to(self, new)
    }

    fn forget(&mut self) {
        // One process owns the key file: nothing is destroyed behind its back.
    }
}

/// A table of wrapped keys shared by every node (PostgreSQL's `linkflow_keys`): what a
/// [`TableKeyring`] keeps its keys in. Each call is durable when it returns.
pub trait KeyTable: Send {
    /// The wrapped index secret stored, or `wrapped` stored now if there is none.
    fn index_secret(&self, wrapped: Vec<u8>) -> Result<Vec<u8>, KeyError>;
    /// The wrapped key named `slot`.
    fn get(&self, slot: &SlotId) -> Result<Option<Vec<u8>>, KeyError>;
    /// Stores `wrapped` under `slot` unless a key is there; the key that is.
    fn insert(&self, slot: &SlotId, wrapped: Vec<u8>) -> Result<Vec<u8>, KeyError>;
    /// [`KeyTable::insert`] of many keys at once (one round trip); the keys stored for the
    /// slots it could answer (a slot missing from the answer is asked for alone).
    fn insert_many(&self, keys: Vec<(SlotId, Vec<u8>)>)
        -> Result<Vec<(SlotId, Vec<u8>)>, KeyError>;
    /// Deletes the keys named `slots` (every node told); how many there were.
    fn delete(&self, slots: &[SlotId]) -> Result<usize, KeyError>;
    /// How many keys.
    fn count(&self) -> Result<usize, KeyError>;
    /// Every key, named.
    fn all(&self) -> Result<Vec<(SlotId, Vec<u8>)>, KeyError>;
    /// The index secret and every key replaced at once (a rotation).
    fn replace_all(&self, secret: Vec<u8>, keys: Vec<(SlotId, Vec<u8>)>) -> Result<(), KeyError>;
}

/// Data keys in a [`KeyTable`]: what several nodes on one PostgreSQL share. Unwrapped keys are
/// kept in memory (at most [`MAX_CACHED_KEYS`]) until [`Privacy::forget`], which the engine
/// calls whenever any node destroys keys.
pub struct TableKeyring {
    table: Box<dyn KeyTable>,
    wrapping: Zeroizing<[u8; 32]>,
    index: Zeroizing<[u8; 32]>,
    cache: HashMap<SlotId, DataKey>,
}

impl TableKeyring {
    /// The keyring of `table` under `master` (the index secret made if the table has none).
    pub fn open(table: Box<dyn KeyTable>, master: &MasterKey) -> Result<TableKeyring, KeyError> {
        let wrapping = master.derive("key wrapping");
        let mut fresh = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut fresh[..]).expect("the operating system's random source works");
        let stored = table.index_secret(seal(&wrapping, INDEX_SECRET, &fresh[..]))?;
        let secret = Zeroizing::new(
            open(&wrapping, INDEX_SECRET, &stored)
                .map_err(|_| KeyError::DoesNotOpen("the key table's index secret".into()))?,
        );
        let mut index = Zeroizing::new([0u8; 32]);
        if secret.len() != 32 {
            return Err(KeyError::Table("its index secret is not 32 bytes".into()));
        }
        index.copy_from_slice(&secret);
        Ok(TableKeyring {
            table,
            wrapping,
            index,
            cache: HashMap::new(),
        })
    }

    fn slot_id(&self, id: &KeyId) -> SlotId {
        keyed_hash(&self.index, b"key", &id.encode())
    }

    fn unwrap(&mut self, slot: &SlotId, wrapped: &[u8]) -> Result<DataKey, KeyError> {
        let bytes = Zeroizing::new(
            open(&self.wrapping, slot, wrapped)
                .map_err(|_| KeyError::DoesNotOpen("a key of the key table".into()))?,
        );
        if bytes.len() != 32 {
            return Err(KeyError::DoesNotOpen("a key of the key table".into()));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        key.copy_from_slice(&bytes);
        if self.cache.len() >= MAX_CACHED_KEYS {
            self.cache.clear();
        }
        self.cache.insert(*slot, key.clone());
        Ok(key)
    }
}

impl Keys for TableKeyring {
    fn subject(&self, external_user_id: &str) -> [u8; 16] {
        keyed_hash(&self.index, b"user", external_user_id.as_bytes())
    }

    fn slot_of(&self, id: &KeyId) -> SlotId {
        self.slot_id(id)
    }

    fn key(&mut self, id: &KeyId) -> Result<(SlotId, DataKey), KeyError> {
        let slot = self.slot_id(id);
        if let Some(key) = self.existing(&slot)? {
            return Ok((slot, key));
        }
        let mut key = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut key[..]).expect("the operating system's random source works");
        // Another node may have made it meanwhile: the one stored first is the key.
        let stored = self
            .table
            .insert(&slot, seal(&self.wrapping, &slot, &key[..]))?;
        Ok((slot, self.unwrap(&slot, &stored)?))
    }

    fn prepares(&self) -> bool {
        true
    }

    fn prepare(&mut self, ids: &[KeyId]) -> Result<(), KeyError> {
        let mut fresh = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            let slot = self.slot_id(id);
            if self.cache.contains_key(&slot) || !seen.insert(slot) {
                continue;
            }
            let mut key = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut key[..]).expect("the operating system's random source works");
            fresh.push((slot, seal(&self.wrapping, &slot, &key[..])));
        }
        // Another node may have made some meanwhile: the ones stored first are the keys. One
        // not answered is made or read alone when it is used.
        for chunk in fresh.chunks(MAX_PREPARED_KEYS) {
            for (slot, wrapped) in self.table.insert_many(chunk.to_vec())? {
                self.unwrap(&slot, &wrapped)?;
            }
        }
        Ok(())
    }

    fn existing(&mut self, slot_id: &SlotId) -> Result<Option<DataKey>, KeyError> {
        if let Some(key) = self.cache.get(slot_id) {
            return Ok(Some(key.clone()));
        }
        match self.table.get(slot_id)? {
            Some(wrapped) => self.unwrap(slot_id, &wrapped).map(Some),
            None => Ok(None),
        }
    }

    fn contains(&mut self, id: &KeyId) -> Result<bool, KeyError> {
        let slot = self.slot_id(id);
        Ok(self.cache.contains_key(&slot) || self.table.get(&slot)?.is_some())
    }

    fn sync(&mut self) -> Result<(), KeyError> {
        Ok(())
    }

    fn destroy(&mut self, ids: &[KeyId]) -> Result<usize, KeyError> {
        let slots: Vec<SlotId> = ids.iter().map(|id| self.slot_id(id)).collect();
        for slot in &slots {
            self.cache.remove(slot);
        }
        self.table.delete(&slots)
    }

    fn len(&mut self) -> usize {
        self.table.count().unwrap_or(0)
    }

    fn rotate_to(&mut self, new: &MasterKey) -> Result<usize, KeyError> {
        let wrapping = new.derive("key wrapping");
        let mut keys = Vec::new();
        for (slot, wrapped) in self.table.all()? {
            let key = Zeroizing::new(
                open(&self.wrapping, &slot, &wrapped)
                    .map_err(|_| KeyError::DoesNotOpen("a key of the key table".into()))?,
            );
            keys.push((slot, seal(&wrapping, &slot, &key)));
        }
        let count = keys.len();
        let secret = seal(&wrapping, INDEX_SECRET, &self.index[..]);
        self.table.replace_all(secret, keys)?;
        self.wrapping = wrapping;
        Ok(count)
    }

    fn forget(&mut self) {
        self.cache.clear();
    }
}

/// The first 16 bytes of HMAC-SHA256 under `index` of `purpose`, a zero byte and `bytes`.
fn keyed_hash(index: &[u8; 32], purpose: &[u8], bytes: &[u8]) -> [u8; 16] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(&index[..]).expect("HMAC takes a key of any length");
    mac.update(purpose);
    mac.update(&[0]);
    mac.update(bytes);
    let digest = mac.finalize().into_bytes();
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&digest[..16]);
    hash
}

/// The start of a sealed value in a stored text field.
pub const SEALED_PREFIX: &str = linkflow_store::SEALED_PREFIX;
/// What reads show in place of a field whose key was destroyed.
pub const ERASED: &str = "[erased]";

const TEXT_TOKEN: u8 = 1;
const RAW_TOKEN: u8 = 2;

/// The length of the token [`Privacy::seal_text`] makes of a text of `len` bytes.
pub fn sealed_text_len(len: usize) -> usize {
    SEALED_PREFIX.len() + base64_len(1 + 16 + 1 + NONCE_BYTES + len + 16)
}

/// The length of the token [`Privacy::seal_raw`] makes of a payload of `len` bytes.
pub fn sealed_raw_len(len: usize) -> usize {
    SEALED_PREFIX.len() + base64_len(sealed_raw_bytes_len(len))
}

/// The length of what [`Privacy::seal_raw_bytes`] makes of a payload of `len` bytes.
pub fn sealed_raw_bytes_len(len: usize) -> usize {
    1 + 16 + DAY_BYTES + SEALED_OVERHEAD + len
}

/// A raw token names its day's key by the day (days since the epoch, `i32` big-endian): the
/// key's slot name derives from it, 12 bytes fewer than the name itself.
const DAY_BYTES: usize = 4;

/// The day a raw token names at `at`.
fn day_at(bytes: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(
        bytes.get(at..at + DAY_BYTES)?.try_into().ok()?,
    ))
}

fn base64_len(bytes: usize) -> usize {
    (bytes * 4).div_ceil(3)
}

/// A stored text field as a read shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// Not sealed: the text as stored.
    Plain,
    /// A sealed field, opened.
    Text(String),
    /// A sealed raw payload, opened: its JSON text.
    Raw(String),
    /// A sealed field whose key was destroyed (erased, or past retention).
    Erased,
}

/// Sealing and opening of the personal fields the engine stores, over one [`Keyring`].
///
/// Text fields are sealed deterministically (the same text under the same key gives the same
/// token, so a sealed user id still keys indexes and account streams); raw payloads with a
/// random nonce under a key made of their stream's key and their day's, so that destroying
/// either makes them unreadable. A token is text: [`SEALED_PREFIX`] then URL-safe base64 of
/// `u8(kind) slot(16) [day slot(16) for a raw payload] sealed`.
pub struct Privacy {
    keyring: std::sync::Mutex<Box<dyn Keys>>,
    /// Recently used keys by id with their slot names, and raw payload keys by (owner's slot,
    /// day): what sealing a batch asks for again and again, without a keyed hash each time. At
    /// most [`MAX_CACHED_KEYS`] each; emptied by every destroy.
    recent: std::sync::Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    keys: HashMap<KeyId, (SlotId, DataKey)>,
    /// Raw payload keys by (owner's slot, day): the day's slot and the combined key.
    raw: HashMap<(SlotId, i64), DataKey>,
    /// Users' key ids and tokens by their plain id: every event of a user seals the same id
    /// to the same token, made once instead of two keyed hashes and a seal each time. At most
    /// [`MAX_CACHED_USERS`].
    users: HashMap<String, (KeyId, String)>,
}

/// The keys a [`KeyTable`] is asked for in one statement when a batch is prepared.
pub const MAX_PREPARED_KEYS: usize = 4_096;

/// The users whose tokens are kept in memory; past it the cache starts again empty.
pub const MAX_CACHED_USERS: usize = 16_384;

impl std::fmt::Debug for Privacy {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Privacy")
    }
}

fn associated(kind: u8) -> [u8; 16] {
    let mut bytes = *b"linkflow sealed\0";
    bytes[15] = kind;
    bytes
}

/// `bytes` as a token: [`SEALED_PREFIX`] and their URL-safe base64.
fn encode_token(bytes: &[u8]) -> String {
    use base64::Engine as _;
    let mut out = String::with_capacity(SEALED_PREFIX.len() + base64_len(bytes.len()));
    out.push_str(SEALED_PREFIX);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode_string(bytes, &mut out);
    out
}

/// A text token: `u8(TEXT_TOKEN) slot(16)` then `text` sealed deterministically.
fn text_token(slot: &SlotId, key: &DataKey, text: &str) -> String {
    let associated = associated(TEXT_TOKEN);
    let mut bytes = Vec::with_capacity(1 + 16 + SEALED_OVERHEAD + text.len());
    bytes.push(TEXT_TOKEN);
    bytes.extend_from_slice(slot);
    let nonce = deterministic_nonce(key, &associated, text.as_bytes());
    seal_onto(&mut bytes, key, nonce, &associated, text.as_bytes());
    encode_token(&bytes)
}

impl Privacy {
    /// Opens the key file in `dir` under `master`.
    pub fn open(dir: &Path, master: &MasterKey) -> Result<Privacy, KeyError> {
        Ok(Privacy {
            keyring: std::sync::Mutex::new(Box::new(Keyring::open(dir, master)?)),
            recent: std::sync::Mutex::default(),
        })
    }

    /// Keys kept in `table`, shared by every node (PostgreSQL), under `master`.
    pub fn open_table(table: Box<dyn KeyTable>, master: &MasterKey) -> Result<Privacy, KeyError> {
        Ok(Privacy {
            keyring: std::sync::Mutex::new(Box::new(TableKeyring::open(table, master)?)),
            recent: std::sync::Mutex::default(),
        })
    }

    /// Forgets every unwrapped key held in memory: another node destroyed keys, and the next
    /// use of any key asks the table again.
    pub fn forget(&self) {
        let mut recent = self.recent();
        *recent = Recent::default();
        self.keyring().forget();
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The key `id` (made if missing), from the recent ones when it is there.
    ///
    /// The recent keys' lock is held across the keyring's lookup (locks are always taken in
    /// that order), so that a destroy, which empties them under the same lock, can never be
    /// followed by a key it destroyed coming back into them.
    fn key(&self, id: &KeyId) -> Result<(SlotId, DataKey), KeyError> {
        self.key_in(&mut self.recent(), id)
    }

    /// [`Privacy::key`] with the recent keys' lock held by the caller.
    fn key_in(&self, recent: &mut Recent, id: &KeyId) -> Result<(SlotId, DataKey), KeyError> {
        if let Some(found) = recent.keys.get(id) {
            return Ok(found.clone());
        }
        let found = self.keyring().key(id)?;
        if recent.keys.len() >= MAX_CACHED_KEYS {
            recent.keys.clear();
        }
        recent.keys.insert(id.clone(), found.clone());
        Ok(found)
    }

    fn keyring(&self) -> std::sync::MutexGuard<'_, Box<dyn Keys>> {
        self.keyring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The user's key id.
    pub fn user_key(&self, external_user_id: &str) -> KeyId {
        if let Some((id, _)) = self.recent().users.get(external_user_id) {
            return id.clone();
        }
        KeyId::User(self.keyring().subject(external_user_id))
    }

    /// The token a user id is stored as, making the user's key if there is none.
    pub fn user_token(&self, external_user_id: &str) -> Result<String, KeyError> {
        let mut recent = self.recent();
        if let Some((_, token)) = recent.users.get(external_user_id) {
            return Ok(token.clone());
        }
        let id = KeyId::User(self.keyring().subject(external_user_id));
        let (slot, key) = self.key_in(&mut recent, &id)?;
        let token = text_token(&slot, &key, external_user_id);
        if recent.users.len() >= MAX_CACHED_USERS {
            recent.users.clear();
        }
        recent
            .users
            .insert(external_user_id.to_owned(), (id, token.clone()));
        Ok(token)
    }

    /// The token a user id is stored as, if the user has a key (`None`: never seen, or
    /// erased).
    pub fn known_user_token(&self, external_user_id: &str) -> Result<Option<String>, KeyError> {
        let id = self.user_key(external_user_id);
        if !self.keyring().contains(&id)? {
            return Ok(None);
        }
        self.seal_text(&id, external_user_id).map(Some)
    }

    /// `text` sealed under the key `id` (made if there is none), deterministically.
    pub fn seal_text(&self, id: &KeyId, text: &str) -> Result<String, KeyError> {
        let (slot, key) = self.key(id)?;
        Ok(text_token(&slot, &key, text))
    }

    /// A raw payload's text sealed under its owner's key (its stream's, or a user's) and its
    /// day's (both made if missing).
    pub fn seal_raw(&self, owner: &KeyId, day: i64, raw: &str) -> Result<String, KeyError> {
        self.seal_raw_bytes(owner, day, raw)
            .map(|bytes| encode_token(&bytes))
    }

    /// [`Privacy::seal_raw`]'s token as bytes (`u8(RAW_TOKEN) slot(16) i32(day) sealed`: the
    /// owner's key by its slot name, the day's by its day): what a record stores
    /// ([`linkflow_store::RawJson::sealed`]; its JSON form is the token).
    pub fn seal_raw_bytes(&self, owner: &KeyId, day: i64, raw: &str) -> Result<Vec<u8>, KeyError> {
        // One hold of the recent keys' lock for both lookups and the combined key, so that no
        // destroy falls between them.
        let day_number = i32::try_from(day).map_err(|_| KeyError::DayOutOfRange(day))?;
        let mut recent = self.recent();
        let (stream_slot, stream_key) = self.key_in(&mut recent, owner)?;
        let cached = recent.raw.get(&(stream_slot, day)).cloned();
        let key = match cached {
            Some(found) => found,
            None => {
                let (_, day_key) = self.key_in(&mut recent, &KeyId::Day(day))?;
                let key = combine(&stream_key, &day_key);
                if recent.raw.len() >= MAX_CACHED_KEYS {
                    recent.raw.clear();
                }
                recent.raw.insert((stream_slot, day), key.clone());
                key
            }
        };
        drop(recent);
        let mut bytes = Vec::with_capacity(sealed_raw_bytes_len(raw.len()));
        bytes.push(RAW_TOKEN);
        bytes.extend_from_slice(&stream_slot);
        bytes.extend_from_slice(&day_number.to_be_bytes());
        seal_onto(
            &mut bytes,
            &key,
            random_nonce(),
            &associated(RAW_TOKEN),
            raw.as_bytes(),
        );
        Ok(bytes)
    }

    /// Opens a stored text field.
    pub fn open_text(&self, text: &str) -> Opened {
        use base64::Engine as _;
        let Some(encoded) = text.strip_prefix(SEALED_PREFIX) else {
            return Opened::Plain;
        };
        let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded) else {
            return Opened::Plain;
        };
        self.open_raw(&bytes)
    }

    /// Opens a token's bytes: a sealed raw payload as a record keeps it
    /// ([`linkflow_store::RawJson::sealed_bytes`]), or any token's once decoded.
    pub fn open_raw(&self, bytes: &[u8]) -> Opened {
        let slot = |at: usize| -> Option<SlotId> { bytes.get(at..at + 16)?.try_into().ok() };
        let mut keyring = self.keyring();
        let opened = match bytes.first() {
            Some(&TEXT_TOKEN) => slot(1).map(|slot| {
                let Ok(Some(key)) = keyring.existing(&slot) else {
                    return Opened::Erased;
                };
                match open(&key, &associated(TEXT_TOKEN), &bytes[17..]) {
                    Ok(plain) => Opened::Text(String::from_utf8_lossy(&plain).into_owned()),
                    Err(_) => Opened::Erased,
                }
            }),
            Some(&RAW_TOKEN) => slot(1).zip(day_at(bytes, 17)).map(|(stream, day)| {
                let day = keyring.slot_of(&KeyId::Day(i64::from(day)));
                let (Ok(Some(stream)), Ok(Some(day))) =
                    (keyring.existing(&stream), keyring.existing(&day))
                else {
                    return Opened::Erased;
                };
                match open(
                    &combine(&stream, &day),
                    &associated(RAW_TOKEN),
                    &bytes[17 + DAY_BYTES..],
                ) {
                    Ok(plain) => Opened::Raw(String::from_utf8_lossy(&plain).into_owned()),
                    Err(_) => Opened::Erased,
                }
            }),
            _ => None,
        };
        opened.unwrap_or(Opened::Plain)
    }

    /// A stored text field as reads show it: opened, [`ERASED`], or as it is.
    pub fn show(&self, text: &str) -> String {
        match self.open_text(text) {
            Opened::Plain => text.to_owned(),
            Opened::Text(plain) | Opened::Raw(plain) => plain,
            Opened::Erased => ERASED.to_owned(),
        }
    }

    /// Every sealed string in `value` opened in place: text fields as their text, raw
    /// payloads as the JSON they hold, destroyed ones as [`ERASED`].
    pub fn show_value(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(text) if text.starts_with(SEALED_PREFIX) => {
                *value = match self.open_text(text) {
                    Opened::Plain => return,
                    Opened::Text(plain) => serde_json::Value::String(plain),
                    Opened::Raw(raw) => {
                        serde_json::from_str(&raw).unwrap_or(serde_json::Value::String(raw))
                    }
                    Opened::Erased => serde_json::Value::String(ERASED.to_owned()),
                };
            }
            serde_json::Value::Array(items) => {
                for item in items {
                    self.show_value(item);
                }
            }
            serde_json::Value::Object(fields) => {
                for (_, item) in fields.iter_mut() {
                    self.show_value(item);
                }
            }
            _ => {}
        }
    }

    /// Rewraps every key under the master key `new` (see [`Keyring::rotate`]); sealing and
    /// opening go on under it. Returns how many keys were rewrapped.
    pub fn rotate(&self, new: &MasterKey) -> Result<usize, KeyError> {
        let mut keyring = self.keyring();
        keyring.sync()?;
        keyring.rotate_to(new)
    }

    /// Destroys the raw payload keys of the days before `day` (days since the epoch), looking
    /// back [`MAX_RETENTION_SCAN_DAYS`] days; returns how many it destroyed. Each later call
    /// finds nothing left to destroy in the days an earlier one covered.
    pub fn destroy_days_before(&self, day: i64) -> Result<usize, KeyError> {
        let mut recent = self.recent();
        let mut keyring = self.keyring();
        *recent = Recent::default();
        let days: Vec<KeyId> = (day.saturating_sub(MAX_RETENTION_SCAN_DAYS)..day)
            .map(KeyId::Day)
            .collect();
        keyring.destroy(&days)
    }

    /// Whether sealing a batch should [`Privacy::prepare`] its keys first: keys in a table
    /// across the network (PostgreSQL), where each key made or read alone is a round trip.
    pub fn prepares(&self) -> bool {
        self.keyring().prepares()
    }

    /// Makes or fetches the keys `ids` at once (a round trip per [`MAX_PREPARED_KEYS`]), so
    /// that sealing a batch under them asks the table nothing more.
    pub fn prepare(&self, ids: &[KeyId]) -> Result<(), KeyError> {
        self.keyring().prepare(ids)
    }

    /// Makes every key made so far durable.
    pub fn sync(&self) -> Result<(), KeyError> {
        self.keyring().sync()
    }

    /// Destroys the keys `ids` durably.
    /// Returns how many of them existed.
    pub fn destroy(&self, ids: &[KeyId]) -> Result<usize, KeyError> {
        let mut recent = self.recent();
        *recent = Recent::default();
        self.keyring().destroy(ids)
    }

    /// Whether the key `id` exists.
    pub fn contains(&self, id: &KeyId) -> Result<bool, KeyError> {
        self.keyring().contains(id)
    }

    /// How many keys the key file holds.
    pub fn keys(&self) -> usize {
        self.keyring().len()
    }

    /// The keyed hash of a user id (hex), for names that must not hold the id.
    pub fn subject_hex(&self, external_user_id: &str) -> String {
        self.keyring()
            .subject(external_user_id)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// Whether `value` holds a sealed string anywhere.
pub fn holds_sealed(value: &serde_json::Value) -> bool {
    match value {
        serde_json::Value::String(text) => text.starts_with(SEALED_PREFIX),
        serde_json::Value::Array(items) => items.iter().any(holds_sealed),
        serde_json::Value::Object(fields) => fields.values().any(holds_sealed),
        _ => false,
    }
}

/// A raw payload's key: HMAC-SHA256 of the day's key under the stream's.
fn combine(stream: &DataKey, day: &DataKey) -> DataKey {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&stream[..]).expect("HMAC takes any key");
    mac.update(&day[..]);
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&mac.finalize().into_bytes());
    key
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
    fn a_deterministic_seal_is_the_same_for_the_same_text_and_key_only() {
        let key = [7u8; 32];
        let one = seal_deterministic(&key, b"user", b"alice");
        assert_eq!(one, seal_deterministic(&key, b"user", b"alice"));
        assert_ne!(one, seal_deterministic(&key, b"user", b"alicf"));
        assert_ne!(one, seal_deterministic(&[8u8; 32], b"user", b"alice"));
        assert_eq!(open(&key, b"user", &one).unwrap(), b"alice");
    }

    fn file_holds(dir: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(dir).unwrap().any(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|window| window == needle)
        })
    }

    #[test]
    fn keys_are_kept_wrapped_and_a_destroyed_key_is_in_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (alice_id, alice_slot, alice) = {
            let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
            let subject = keyring.subject("alice@example.com");
            assert_eq!(subject, keyring.subject("alice@example.com"));
            assert_ne!(subject, keyring.subject("bob@example.com"));
            let id = KeyId::User(subject);
            let (slot, alice) = keyring.key(&id).unwrap();
            keyring.key(&KeyId::Stream("s-9".into())).unwrap();
            keyring.key(&KeyId::Day(20_000)).unwrap();
            // Asking again gives the same key, no new slot.
            assert_eq!(&keyring.key(&id).unwrap().1[..], &alice[..]);
            keyring.sync().unwrap();
            assert_eq!(keyring.len(), 3);
            (id, slot, alice)
        };
        // The key file holds neither the user's id, the session's, nor a key in the clear.
        assert!(!file_holds(dir.path(), b"alice"));
        assert!(!file_holds(dir.path(), b"s-9"));
        assert!(!file_holds(dir.path(), &alice[..]));
        assert!(file_holds(dir.path(), &alice_slot));
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        let again = keyring.existing(&alice_slot).unwrap().unwrap();
        assert_eq!(&again[..], &alice[..]);
        keyring.destroy(std::slice::from_ref(&alice_id)).unwrap();
        // Again: nothing to do, not an error.
        keyring.destroy(std::slice::from_ref(&alice_id)).unwrap();
        assert!(keyring.existing(&alice_slot).unwrap().is_none());
        assert!(!file_holds(dir.path(), &alice_slot));
        drop(keyring);
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        assert!(keyring.existing(&alice_slot).unwrap().is_none());
        assert_eq!(keyring.len(), 2);
        // A new key goes after the destroyed slot, never into it.
        keyring.key(&KeyId::Day(20_001)).unwrap();
        keyring.sync().unwrap();
        let len = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().len();
        assert_eq!(len, HEADER_BYTES + 4 * SLOT_BYTES as u64);
    }

    /// Keys are found through the slot index on disk: across its growth, a clean close (the
    /// table used as it is), a process that stopped without closing it (rebuilt), a damaged
    /// entry (rebuilt when met) and destroys, every key is the one made.
    #[test]
    fn keys_are_found_through_the_slot_index_across_growth_restarts_and_damage() {
        use crate::key_index::MIN_CAPACITY;
        let dir = tempfile::tempdir().unwrap();
        let count = MIN_CAPACITY as usize + 100;
        let ids: Vec<KeyId> = (0..count)
            .map(|n| KeyId::Stream(format!("s-{n}")))
            .collect();
        let mut made = Vec::with_capacity(count);
        {
            let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
            for id in &ids {
                made.push(keyring.key(id).unwrap().1);
            }
            keyring.sync().unwrap();
            // Grown past its first size, at most half full.
            assert!(keyring.slots.capacity() >= 2 * count as u64);
            keyring.destroy(&ids[..10]).unwrap();
            assert_eq!(keyring.len(), count - 10);
        }
        let check = |keyring: &mut Keyring| {
            for (n, id) in ids.iter().enumerate() {
                let slot = keyring.slot_id(id);
                match keyring.existing(&slot).unwrap() {
                    Some(key) => assert_eq!(&key[..], &made[n][..], "key {n}"),
                    None => assert!(n < 10, "key {n} is missing"),
                }
            }
        };
        // Closed cleanly: used as it is.
        let index_path = crate::key_index::SlotIndex::path_for(&dir.path().join(KEY_FILE));
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        assert!(keyring.slots.capacity() >= 2 * count as u64);
        check(&mut keyring);
        // A new key after a destroyed one's entry, then a process that stops without closing.
        let (_, late) = keyring.key(&KeyId::Day(7)).unwrap();
        keyring.sync().unwrap();
        keyring.cache.clear();
        std::mem::forget(keyring);
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        check(&mut keyring);
        let slot = keyring.slot_id(&KeyId::Day(7));
        assert_eq!(&keyring.existing(&slot).unwrap().unwrap()[..], &late[..]);
        assert_eq!(keyring.len(), count - 10 + 1);
        // A damaged entry on the way to a key: the table is rebuilt and the key found.
        let name = keyring.slot_id(&ids[500]);
        let home = keyring.slots.home(&name);
        keyring.slots.damage(home);
        keyring.cache.clear();
        assert_eq!(
            &keyring.existing(&name).unwrap().unwrap()[..],
            &made[500][..]
        );
        check(&mut keyring);
        drop(keyring);
        // A missing index is rebuilt too.
        std::fs::remove_file(&index_path).unwrap();
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        check(&mut keyring);
        // Erased ids are made anew, as new keys.
        let (_, new) = keyring.key(&ids[0]).unwrap();
        assert_ne!(&new[..], &made[0][..]);
    }

    /// A write or sync of the key file that fails (EIO, ENOSPC) is an error, and the keyring
    /// takes no more changes until it is opened again: a key whose slot was not written is
    /// not made, a destroy that did not reach the disk is not taken for done, and opened
    /// again the file says what is really there, so that a run again finishes the job.
    #[test]
    fn a_failed_write_or_sync_of_the_key_file_stops_it_until_it_is_opened_again() {
        const EIO: i32 = 5;
        const ENOSPC: i32 = 28;
        let dir = tempfile::tempdir().unwrap();
        let inject = |keyring: &mut Keyring, at: u64, code: i32| {
            keyring.operations = 0;
            keyring.fault = Some((at, code));
        };
        // A new key's slot not written (a full disk): no key, and nothing more taken.
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        let (_, first) = keyring.key(&KeyId::Day(1)).unwrap();
        keyring.sync().unwrap();
        inject(&mut keyring, 1, ENOSPC);
        let error = keyring.key(&KeyId::Day(2)).unwrap_err();
        assert!(
            matches!(&error, KeyError::Io { error, .. } if error.raw_os_error() == Some(ENOSPC)),
            "{error}"
        );
        keyring.fault = None;
        for refused in [
            keyring.key(&KeyId::Day(3)).map(|_| ()),
            keyring.sync(),
            keyring.destroy(&[KeyId::Day(1)]).map(|_| ()),
        ] {
            assert!(matches!(refused, Err(KeyError::Failed(_))), "{refused:?}");
        }
        // Keys already made still open.
        let slot = keyring.slot_id(&KeyId::Day(1));
        assert_eq!(&keyring.existing(&slot).unwrap().unwrap()[..], &first[..]);
        drop(keyring);
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        assert_eq!(keyring.len(), 1);
        assert!(!keyring.contains(&KeyId::Day(2)).unwrap());
        // A sync that fails: an error, and the keys it was to make durable are not relied on.
        keyring.key(&KeyId::Day(2)).unwrap();
        inject(&mut keyring, 1, EIO);
        assert!(keyring.sync().is_err());
        assert!(matches!(keyring.sync(), Err(KeyError::Failed(_))));
        drop(keyring);
        // A destroy whose zeros could not be written, then one whose sync failed: each an
        // error; opened again, a run again destroys the key for good.
        for at in [1, 2] {
            let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
            assert!(keyring.contains(&KeyId::Day(1)).unwrap(), "fault {at}");
            inject(&mut keyring, at, EIO);
            assert!(keyring.destroy(&[KeyId::Day(1)]).is_err(), "fault {at}");
            assert!(matches!(
                keyring.destroy(&[KeyId::Day(1)]),
                Err(KeyError::Failed(_))
            ));
            drop(keyring);
            if at == 1 {
                continue;
            }
            let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
            keyring.destroy(&[KeyId::Day(1)]).unwrap();
            assert!(!keyring.contains(&KeyId::Day(1)).unwrap());
            assert!(!file_holds(dir.path(), &slot));
        }
    }

    #[test]
    fn a_wrong_master_key_or_damage_is_an_error_and_an_unsynced_slot_is_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        keyring.key(&KeyId::Day(1)).unwrap();
        keyring.key(&KeyId::Day(2)).unwrap();
        keyring.sync().unwrap();
        drop(keyring);
        let other = MasterKey::from_hex(&MASTER.replace('0', "1")).unwrap();
        assert!(matches!(
            Keyring::open(dir.path(), &other),
            Err(KeyError::DoesNotOpen(_))
        ));
        let path = dir.path().join(KEY_FILE);
        let whole = std::fs::read(&path).unwrap();
        // A flipped byte in a synced slot, a cut into one, a damaged header: errors.
        let mut flipped = whole.clone();
        flipped[HEADER_BYTES as usize + SLOT_BYTES + 40] ^= 0x40;
        for (bytes, expected) in [
            (flipped, "key slot 1 does not check out"),
            (whole[..whole.len() - 1].to_vec(), "cut short"),
            (whole[..5].to_vec(), "header"),
        ] {
            std::fs::write(&path, &bytes).unwrap();
            let error = Keyring::open(dir.path(), &master()).unwrap_err();
            assert!(
                matches!(error, KeyError::Damaged { .. }) && error.to_string().contains(expected),
                "{error}"
            );
        }
        // A slot past the header's count that does not check out was being written when the
        // process stopped: cleared, and the keys before it are kept.
        let mut torn = whole.clone();
        torn.extend_from_slice(&[0x55; SLOT_BYTES / 2]);
        std::fs::write(&path, &torn).unwrap();
        let mut keyring = Keyring::open(dir.path(), &master()).unwrap();
        assert_eq!(keyring.len(), 2);
        assert!(keyring.contains(&KeyId::Day(2)).unwrap());
        drop(keyring);
        assert_eq!(std::fs::read(&path).unwrap(), whole);
    }

    #[test]
    fn rotating_the_master_key_rewraps_every_key_and_keeps_every_hash() {
        let dir = tempfile::tempdir().unwrap();
        let new = MasterKey::from_hex(&MASTER.replace('1', "9")).unwrap();
        let (token, term) = {
            let privacy = Privacy::open(dir.path(), &master()).unwrap();
            let token = privacy.user_token("alice").unwrap();
            let term = privacy
                .seal_text(&KeyId::Stream("s1".into()), "platypus")
                .unwrap();
            privacy
                .seal_text(&KeyId::Stream("s2".into()), "gone")
                .unwrap();
            privacy.destroy(&[KeyId::Stream("s2".into())]).unwrap();
            privacy.sync().unwrap();
            (token, term)
        };
        assert_eq!(Keyring::rotate(dir.path(), &master(), &new).unwrap(), 2);
        // The old master key no longer opens the file; the new one opens every token, and
        // the same user seals to the same token.
        assert!(matches!(
            Keyring::open(dir.path(), &master()),
            Err(KeyError::DoesNotOpen(_))
        ));
        let privacy = Privacy::open(dir.path(), &new).unwrap();
        assert_eq!(privacy.show(&token), "alice");
        assert_eq!(privacy.show(&term), "platypus");
        assert_eq!(privacy.known_user_token("alice").unwrap(), Some(token));
        assert_eq!(privacy.keys(), 2);
        // Rotating with the wrong old key changes nothing.
        assert!(Keyring::rotate(dir.path(), &master(), &new).is_err());
        assert_eq!(
            Privacy::open(dir.path(), &new).unwrap().show(&term),
            "platypus"
        );
    }

    /// A key table in memory that counts what it is asked, and can leave slots out of an
    /// `insert_many` answer (as PostgreSQL does for a key another node is inserting then).
    #[derive(Default, Clone)]
    struct CountingTable {
        keys: std::sync::Arc<std::sync::Mutex<HashMap<SlotId, Vec<u8>>>>,
        calls: std::sync::Arc<std::sync::Mutex<Vec<&'static str>>>,
        withheld: std::sync::Arc<std::sync::Mutex<Vec<SlotId>>>,
        secret: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    }

    impl KeyTable for CountingTable {
        fn index_secret(&self, wrapped: Vec<u8>) -> Result<Vec<u8>, KeyError> {
            Ok(self.secret.lock().unwrap().get_or_insert(wrapped).clone())
        }
        fn get(&self, slot: &SlotId) -> Result<Option<Vec<u8>>, KeyError> {
            self.calls.lock().unwrap().push("get");
            Ok(self.keys.lock().unwrap().get(slot).cloned())
        }
        fn insert(&self, slot: &SlotId, wrapped: Vec<u8>) -> Result<Vec<u8>, KeyError> {
            self.calls.lock().unwrap().push("insert");
            Ok(self
                .keys
                .lock()
                .unwrap()
                .entry(*slot)
                .or_insert(wrapped)
                .clone())
        }
        fn insert_many(
            &self,
            keys: Vec<(SlotId, Vec<u8>)>,
        ) -> Result<Vec<(SlotId, Vec<u8>)>, KeyError> {
            self.calls.lock().unwrap().push("insert_many");
            let withheld = self.withheld.lock().unwrap().clone();
            let mut stored = self.keys.lock().unwrap();
            Ok(keys
                .into_iter()
                .filter(|(slot, _)| !withheld.contains(slot))
                .map(|(slot, wrapped)| (slot, stored.entry(slot).or_insert(wrapped).clone()))
                .collect())
        }
        fn delete(&self, slots: &[SlotId]) -> Result<usize, KeyError> {
            let mut keys = self.keys.lock().unwrap();
            Ok(slots
                .iter()
                .filter(|slot| keys.remove(*slot).is_some())
                .count())
        }
        fn count(&self) -> Result<usize, KeyError> {
            Ok(self.keys.lock().unwrap().len())
        }
        fn all(&self) -> Result<Vec<(SlotId, Vec<u8>)>, KeyError> {
            Ok(self
                .keys
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect())
        }
        fn replace_all(&self, _: Vec<u8>, keys: Vec<(SlotId, Vec<u8>)>) -> Result<(), KeyError> {
            *self.keys.lock().unwrap() = keys.into_iter().collect();
            Ok(())
        }
    }

    /// On a shared table, a batch's keys are made or fetched in one statement before it is
    /// sealed, and sealing then asks the table nothing; a key the table left out of the answer
    /// is asked for alone, and every node agrees on the key stored first.
    #[test]
    fn a_batch_prepares_its_keys_in_one_statement_on_a_shared_table() {
        let table = CountingTable::default();
        let privacy = Privacy::open_table(Box::new(table.clone()), &master()).unwrap();
        assert!(privacy.prepares());
        let ids: Vec<KeyId> = (0..50)
            .map(|n| KeyId::Stream(format!("s-{n}")))
            .chain([privacy.user_key("alice"), KeyId::Day(20_000)])
            .collect();
        privacy.prepare(&ids).unwrap();
        assert_eq!(*table.calls.lock().unwrap(), ["insert_many"]);
        for id in &ids[..50] {
            privacy.seal_text(id, "text").unwrap();
        }
        privacy.user_token("alice").unwrap();
        privacy.seal_raw(&ids[0], 20_000, r#"{"n":1}"#).unwrap();
        assert_eq!(
            *table.calls.lock().unwrap(),
            ["insert_many"],
            "sealing asked nothing"
        );
        // A second node on the same table: the same keys, so the same tokens.
        let other = Privacy::open_table(Box::new(table.clone()), &master()).unwrap();
        other.prepare(&ids).unwrap();
        assert_eq!(
            other.user_token("alice").unwrap(),
            privacy.user_token("alice").unwrap()
        );
        assert_eq!(
            other.seal_text(&ids[7], "same").unwrap(),
            privacy.seal_text(&ids[7], "same").unwrap()
        );
        // A slot left out of the answer is made alone when it is used.
        let third = Privacy::open_table(Box::new(table.clone()), &master()).unwrap();
        let late = KeyId::Stream("late".into());
        table
            .withheld
            .lock()
            .unwrap()
            .push(keyed_hash(&index_of(&table), b"key", &late.encode()));
        table.calls.lock().unwrap().clear();
        third.prepare(std::slice::from_ref(&late)).unwrap();
        let token = third.seal_text(&late, "late text").unwrap();
        assert_eq!(third.show(&token), "late text");
        assert_eq!(
            *table.calls.lock().unwrap(),
            ["insert_many", "get", "insert"]
        );
    }

    /// The index secret a [`CountingTable`] holds, unwrapped (tests compute slot names).
    fn index_of(table: &CountingTable) -> Zeroizing<[u8; 32]> {
        let keyring = TableKeyring::open(Box::new(table.clone()), &master()).unwrap();
        keyring.index.clone()
    }

    #[test]
    fn tokens_open_while_their_keys_exist_and_read_erased_after() {
        let dir = tempfile::tempdir().unwrap();
        let privacy = Privacy::open(dir.path(), &master()).unwrap();
        assert_eq!(privacy.known_user_token("alice").unwrap(), None);
        let alice = privacy.user_token("alice").unwrap();
        assert!(alice.starts_with(SEALED_PREFIX) && !alice.contains("alice"));
        assert_eq!(privacy.user_token("alice").unwrap(), alice);
        assert_eq!(
            privacy.known_user_token("alice").unwrap(),
            Some(alice.clone())
        );
        assert_ne!(privacy.user_token("bob").unwrap(), alice);
        let term = privacy
            .seal_text(&KeyId::Stream("s1".into()), "first platypus bank")
            .unwrap();
        let raw = privacy
            .seal_raw(
                &KeyId::Stream("s1".into()),
                20_000,
                r#"{"user":"alice","n":1}"#,
            )
            .unwrap();
        let other_day = privacy
            .seal_raw(&KeyId::Stream("s1".into()), 20_001, r#"{"n":2}"#)
            .unwrap();
        assert_eq!(alice.len(), sealed_text_len("alice".len()));
        assert_eq!(term.len(), sealed_text_len("first platypus bank".len()));
        assert_eq!(raw.len(), sealed_raw_len(r#"{"user":"alice","n":1}"#.len()));
        // A raw token names its day by a 32-bit number: a day past it is refused, not wrapped.
        assert!(matches!(
            privacy.seal_raw(&KeyId::Stream("s1".into()), i64::from(i32::MAX) + 1, "{}"),
            Err(KeyError::DayOutOfRange(day)) if day == i64::from(i32::MAX) + 1
        ));
        assert_eq!(privacy.show(&alice), "alice");
        assert_eq!(privacy.show(&term), "first platypus bank");
        assert_eq!(privacy.show("plain text"), "plain text");
        assert_eq!(
            privacy.open_text(&raw),
            Opened::Raw(r#"{"user":"alice","n":1}"#.into())
        );
        let mut value = serde_json::json!({"user": alice, "raw": raw, "list": [term, 3]});
        privacy.show_value(&mut value);
        assert_eq!(
            value,
            serde_json::json!({"user": "alice", "raw": {"user": "alice", "n": 1},
                "list": ["first platypus bank", 3]})
        );
        // Retention: the day's key gone, that day's payloads read erased, the next day's not.
        privacy.destroy(&[KeyId::Day(20_000)]).unwrap();
        assert_eq!(privacy.open_text(&raw), Opened::Erased);
        assert_eq!(
            privacy.open_text(&other_day),
            Opened::Raw(r#"{"n":2}"#.into())
        );
        // Erasure: the user's and the session's keys gone.
        privacy
            .destroy(&[privacy.user_key("alice"), KeyId::Stream("s1".into())])
            .unwrap();
        assert_eq!(privacy.show(&alice), ERASED);
        assert_eq!(privacy.show(&term), ERASED);
        assert_eq!(privacy.open_text(&other_day), Opened::Erased);
        assert_eq!(privacy.known_user_token("alice").unwrap(), None);
        // The tokens kept in memory went with the key: alice seen again is a new user, whose
        // token opens, and the old one stays erased.
        let again = privacy.user_token("alice").unwrap();
        assert_ne!(again, alice);
        assert_eq!(privacy.show(&again), "alice");
        assert_eq!(privacy.show(&alice), ERASED);
        // A raw payload sealed again after its keys were destroyed is under new keys.
        let later = privacy
            .seal_raw(&KeyId::Stream("s1".into()), 20_001, r#"{"n":3}"#)
            .unwrap();
        assert_eq!(privacy.open_text(&later), Opened::Raw(r#"{"n":3}"#.into()));
        assert_eq!(privacy.open_text(&other_day), Opened::Erased);
    }

    #[test]
    fn the_user_tokens_kept_in_memory_are_bounded_and_the_same_as_made_afresh() {
        let dir = tempfile::tempdir().unwrap();
        let privacy = Privacy::open(dir.path(), &master()).unwrap();
        let first: Vec<String> = (0..MAX_CACHED_USERS + 10)
            .map(|n| privacy.user_token(&format!("user-{n}")).unwrap())
            .collect();
        assert!(privacy.recent().users.len() <= MAX_CACHED_USERS);
        // A second process (nothing in memory) makes the same tokens from the same keys.
        privacy.sync().unwrap();
        drop(privacy);
        let reopened = Privacy::open(dir.path(), &master()).unwrap();
        for n in [0, 1, MAX_CACHED_USERS / 2, MAX_CACHED_USERS + 9] {
            assert_eq!(reopened.user_token(&format!("user-{n}")).unwrap(), first[n]);
            assert_eq!(reopened.show(&first[n]), format!("user-{n}"));
        }
    }
}
