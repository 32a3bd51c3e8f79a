//! Password hashing: Argon2id for every new hash, bcrypt only to verify (and then replace) the
//! legacy hashes of the system callmeback replaces.
//!
//! Why here and not in the Worker: a memory-hard hash is meant to be expensive (tens of
//! milliseconds of one core and 19 MiB per hash), far beyond a Worker's CPU budget. The gateway is
//! native and unmetered, and it is the only place that sees password hashes at all: they never
//! cross the wire, not even to the Worker.
//!
//! Parameters follow the OWASP Password Storage Cheat Sheet for Argon2id: m = 19 MiB
//! ([`ARGON2_M_COST_KIB`]), t = 2 ([`ARGON2_T_COST`]), p = 1 ([`ARGON2_P_COST`]), with a 16-byte
//! random salt. A stored hash carries its own parameters (PHC string format), so verification
//! works for any of them and [`verify_password`] reports when a hash should be replaced: every
//! bcrypt hash, and Argon2id hashes made with other parameters.
//!
//! Hashing runs on tokio's blocking threads, at most one per core at a time: each hash needs its
//! own 19 MiB, so an unbounded flood of logins must queue, and a request that cannot get a slot
//! within [`HASH_SLOT_WAIT`] is shed with `overloaded` (503) instead of exhausting memory.
//!
//! Timing: a login for an unknown account is verified against a fixed dummy hash with the
//! current parameters, so "no such account" costs the same as "wrong password".

use std::num::NonZeroUsize;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::RngCore as _;
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::statement::params::BoundParam;

/// Argon2id memory cost in KiB (19 MiB, OWASP's first recommended configuration).
pub const ARGON2_M_COST_KIB: u32 = 19_456;
/// Argon2id iterations.
pub const ARGON2_T_COST: u32 = 2;
/// Argon2id lanes.
pub const ARGON2_P_COST: u32 = 1;
/// Salt length in bytes (the PHC recommendation).
const SALT_LEN: usize = 16;
/// Longest a request waits for a hashing slot before it is shed.
pub const HASH_SLOT_WAIT: Duration = Duration::from_secs(2);

/// Hashing failed for a reason that is not the password's fault (it cannot realistically happen
/// with fixed parameters; it exists so the failure is an error, not a panic).
#[derive(Debug, thiserror::Error)]
#[error("password hashing failed: {0}")]
pub struct HashError(String);

/// What a stored hash was, when a successful verification asks for it to be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LegacyScheme {
    /// A `$2a$`/`$2b$`/`$2y$` bcrypt hash from the replaced system.
    Bcrypt,
    /// An Argon2id hash made with parameters other than the current ones.
    Argon2idOtherParams,
}

impl LegacyScheme {
    /// The name recorded in the audit log.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Bcrypt => "bcrypt",
            Self::Argon2idOtherParams => "argon2id_other_params",
        }
    }
}

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Wrong password, no account, or a stored hash that cannot be read: all the same to the
    /// caller.
    Mismatch,
    /// The password is right.
    Match {
        /// A fresh Argon2id hash to store instead, when the stored one is outdated.
        upgrade: Option<(LegacyScheme, String)>,
    },
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_COST_KIB, ARGON2_T_COST, ARGON2_P_COST, None)
        .expect("invariant: the OWASP Argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a new password with Argon2id and a fresh random salt. Blocking: tens of milliseconds
/// of CPU; call it through [`hash_on_worker_thread`] from async code.
pub fn hash_password(plaintext: &str) -> Result<String, HashError> {
    let mut salt = [0u8; SALT_LEN];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|error| HashError(error.to_string()))?;
    argon2()
        .hash_password(plaintext.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| HashError(error.to_string()))
}

/// A hash of a random password nobody knows, with the current parameters: verifying against it
/// costs what verifying a real account costs, and never matches.
static DUMMY_HASH: LazyLock<String> = LazyLock::new(|| {
    let mut unguessable = [0u8; 32];
    rand::rng().fill_bytes(&mut unguessable);
    hash_password(&hex::encode(unguessable))
        .expect("invariant: hashing with fixed valid parameters and a fresh salt succeeds")
});

/// Checks `plaintext` against `stored` (`None`: the account does not exist, so a dummy hash is
/// verified for equal timing and the answer is [`Verdict::Mismatch`]). Blocking; comparisons are
/// constant-time inside both libraries. A matching legacy hash comes back with its replacement.
pub fn verify_password(plaintext: &str, stored: Option<&str>) -> Result<Verdict, HashError> {
    let Some(stored) = stored else {
        // The result is irrelevant; the work is the point.
        let _ = verify_argon2(plaintext, &DUMMY_HASH);
        return Ok(Verdict::Mismatch);
    };
    let legacy = if is_bcrypt(stored) {
        // A stored hash that does not parse is a mismatch, never an error the client can see.
        if !bcrypt::verify(plaintext, stored).unwrap_or(false) {
            return Ok(Verdict::Mismatch);
        }
        Some(LegacyScheme::Bcrypt)
    } else {
        match verify_argon2(plaintext, stored) {
            Some(true) => None,
            Some(false) => Some(LegacyScheme::Argon2idOtherParams),
            None => return Ok(Verdict::Mismatch),
        }
    };
    let upgrade = match legacy {
        Some(scheme) => Some((scheme, hash_password(plaintext)?)),
        None => None,
    };
    Ok(Verdict::Match { upgrade })
}

fn is_bcrypt(stored: &str) -> bool {
    ["$2a$", "$2b$", "$2y$"]
        .iter()
        .any(|prefix| stored.starts_with(prefix))
}

/// `Some(uses_current_params)` when `plaintext` matches the Argon2id hash `stored`, `None` when it
/// does not (or `stored` is not a readable Argon2id hash).
fn verify_argon2(plaintext: &str, stored: &str) -> Option<bool> {
    let parsed = PasswordHash::new(stored).ok()?;
    if parsed.algorithm != argon2::ARGON2ID_IDENT {
        return None;
    }
    // Verification uses the parameters recorded in the hash, not the current ones.
    argon2()
        .verify_password(plaintext.as_bytes(), &parsed)
        .ok()?;
    let params = Params::try_from(&parsed).ok()?;
    Some(
        params.m_cost() == ARGON2_M_COST_KIB
            && params.t_cost() == ARGON2_T_COST
            && params.p_cost() == ARGON2_P_COST
            && parsed.version == Some(Version::V0x13.into()),
    )
}

/// One slot per core: hashing is CPU-bound, so more would only add memory, not throughput.
static HASHING_SLOTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
    Arc::new(Semaphore::new(cores))
});

/// Runs `work` on a blocking thread once a hashing slot is free. The slot is held by the thread,
/// not the request, so a caller that goes away does not free it while the hash still runs.
async fn on_hashing_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, HashError> + Send + 'static,
) -> Result<T, ApiError> {
    let permit = tokio::time::timeout(HASH_SLOT_WAIT, HASHING_SLOTS.clone().acquire_owned())
        .await
        .map_err(|_| {
            ApiError::Overloaded(format!(
                "no password hashing slot became free within {} ms",
                HASH_SLOT_WAIT.as_millis()
            ))
        })?
        .map_err(|_| ApiError::Internal("the password hashing slots are closed".to_owned()))?;
    let result = tokio::task::spawn_blocking(move || {
        let result = work();
        drop(permit);
        result
    })
    .await
    .map_err(|error| ApiError::Internal(format!("password hashing task failed: {error}")))?;
    result.map_err(|error| ApiError::Internal(error.to_string()))
}

/// [`hash_password`] off the async threads.
pub(crate) async fn hash_on_worker_thread(plaintext: String) -> Result<String, ApiError> {
    on_hashing_thread(move || hash_password(&plaintext)).await
}

/// [`verify_password`] off the async threads.
pub(crate) async fn verify_on_worker_thread(
    plaintext: String,
    stored: Option<String>,
) -> Result<Verdict, ApiError> {
    on_hashing_thread(move || verify_password(&plaintext, stored.as_deref())).await
}

/// Replaces every [`ParamType::NewPassword`](crate::statement::ParamType::NewPassword) value with its
/// Argon2id hash, so the statement binds the hash and never the plaintext.
pub(crate) async fn hash_new_passwords(params: &mut [BoundParam<'_>]) -> Result<(), ApiError> {
    for param in params.iter_mut() {
        if let BoundParam::NewPassword(plaintext) = param {
            let hash = hash_on_worker_thread(plaintext.expose().to_owned()).await?;
            *param = BoundParam::PasswordHash(hash);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::statement::params::Plaintext;

    #[test]
    fn new_hashes_are_argon2id_with_owasp_parameters_and_fresh_salts() {
        let first = hash_password("correct horse battery").unwrap();
        let second = hash_password("correct horse battery").unwrap();
        assert!(
            first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "every hash has its own salt");
        assert!(!first.contains("correct horse"));
    }

    #[test]
    fn current_argon2id_hashes_verify_without_upgrade() {
        let stored = hash_password("correct horse battery").unwrap();
        assert_eq!(
            verify_password("correct horse battery", Some(&stored)).unwrap(),
            Verdict::Match { upgrade: None }
        );
        assert_eq!(
            verify_password("correct horse batterY", Some(&stored)).unwrap(),
            Verdict::Mismatch
        );
    }

    #[test]
    fn bcrypt_hashes_verify_and_come_back_with_an_argon2id_replacement() {
        // Cost 4 keeps the test fast; the verifier reads the cost from the hash.
        for stored in [
            bcrypt::hash("legacy password 1", 4).unwrap(),
            bcrypt::hash_with_result("legacy password 1", 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoA),
            bcrypt::hash_with_result("legacy password 1", 4)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY),
        ] {
            let Verdict::Match {
                upgrade: Some((scheme, replacement)),
            } = verify_password("legacy password 1", Some(&stored)).unwrap()
            else {
                panic!("bcrypt hash {} did not verify", &stored[..4]);
            };
            assert_eq!(scheme, LegacyScheme::Bcrypt);
            assert!(replacement.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
            assert_eq!(
                verify_password("legacy password 1", Some(&replacement)).unwrap(),
                Verdict::Match { upgrade: None }
            );
            assert_eq!(
                verify_password("legacy password 2", Some(&stored)).unwrap(),
                Verdict::Mismatch
            );
        }
    }

    #[test]
    fn argon2id_hashes_with_other_parameters_are_upgraded() {
        let weak = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8 * 1024, 1, 1, None).unwrap(),
        );
        let salt = SaltString::encode_b64(&[7u8; SALT_LEN]).unwrap();
        let stored = weak
            .hash_password(b"tuned long ago", &salt)
            .unwrap()
            .to_string();
        let Verdict::Match {
            upgrade: Some((scheme, replacement)),
        } = verify_password("tuned long ago", Some(&stored)).unwrap()
        else {
            panic!("weak argon2id hash did not verify");
        };
        assert_eq!(scheme, LegacyScheme::Argon2idOtherParams);
        assert!(replacement.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[test]
    fn unknown_accounts_and_unreadable_hashes_are_plain_mismatches() {
        assert_eq!(
            verify_password("anything at all", None).unwrap(),
            Verdict::Mismatch
        );
        for stored in ["", "$2b$12$short", "$argon2id$garbage", "plaintext"] {
            assert_eq!(
                verify_password("anything at all", Some(stored)).unwrap(),
                Verdict::Mismatch,
                "{stored}"
            );
        }
        assert!(DUMMY_HASH.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
    }

    #[tokio::test]
    async fn new_password_params_are_replaced_by_their_hash() {
        let plaintext = String::from("a brand new password");
        let mut params = vec![
            BoundParam::Text("usr_1"),
            BoundParam::NewPassword(Plaintext::for_test(&plaintext)),
        ];
        hash_new_passwords(&mut params).await.unwrap();
        assert!(matches!(params[0], BoundParam::Text("usr_1")));
        let BoundParam::PasswordHash(hash) = &params[1] else {
            panic!("password was not hashed: {:?}", params[1]);
        };
        assert_eq!(
            verify_password("a brand new password", Some(hash)).unwrap(),
            Verdict::Match { upgrade: None }
        );
    }
}
