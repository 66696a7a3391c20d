//! Credentials: `authorization: Basic …` metadata and argon2 password hashes.
//!
//! Hashing and verifying are deliberately slow (argon2id: tens of
//! milliseconds of a core and 19 MiB each), so they run on the blocking pool,
//! at most [`HASHING_AT_ONCE`] at a time: 63 satellites reconnecting together
//! must not take 63 × 19 MiB. A successful verification is remembered for
//! [`REMEMBER_VERIFIED`] under a keyed digest of the secret and the stored hash,
//! so a client that sends the same credentials with every call (grpcurl
//! loops, dashboards, status polls) pays the argon2 cost once, not per call;
//! failures are never remembered, so guessing stays slow. Every failure is
//! reported with one message, whichever part was wrong.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::Engine;

use crate::error::{Error, Result};

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

/// Hashes a secret with argon2id and a random salt (PHC string).
pub async fn hash_secret(secret: String) -> Result<String> {
    let _permit = hashing_permits()
        .acquire()
        .await
        .map_err(|e| Error::Internal(format!("hashing permits: {e}")))?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(secret.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|e| Error::Internal(format!("hashing a secret: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

/// Argon2 computations allowed at once in this process.
pub const HASHING_AT_ONCE: usize = 2;
/// How long a successful verification is remembered.
pub const REMEMBER_VERIFIED: std::time::Duration = std::time::Duration::from_secs(300);
/// Remembered verifications at most (the oldest half is dropped when full).
const REMEMBERED_AT_MOST: usize = 4096;

fn hashing_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(HASHING_AT_ONCE))
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
    let Ok(_permit) = hashing_permits().acquire().await else {
        return false;
    };
    let matches = tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc_hash)
            .map(|hash| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
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
}
