//! Credentials: `authorization: Basic …` metadata and argon2 password hashes.
//!
//! Hashing and verifying are deliberately slow, so they run on the blocking
//! pool. Every failure is reported with one message, whichever part was wrong.

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

/// Whether `secret` matches `phc_hash`. A malformed hash never matches.
pub async fn verify_secret(secret: String, phc_hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&phc_hash)
            .map(|hash| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
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
}
