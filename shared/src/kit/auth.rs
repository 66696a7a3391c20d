//! Credentials: `authorization: Basic …` metadata and argon2 password hashes.
//!
//! Hashing and verifying are deliberately slow (argon2id: tens of
//! milliseconds of a core and 19 MiB of working memory each), so they run on
//! the blocking pool, at most [`HASHING_AT_ONCE`] at a time: 63 satellites
//! reconnecting together must not take 63 × 19 MiB. A successful verification
//! is remembered for [`REMEMBER_VERIFIED`] under a keyed digest of the secret
//! and the stored hash, so a client that sends the same credentials with
//! every call (grpcurl loops, dashboards, status polls) pays the argon2 cost
//! once, not per call; failures are never remembered, so guessing stays slow.
//! Every failure is reported with one message, whichever part was wrong.
//!
//! # Ownership
//!
//! This module owns argon2's working memory ([`WorkingMemory`]): at most
//! [`HASHING_AT_ONCE`] buffers, reused from one check to the next while
//! checks keep coming (a burst of reconnecting satellites allocates two, not
//! sixty-three) and handed back to the system as soon as no check is running
//! or waiting, so an idle process holds none of it.
//!
//! # Invariant
//!
//! When no check is running or waiting, the pool is empty. Every buffer is
//! reserved large enough to be mapped on its own by the allocator, so
//! dropping it unmaps it (see [`RESERVED_BLOCKS_AT_LEAST`]).

use argon2::password_hash::{
    rand_core::OsRng, Output, ParamsString, PasswordHash, Salt, SaltString,
};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;

use crate::domain::error::{Error, Result};

/// The one message for every failed login, so a caller learns nothing about
/// which part was wrong.
pub const BAD_CREDENTIALS: &str = "invalid credentials: send `authorization: Basic base64(user:password)` with a valid user name and password";

/// A user name and password taken from request metadata.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    // Never print the password, even in debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Reads `authorization: Basic base64(user:password)` from metadata.
pub fn basic_credentials(metadata: &tonic::metadata::MetadataMap) -> Result<Credentials> {
    let unauth = || Error::Unauthenticated(BAD_CREDENTIALS.to_owned());
    let value = metadata
        .get("authorization")
        .ok_or_else(unauth)?
        .to_str()
        .map_err(|_| unauth())?;
    parse_basic(value).ok_or_else(unauth)
}

/// Parses the value of an `authorization` header (`Basic …`).
pub fn parse_basic(value: &str) -> Option<Credentials> {
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some(Credentials {
        user: user.to_owned(),
        password: password.to_owned(),
    })
}

/// The `authorization` header value for `user` and `password`.
pub fn basic_header(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// Hashes a secret with argon2id (the crate's default parameters) and a
/// random salt, as a PHC string; `argon2`'s own verifier accepts it.
pub async fn hash_secret(secret: String) -> Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::default(), Version::default(), params.clone());
    let salt_for_hash = salt.clone();
    let output =
        with_working_memory(params.block_count(), move |memory| {
            let mut buffer = [0u8; Salt::MAX_LENGTH];
            let salt_bytes = salt_for_hash.as_salt().decode_b64(&mut buffer)?;
            Output::init_with(Params::DEFAULT_OUTPUT_LEN, |out| {
                Ok(argon2.hash_password_into_with_memory(
                    secret.as_bytes(),
                    salt_bytes,
                    out,
                    memory,
                )?)
            })
        })
        .await?
        .map_err(|e| Error::Internal(format!("hashing a secret: {e}")))?;
    let hash = PasswordHash {
        algorithm: Algorithm::default().ident(),
        version: Some(Version::default().into()),
        params: ParamsString::try_from(&params)
            .map_err(|e| Error::Internal(format!("hashing a secret: {e}")))?,
        salt: Some(salt.as_salt()),
        hash: Some(output),
    };
    Ok(hash.to_string())
}

/// Argon2 computations allowed at once in this process, and so working
/// memory buffers at most.
pub const HASHING_AT_ONCE: usize = 2;
/// How long a successful verification is remembered.
pub const REMEMBER_VERIFIED: std::time::Duration = std::time::Duration::from_secs(300);
/// Remembered verifications at most (the oldest half is dropped when full).
const REMEMBERED_AT_MOST: usize = 4096;

fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(HASHING_AT_ONCE);
    &PERMITS
}

/// Blocks (of 1 KiB) every working memory buffer reserves at least: 33 MiB,
/// above 32 MiB, glibc's ceiling for its adaptive mmap threshold.
///
/// glibc raises that threshold to the size of each mapped block freed below
/// the ceiling, after which blocks of that size come from the threads' malloc
/// arenas and stay resident once freed; a master that had let 63 satellites
/// in once kept ~230 MiB that way. A reservation above the ceiling is always
/// mapped on its own, unmapped when dropped and never moves the threshold;
/// only the pages argon2 writes (19 MiB with the default parameters) are
/// ever resident. With another allocator it is merely a larger reservation.
pub const RESERVED_BLOCKS_AT_LEAST: usize = 33 * 1024;

/// Argon2 working memory: reused buffers, at most one per running check.
struct WorkingMemory {
    state: std::sync::Mutex<PoolState>,
}

struct PoolState {
    /// Checks running or waiting for a permit.
    wanted: usize,
    /// Buffers no check holds now (at most [`HASHING_AT_ONCE`]).
    free: Vec<Vec<Block>>,
}

impl WorkingMemory {
    fn get() -> &'static Self {
        static MEMORY: WorkingMemory = WorkingMemory {
            state: std::sync::Mutex::new(PoolState {
                wanted: 0,
                free: Vec::new(),
            }),
        };
        &MEMORY
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one more check as wanting memory, until the guard is dropped.
    fn want(&'static self) -> Wanted {
        self.state().wanted += 1;
        Wanted { pool: self }
    }
}

/// One check's claim on the pool: while any is alive the free buffers are
/// kept for the next check; the last one dropped frees them.
struct Wanted {
    pool: &'static WorkingMemory,
}

impl Wanted {
    /// A buffer of exactly `blocks` blocks, reused if one is free.
    fn take(&self, blocks: usize) -> Vec<Block> {
        let reused = self.pool.state().free.pop();
        let mut memory =
            reused.unwrap_or_else(|| Vec::with_capacity(blocks.max(RESERVED_BLOCKS_AT_LEAST)));
        // argon2 writes every block before reading it, so old contents are
        // harmless; only the pages written become resident.
        memory.resize(blocks, Block::default());
        memory
    }

    /// Returns `memory` to the pool for the next check.
    fn give_back(self, memory: Vec<Block>) {
        let mut state = self.pool.state();
        if state.free.len() < HASHING_AT_ONCE {
            state.free.push(memory);
        }
    }
}

impl Drop for Wanted {
    fn drop(&mut self) {
        let released = {
            let mut state = self.pool.state();
            state.wanted -= 1;
            if state.wanted == 0 {
                std::mem::take(&mut state.free)
            } else {
                Vec::new()
            }
        };
        // Unmapped outside the lock.
        drop(released);
    }
}

/// Runs `work` on the blocking pool with `blocks` blocks of working memory,
/// once a hashing permit is free. The permit and the claim on the pool move
/// into the blocking task, so a caller that goes away mid-check cannot let a
/// third computation (and a third buffer) start beside it.
async fn with_working_memory<T: Send + 'static>(
    blocks: usize,
    work: impl FnOnce(&mut [Block]) -> T + Send + 'static,
) -> Result<T> {
    let wanted = WorkingMemory::get().want();
    let permit = hashing_permits()
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("hashing permits: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut memory = wanted.take(blocks);
        let result = work(&mut memory);
        wanted.give_back(memory);
        result
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))
}

/// What checking a secret against a stored PHC string needs, read from it.
struct StoredHash {
    argon2: Argon2<'static>,
    blocks: usize,
    salt: Vec<u8>,
    expected: Output,
}

impl StoredHash {
    /// `None` for anything but a well-formed argon2 hash with salt and output.
    fn parse(phc_hash: &str) -> Option<Self> {
        let hash = PasswordHash::new(phc_hash).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
        let version = match hash.version {
            Some(version) => Version::try_from(version).ok()?,
            None => Version::default(),
        };
        let params = Params::try_from(&hash).ok()?;
        let mut buffer = [0u8; Salt::MAX_LENGTH];
        let salt = hash.salt?.decode_b64(&mut buffer).ok()?.to_vec();
        Some(Self {
            blocks: params.block_count(),
            argon2: Argon2::new(algorithm, version, params),
            salt,
            expected: hash.hash?,
        })
    }

    /// Whether `secret` hashes to the stored output (compared in constant
    /// time: `Output`'s equality is `subtle`'s).
    fn matches(&self, secret: &[u8], memory: &mut [Block]) -> bool {
        Output::init_with(self.expected.len(), |out| {
            Ok(self
                .argon2
                .hash_password_into_with_memory(secret, &self.salt, out, &mut *memory)?)
        })
        .is_ok_and(|computed| computed == self.expected)
    }
}

/// Successful verifications: digest of (process key, stored hash, secret) → when.
/// The stored hash is part of the digest, so a changed password or code
/// makes every remembered entry for the old one useless at once.
struct Verified {
    key: [u8; 32],
    seen: std::sync::Mutex<std::collections::HashMap<[u8; 32], std::time::Instant>>,
}

impl Verified {
    fn get() -> &'static Self {
        static VERIFIED: std::sync::OnceLock<Verified> = std::sync::OnceLock::new();
        VERIFIED.get_or_init(|| {
            use rand::RngCore;
            let mut key = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut key);
            Self {
                key,
                seen: std::sync::Mutex::new(std::collections::HashMap::new()),
            }
        })
    }

    fn digest(&self, secret: &str, phc_hash: &str) -> [u8; 32] {
        use sha2::Digest;
        let mut hasher = sha2::Sha256::new();
        hasher.update(self.key);
        hasher.update((phc_hash.len() as u64).to_le_bytes());
        hasher.update(phc_hash.as_bytes());
        hasher.update(secret.as_bytes());
        hasher.finalize().into()
    }

    fn remembered(&self, digest: &[u8; 32]) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.get(digest)
            .is_some_and(|at| at.elapsed() < REMEMBER_VERIFIED)
    }

    fn remember(&self, digest: [u8; 32]) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() >= REMEMBERED_AT_MOST {
            seen.retain(|_, at| at.elapsed() < REMEMBER_VERIFIED);
            if seen.len() >= REMEMBERED_AT_MOST {
                seen.clear();
            }
        }
        seen.insert(digest, std::time::Instant::now());
    }
}

/// Whether `secret` matches `phc_hash`. A malformed hash never matches.
pub async fn verify_secret(secret: String, phc_hash: String) -> bool {
    let verified = Verified::get();
    let digest = verified.digest(&secret, &phc_hash);
    if verified.remembered(&digest) {
        return true;
    }
    let Some(stored) = StoredHash::parse(&phc_hash) else {
        return false;
    };
    let matches = with_working_memory(stored.blocks, move |memory| {
        stored.matches(secret.as_bytes(), memory)
    })
    .await
    .unwrap_or(false);
    if matches {
        verified.remember(digest);
    }
    matches
}

/// A random secret of `len` characters from an unambiguous alphabet.
pub fn generate_secret(len: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_round_trip_keeps_colons_in_the_password() {
        let parsed = parse_basic(&basic_header("sync", "pa:ss")).expect("parses");
        assert_eq!(parsed.user, "sync");
        assert_eq!(parsed.password, "pa:ss");
        assert!(parse_basic("Bearer abc").is_none());
        assert!(parse_basic("Basic !!!").is_none());
    }

    #[tokio::test]
    async fn verify_accepts_the_secret_and_nothing_else() {
        let hash = hash_secret("right".into()).await.expect("hash");
        assert!(verify_secret("right".into(), hash.clone()).await);
        assert!(!verify_secret("wrong".into(), hash).await);
        assert!(!verify_secret("right".into(), "not a hash".into()).await);
    }

    #[tokio::test]
    async fn a_remembered_success_never_lets_another_secret_or_hash_in() {
        let hash = hash_secret("right".into()).await.expect("hash");
        assert!(verify_secret("right".into(), hash.clone()).await);
        // Remembered now; the same call again is answered from memory…
        let digest = Verified::get().digest("right", &hash);
        assert!(Verified::get().remembered(&digest));
        assert!(verify_secret("right".into(), hash.clone()).await);
        // …but a wrong secret is still checked, and still refused,
        assert!(!verify_secret("wrong".into(), hash.clone()).await);
        assert!(!verify_secret("righ".into(), hash.clone()).await);
        // and a changed stored hash (a new password) is checked afresh.
        let other = hash_secret("other".into()).await.expect("hash");
        assert!(!verify_secret("right".into(), other.clone()).await);
        assert!(verify_secret("other".into(), other).await);
        // Failures are never remembered.
        assert!(!Verified::get().remembered(&Verified::get().digest("wrong", &hash)));
    }
    #[tokio::test]
    async fn pooled_hashing_agrees_with_the_plain_argon2_api() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};

        // Made through the pool, checked through the pool and by argon2 itself.
        let pooled = hash_secret("right".into()).await.expect("hash");
        assert!(verify_secret("right".into(), pooled.clone()).await);
        assert!(!verify_secret("wrong".into(), pooled.clone()).await);
        let parsed = PasswordHash::new(&pooled).expect("a PHC string");
        assert!(Argon2::default().verify_password(b"right", &parsed).is_ok());
        assert!(Argon2::default()
            .verify_password(b"wrong", &parsed)
            .is_err());

        // Made by argon2 itself (default parameters), checked through the pool.
        let salt = SaltString::generate(&mut OsRng);
        let plain = Argon2::default()
            .hash_password(b"plain", &salt)
            .expect("hash")
            .to_string();
        assert!(verify_secret("plain".into(), plain.clone()).await);
        assert!(!verify_secret("plane".into(), plain).await);

        // Other parameters, algorithm and output length: smaller and larger
        // memory than the buffers already pooled, so they are resized.
        for (algorithm, m_cost, t_cost, p_cost, output_len) in [
            (Algorithm::Argon2id, 8 * 1024, 3, 2, 32),
            (Algorithm::Argon2i, 4 * 1024, 2, 1, 16),
            (Algorithm::Argon2d, 24 * 1024, 1, 1, 64),
        ] {
            let params = Params::new(m_cost, t_cost, p_cost, Some(output_len)).expect("params");
            let salt = SaltString::generate(&mut OsRng);
            let other = Argon2::new(algorithm, Version::V0x13, params)
                .hash_password(b"other", &salt)
                .expect("hash")
                .to_string();
            assert!(
                verify_secret("other".into(), other.clone()).await,
                "{other}"
            );
            assert!(!verify_secret("others".into(), other).await);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn working_memory_is_bounded_and_given_back_when_idle() {
        let hash = hash_secret("burst".into()).await.expect("hash");
        let checks: Vec<_> = (0..6)
            .map(|n| {
                let hash = hash.clone();
                // Distinct wrong secrets: never remembered, each one computed.
                tokio::spawn(verify_secret(format!("wrong {n}"), hash))
            })
            .collect();
        let mut most_free = 0;
        for check in checks {
            most_free = most_free.max(WorkingMemory::get().state().free.len());
            assert!(!check.await.expect("check task"));
        }
        assert!(most_free <= HASHING_AT_ONCE, "{most_free} buffers pooled");
        let state = WorkingMemory::get().state();
        assert!(
            state.wanted > 0 || state.free.is_empty(),
            "{} buffers kept with no check running",
            state.free.len()
        );
    }
}
