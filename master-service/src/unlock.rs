//! Unlocking the sync preferences: the authorisation code buys a short-lived
//! token that every change must carry as `x-unlock-token` metadata.
//!
//! Only a SHA-256 hash of each token is stored (a token is 240 random bits, so
//! a fast hash is enough; a stolen table yields no usable token). A token is
//! bound to the operator who unlocked: another operator cannot use it.
//! Wrong codes are answered ever more slowly per source address (in this
//! process; replicas each keep their own count), on top of argon2's own cost.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};
use storesync_shared::domain::entities::unlock_token;
use storesync_shared::domain::validate::now_ms;
use storesync_shared::kit::auth;

use crate::error::{Error, Result};
use crate::settings;

/// Metadata key of the unlock token.
pub const TOKEN_METADATA: &str = "x-unlock-token";
/// How long a token works.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Length of a token in characters of [`auth::generate_secret`]'s alphabet.
const TOKEN_LEN: usize = 42;

const MISSING_TOKEN: &str = "sync preferences are locked: call AdminService.Unlock with the \
     authorisation code and send the returned token as `x-unlock-token` metadata";
const BAD_TOKEN: &str = "the unlock token is invalid or has expired: call AdminService.Unlock \
     again and send the new token as `x-unlock-token` metadata";
const WRONG_CODE: &str = "wrong authorisation code";

/// An issued token: give `token` to the caller, store only its hash.
#[derive(Debug)]
pub struct Issued {
    pub token: String,
    pub expires_at_ms: i64,
}

/// Hex SHA-256 of a token, as stored.
fn token_hash(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Checks `code` against the stored authorisation code and, when it matches,
/// issues a token for `actor` (also purging expired tokens).
pub async fn unlock<C: ConnectionTrait>(db: &C, actor: &str, code: &str) -> Result<Issued> {
    if code.is_empty() {
        return Err(Error::invalid("authorisation_code", "must not be empty"));
    }
    let Some(hash) = settings::get(db, settings::AUTHORISATION_CODE_HASH).await? else {
        return Err(Error::internal("no authorisation code is stored"));
    };
    if !auth::verify_secret(code.to_owned(), hash).await {
        return Err(Error::permission_denied(WRONG_CODE));
    }
    let now = now_ms();
    unlock_token::Entity::delete_many()
        .filter(unlock_token::Column::ExpiresAtMs.lte(now))
        .exec(db)
        .await?;
    let token = auth::generate_secret(TOKEN_LEN);
    let lifetime_ms = i64::try_from(TOKEN_LIFETIME.as_millis()).unwrap_or(i64::MAX);
    let expires_at_ms = now.saturating_add(lifetime_ms);
    unlock_token::Entity::insert(unlock_token::ActiveModel {
        token_hash: Set(token_hash(&token)),
        actor: Set(actor.to_owned()),
        expires_at_ms: Set(expires_at_ms),
    })
    .exec_without_returning(db)
    .await?;
    Ok(Issued {
        token,
        expires_at_ms,
    })
}

/// Requires a valid, unexpired token of `actor` in `metadata`.
pub async fn require<C: ConnectionTrait>(
    db: &C,
    metadata: &tonic::metadata::MetadataMap,
    actor: &str,
) -> Result<()> {
    let Some(value) = metadata.get(TOKEN_METADATA) else {
        return Err(Error::permission_denied(MISSING_TOKEN));
    };
    let token = value
        .to_str()
        .map_err(|_| Error::permission_denied(BAD_TOKEN))?
        .trim();
    let found = unlock_token::Entity::find_by_id(token_hash(token))
        .one(db)
        .await?;
    match found {
        Some(row) if row.expires_at_ms > now_ms() && row.actor == actor => Ok(()),
        _ => Err(Error::permission_denied(BAD_TOKEN)),
    }
}

/// Slows down repeated failures from one key (a source address for wrong
/// codes; a Sync ID or a source for wrong sync passwords): no delay for the
/// first failure, then 250 ms doubling to at most [`Throttle::MAX_DELAY`]. The
/// count is forgotten after a success or an hour without failures.
pub struct Throttle<K = Option<IpAddr>> {
    failures: Mutex<HashMap<K, (u32, Instant)>>,
}

impl<K> Default for Throttle<K> {
    fn default() -> Self {
        Self {
            failures: Mutex::new(HashMap::new()),
        }
    }
}

impl Throttle {
    /// Longest delay before answering.
    pub const MAX_DELAY: Duration = Duration::from_secs(8);
    const FORGET_AFTER: Duration = Duration::from_secs(3600);

    /// The delay after `failures` consecutive failures.
    pub fn delay_after(failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << failures.saturating_sub(1).min(8);
        (Duration::from_millis(250) * factor).min(Self::MAX_DELAY)
    }
}

impl<K: Eq + std::hash::Hash> Throttle<K> {
    /// How long to wait before checking what `key` sends.
    pub fn delay(&self, key: K) -> Duration {
        let Ok(failures) = self.failures.lock() else {
            return Throttle::MAX_DELAY;
        };
        match failures.get(&key) {
            Some((count, last)) if last.elapsed() < Throttle::FORGET_AFTER => {
                Throttle::delay_after(*count)
            }
            _ => Duration::ZERO,
        }
    }

    /// Counts a failure of `key`; returns how many in a row it has now.
    pub fn failed(&self, key: K) -> u32 {
        let Ok(mut failures) = self.failures.lock() else {
            return 0;
        };
        // Keep the map small: drop keys that have been quiet long enough.
        failures.retain(|_, (_, last)| last.elapsed() < Throttle::FORGET_AFTER);
        let entry = failures.entry(key).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        entry.1 = Instant::now();
        entry.0
    }

    /// Forgets the failures of `key` after a success.
    pub fn succeeded(&self, key: K) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_are_capped() {
        assert_eq!(Throttle::delay_after(0), Duration::ZERO);
        assert_eq!(Throttle::delay_after(1), Duration::from_millis(250));
        assert_eq!(Throttle::delay_after(2), Duration::from_millis(500));
        assert_eq!(Throttle::delay_after(30), Throttle::MAX_DELAY);
        let throttle = Throttle::default();
        let source = Some(IpAddr::from([127, 0, 0, 1]));
        assert_eq!(throttle.delay(source), Duration::ZERO);
        throttle.failed(source);
        throttle.failed(source);
        assert_eq!(throttle.delay(source), Duration::from_millis(500));
        assert_eq!(throttle.delay(None), Duration::ZERO);
        throttle.succeeded(source);
        assert_eq!(throttle.delay(source), Duration::ZERO);
    }

    #[test]
    fn tokens_are_stored_as_sha256_hex() {
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
