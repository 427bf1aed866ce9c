//! Passwords (argon2id, hashed off the async runtime) and the login attempt limiter.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Password length bounds (bytes). The upper bound keeps a hash's cost bounded.
pub const PASSWORD_BYTES_MIN: usize = 10;
pub const PASSWORD_BYTES_MAX: usize = 128;

/// The window failed logins are counted in, and how many it allows per email and per
/// client address. Counted per gateway, in memory: through N gateways an attacker gets
/// at most N times as many attempts per window (and a restart forgets the counts).
pub const LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
pub const LOGIN_FAILURES_PER_EMAIL_MAX: u32 = 5;
pub const LOGIN_FAILURES_PER_ADDRESS_MAX: u32 = 20;
/// Emails and addresses tracked at once; when full of live windows, logins of untracked
/// ones are refused (fail closed) until windows expire.
pub const LOGIN_TRACKED_MAX: usize = 100_000;

/// The argon2id PHC string of `password` (the crate's defaults: m = 19 MiB, t = 2, p = 1,
/// OWASP's recommendation). CPU-bound for tens of milliseconds: runs on a blocking thread.
pub async fn hash_password(password: String) -> Result<String, String> {
    let hashing = tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|hash| hash.to_string())
            .map_err(|error| error.to_string())
    });
    hashing.await.map_err(|error| error.to_string())?
}

/// Whether `password` matches the PHC string `stored`; with `None` (no such user) it
/// checks against a fixed hash, so an unknown email takes as long as a wrong password.
pub async fn verify_password(password: String, stored: Option<String>) -> bool {
    let checking = tokio::task::spawn_blocking(move || {
        let stored = stored.unwrap_or_else(|| unknown_user_hash().to_owned());
        let Ok(parsed) = PasswordHash::new(&stored) else { return false };
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok()
    });
    checking.await.unwrap_or(false)
}

/// A hash no password is known to match, made once.
fn unknown_user_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        let secret = crate::keys::random_token();
        Argon2::default().hash_password(secret.as_bytes(), &salt).expect("hashing").to_string()
    })
}

/// What is counted: an email (lower-case) or a client address.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    Email(String),
    Address(IpAddr),
}

impl Subject {
    fn allowed(&self) -> u32 {
        match self {
            Subject::Email(_) => LOGIN_FAILURES_PER_EMAIL_MAX,
            Subject::Address(_) => LOGIN_FAILURES_PER_ADDRESS_MAX,
        }
    }
}

struct Window {
    started: Instant,
    failures: u32,
}

/// Failed logins per email and per address, in fixed windows of [`LOGIN_WINDOW`].
#[derive(Default)]
pub struct LoginLimiter {
    windows: Mutex<HashMap<Subject, Window>>,
}

impl LoginLimiter {
    /// `None` if every subject may try now, else how long until the first that may not
    /// can try again.
    pub fn check(&self, subjects: &[Subject]) -> Option<Duration> {
        let mut windows = self.windows.lock().expect("login limiter lock poisoned");
        let now = Instant::now();
        windows.retain(|_, window| now.duration_since(window.started) < LOGIN_WINDOW);
        subjects
            .iter()
            .filter_map(|subject| match windows.get(subject) {
                Some(window) if window.failures >= subject.allowed() => {
                    Some(LOGIN_WINDOW.saturating_sub(now.duration_since(window.started)))
                }
                Some(_) => None,
                None if windows.len() >= LOGIN_TRACKED_MAX => Some(LOGIN_WINDOW),
                None => None,
            })
            .max()
    }

    /// Counts a failed login against each subject.
    pub fn failed(&self, subjects: &[Subject]) {
        let mut windows = self.windows.lock().expect("login limiter lock poisoned");
        for subject in subjects {
            if windows.len() >= LOGIN_TRACKED_MAX && !windows.contains_key(subject) {
                continue;
            }
            let window = windows
                .entry(subject.clone())
                .or_insert(Window { started: Instant::now(), failures: 0 });
            window.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_verify_against_their_hash_only() {
        let hash = hash_password("correct horse battery".into()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password("correct horse battery".into(), Some(hash.clone())).await);
        assert!(!verify_password("wrong horse battery".into(), Some(hash)).await);
        assert!(!verify_password("correct horse battery".into(), None).await);
        assert!(!verify_password("x".into(), Some("not a hash".into())).await);
    }

    #[test]
    fn failures_are_limited_per_email_and_per_address() {
        let limiter = LoginLimiter::default();
        let email = Subject::Email("a@example.com".into());
        let address = Subject::Address("127.0.0.1".parse().unwrap());
        let both = [email.clone(), address.clone()];
        for _ in 0..LOGIN_FAILURES_PER_EMAIL_MAX {
            assert_eq!(limiter.check(&both), None);
            limiter.failed(&both);
        }
        assert!(limiter.check(&both).is_some());
        // The address alone may still try other emails, up to its own limit.
        let left = LOGIN_FAILURES_PER_ADDRESS_MAX - LOGIN_FAILURES_PER_EMAIL_MAX;
        for n in 0..left {
            let other = [Subject::Email(format!("{n}@example.com")), address.clone()];
            assert_eq!(limiter.check(&other), None);
            limiter.failed(&other);
        }
        assert!(limiter.check(&[address]).is_some());
    }
}
