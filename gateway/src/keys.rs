//! API keys: `sr_` + the account id (16 hex digits) + a 256-bit random secret (64 hex
//! digits). The account id in the clear lets a future sharded ledger route a request by
//! its key alone; the secret makes the key unguessable. Only the SHA-256 of the whole
//! key text is ever stored.

use rand::RngCore;
use sha2::{Digest, Sha256};
use solrouter_ledger::{AccountId, HoldId, KeyHash};
use std::path::Path;
use subtle::ConstantTimeEq;

pub const KEY_PREFIX: &str = "sr_";
const ACCOUNT_HEX_LEN: usize = 16;
const SECRET_BYTES: usize = 32;
/// Length of a well-formed key: prefix, account id, secret.
pub const KEY_LEN: usize = KEY_PREFIX.len() + ACCOUNT_HEX_LEN + 2 * SECRET_BYTES;

/// A freshly minted key: the text is shown once to its owner, the hash goes to the ledger.
pub struct NewKey {
    pub text: String,
    pub hash: KeyHash,
}

/// Mints a key for `account` from the operating system's random source.
pub fn mint(account: AccountId) -> NewKey {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let text = format!("{KEY_PREFIX}{:016x}{}", account.0, hex::encode(secret));
    let hash = hash(&text);
    NewKey { text, hash }
}

/// The account a key claims and the hash to look it up by; `None` when the text cannot
/// be a key (wrong prefix, length or alphabet), so no lookup is wasted on it.
pub fn parse(text: &str) -> Option<(AccountId, KeyHash)> {
    let rest = text.strip_prefix(KEY_PREFIX)?;
    if text.len() != KEY_LEN || !rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let account = u64::from_str_radix(&rest[..ACCOUNT_HEX_LEN], 16).ok()?;
    Some((AccountId(account), hash(text)))
}

pub fn hash(text: &str) -> KeyHash {
    Sha256::digest(text.as_bytes()).into()
}

/// Compares two secrets in time independent of where they differ. Used for stored key
/// hashes and the admin token, so response timing reveals nothing about either.
pub fn secrets_equal(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && bool::from(left.ct_eq(right))
}

/// A random id that is never zero (zero reads as "unset" in logs and URLs). Ids must be
/// unique, not secret: the thread-local generator (a CSPRNG seeded from the OS) avoids
/// a system call per request.
pub fn random_u64() -> u64 {
    loop {
        let id = rand::thread_rng().next_u64();
        if id != 0 {
            return id;
        }
    }
}

/// A random 128-bit id (operation ids, sessions); see [`random_u64`].
pub fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    u128::from_le_bytes(bytes)
}

/// A fresh hold (generation) id for a request created at `created_ms`: the milliseconds
/// since the Unix epoch in its top 48 bits, 80 random bits below
/// ([`HoldId::time_ordered`]). The request history finds the record of such a hold by its
/// id alone (the record's key is its creation time and its hold) and appends its inserts;
/// 80 random bits keep ids unguessable and distinct across gateways, and the low 64 bits,
/// which routing seeds its spread with, stay uniform. The record must carry the same
/// `created_ms`.
pub fn fresh_hold(created_ms: u64) -> HoldId {
    HoldId::time_ordered(created_ms, random_u128())
}

/// A printable random token (used for a generated admin token).
pub fn random_token() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The secret kept in the file at `path`, or a new random one (`prefix` and 64 hex
/// digits) written there first, readable by its owner only, durably: dev mode's secrets
/// (session signing, payments webhook) survive restarts.
pub fn stored_secret(path: &Path, prefix: &str) -> std::io::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let secret = format!("{prefix}{}", random_token());
    solrouter_raft::write_durably(path, format!("{secret}\n").as_bytes())?;
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_ids_grow_with_time_and_differ_within_a_millisecond() {
        let now = 1_764_460_800_000;
        let (a, b) = (fresh_hold(now), fresh_hold(now));
        assert_ne!(a, b, "80 random bits tell two ids of one millisecond apart");
        assert_eq!((a.0 >> 80) as u64, now);
        assert_eq!(a.stamp_ms(), now);
        let later = fresh_hold(now + 1);
        assert!(later > a && later > b, "an id of a later millisecond sorts after");
    }

    #[test]
    fn minted_keys_parse_back() {
        let account = AccountId(0x0123_4567_89ab_cdef);
        let key = mint(account);
        assert_eq!(key.text.len(), KEY_LEN);
        assert!(key.text.starts_with("sr_0123456789abcdef"));
        assert_eq!(parse(&key.text), Some((account, key.hash)));
    }

    #[test]
    fn rejects_malformed_keys() {
        let good = mint(AccountId(7)).text;
        for bad in [
            String::new(),
            "sr_".to_string(),
            good.replacen("sr_", "sk_", 1),
            good[..KEY_LEN - 1].to_string(),
            format!("{good}0"),
            good.to_uppercase().replacen("SR_", "sr_", 1),
            format!("{}é", &good[..KEY_LEN - 2]),
        ] {
            assert_eq!(parse(&bad), None, "{bad}");
        }
    }

    #[test]
    fn compares_secrets() {
        assert!(secrets_equal(b"abc", b"abc"));
        assert!(!secrets_equal(b"abc", b"abd"));
        assert!(!secrets_equal(b"abc", b"abcd"));
    }
}
