//! The gateway's ledger client: the only module that submits ledger commands or reads
//! ledger state. Everything money-related in the gateway goes through [`Bank`], which
//! talks either to a ledger node in this process (dev mode) or to a remote, sharded
//! cluster (gateway mode); nothing outside this file knows which.

use crate::error::ApiError;
use crate::keys;
use solrouter_ledger::{
    Account, AccountId, Audit, Command, HoldId, Key, KeyHash, KeyId, Op, OpId, Outcome, PicoUsd,
    Rejection, RequestRecord,
};
use solrouter_raft::{Consistency, LedgerClient, LedgerNode};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Attempts of one settle or release before giving up. With the backoff below the last
/// attempt happens ~25 s after the first: longer than a ledger leader election, shorter
/// than the hold's grace period, so a settle that gives up leaves a hold that expires
/// (the customer is never charged twice, at worst not charged).
pub const SETTLE_ATTEMPTS_MAX: u32 = 8;
const SETTLE_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const SETTLE_BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How long a hold outlives the request's total upstream timeout, to leave room for
/// every settle attempt above.
pub const HOLD_GRACE: Duration = Duration::from_secs(120);
const _: () = assert!(SETTLE_ATTEMPTS_MAX as u64 * SETTLE_BACKOFF_MAX.as_secs() < 120);
/// How long a gateway of a remote cluster trusts a key it looked up: a revocation reaches
/// every gateway within this (DESIGN.md §4: about a second), and a busy key costs one
/// ledger read per second instead of one per request.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Keys cached at once (~100 bytes each); a flood of distinct keys empties the cache
/// rather than growing it.
pub const KEY_CACHE_ENTRIES_MAX: usize = 65_536;

/// The caller of an authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub key: KeyId,
}

/// A handle to the ledger, cheap to clone.
#[derive(Clone)]
pub struct Bank {
    ledger: Backend,
    /// Found keys, in gateway mode only: a local node answers as fast as a cache would.
    key_cache: Option<Arc<KeyCache>>,
}

/// Where the ledger is. Both kinds answer the same calls with the same meaning.
#[derive(Clone)]
enum Backend {
    /// A node in this process (dev mode).
    Local(LedgerNode),
    /// A cluster of ledger nodes reached over gRPC (gateway mode).
    Remote(LedgerClient),
}

/// Makes the same call on whichever backend `bank` has.
macro_rules! on_ledger {
    ($bank:expr, $ledger:ident => $call:expr) => {
        match &$bank.ledger {
            Backend::Local($ledger) => $call,
            Backend::Remote($ledger) => $call,
        }
    };
}

impl Bank {
    /// A bank over a ledger node in this process.
    pub fn new(node: LedgerNode) -> Bank {
        Bank { ledger: Backend::Local(node), key_cache: None }
    }

    /// A bank over a remote ledger cluster.
    pub fn remote(client: LedgerClient) -> Bank {
        Bank { ledger: Backend::Remote(client), key_cache: Some(Arc::new(KeyCache::default())) }
    }

    /// Submits one command; a ledger that cannot answer becomes a 503.
    pub async fn submit(&self, id: OpId, op: Op) -> Result<Outcome, ApiError> {
        let context = op_name(&op);
        let command = Command { id, op };
        on_ledger!(self, ledger => ledger.submit(command).await)
            .map_err(|error| ApiError::ledger(context, error))
    }

    /// Reads below are linearizable: they see every command acknowledged before they
    /// started.
    pub async fn account(&self, account: AccountId) -> Result<Option<Account>, ApiError> {
        on_ledger!(self, ledger => ledger.account(account, Consistency::Linearizable).await)
            .map_err(|error| ApiError::ledger("read", error))
    }

    pub async fn key(&self, key: KeyId) -> Result<Option<Key>, ApiError> {
        on_ledger!(self, ledger => ledger.key(key, Consistency::Linearizable).await)
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// The record of the request `hold` paid for, if `account` made it.
    pub async fn record(
        &self,
        account: AccountId,
        hold: HoldId,
    ) -> Result<Option<RequestRecord>, ApiError> {
        on_ledger!(self, ledger => ledger.record(account, hold, Consistency::Linearizable).await)
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// The bank check over every account.
    pub async fn audit(&self) -> Result<Audit, ApiError> {
        on_ledger!(self, ledger => ledger.audit(Consistency::Linearizable).await)
            .map_err(|error| ApiError::ledger("audit", error))
    }

    /// Succeeds when every part of the ledger has a leader that a quorum confirms.
    pub async fn ready(&self) -> Result<(), ApiError> {
        on_ledger!(self, ledger => ledger.ready().await)
            .map_err(|error| ApiError::ledger("readiness", error))
    }

    /// Authenticates an `Authorization` header value. In gateway mode a key found less
    /// than [`KEY_CACHE_TTL`] ago is trusted, so a revocation reaches every gateway
    /// within that. Otherwise a possibly-stale read: any replica answers (in dev mode,
    /// this process's) without a Raft round. A key it does not know yet may have just been
    /// created through another gateway, so only a linearizable read may say "invalid key".
    pub async fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
        let header = authorization.ok_or_else(|| {
            ApiError::unauthorized("missing API key: send `Authorization: Bearer sr_…`")
        })?;
        let text = std::str::from_utf8(header)
            .ok()
            .and_then(|text| text.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?;
        let (claimed, hash) =
            keys::parse(text).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
        let cached = self.key_cache.as_ref().and_then(|cache| cache.get(&hash));
        let found = match cached {
            Some(found) => Some(found),
            None => self.look_up_key(claimed, hash).await?,
        };
        match found {
            Some(found) if found.account == claimed && keys::secrets_equal(&found.hash, &hash) => {
                if found.revoked {
                    return Err(ApiError::unauthorized("API key has been revoked"));
                }
                Ok(Caller { account: claimed, key: found.key })
            }
            _ => Err(ApiError::unauthorized("invalid API key")),
        }
    }

    /// A stale read first; only a linearizable one may say the key does not exist. Found
    /// keys are cached; misses are not (the key may be created a moment later).
    async fn look_up_key(
        &self,
        account: AccountId,
        hash: KeyHash,
    ) -> Result<Option<CachedKey>, ApiError> {
        for consistency in [Consistency::Stale, Consistency::Linearizable] {
            let found =
                on_ledger!(self, ledger => ledger.key_by_hash(account, hash, consistency).await)
                    .map_err(|error| ApiError::ledger("authentication", error))?;
            if let Some((key, entry)) = found {
                let found = CachedKey {
                    key,
                    account: entry.account,
                    hash: entry.hash,
                    revoked: entry.revoked,
                    fetched: Instant::now(),
                };
                if let Some(cache) = &self.key_cache {
                    cache.put(hash, found);
                }
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Settles a hold with the request's record, retrying with the same operation id, so
    /// a retry after a lost reply applies once. Runs as its own task: it completes even
    /// when the request that started it is gone.
    pub fn settle(
        &self,
        account: AccountId,
        hold: HoldId,
        actual: PicoUsd,
        record: RequestRecord,
    ) -> tokio::task::JoinHandle<()> {
        let op = Op::Settle { account, hold, actual, record };
        self.spawn_with_retries(op)
    }

    /// Voids a hold that incurred no upstream cost, retrying like [`Bank::settle`].
    pub fn release(&self, account: AccountId, hold: HoldId) -> tokio::task::JoinHandle<()> {
        self.spawn_with_retries(Op::Release { account, hold })
    }

    fn spawn_with_retries(&self, op: Op) -> tokio::task::JoinHandle<()> {
        let bank = self.clone();
        let id = OpId(keys::random_u128());
        tokio::spawn(async move {
            let mut backoff = SETTLE_BACKOFF_FIRST;
            for attempt in 1..=SETTLE_ATTEMPTS_MAX {
                let command = Command { id, op: op.clone() };
                match on_ledger!(bank, ledger => ledger.submit(command).await) {
                    Ok(Ok(_)) => return,
                    // A defensive release of a hold that was never made (its reserve
                    // failed) or is already gone (expired, settled): nothing to do.
                    Ok(Err(Rejection::UnknownHold)) if matches!(op, Op::Release { .. }) => return,
                    Ok(Err(rejection)) => {
                        // A rejection is final: retrying the same op gets the same answer.
                        metrics::counter!("solrouter_settle_failures_total").increment(1);
                        tracing::error!(?op, %rejection, "ledger rejected a settle/release");
                        return;
                    }
                    Err(error) if !error.is_retryable() => {
                        tracing::error!(?op, %error, "settle/release failed for good");
                        break;
                    }
                    Err(error) => {
                        metrics::counter!("solrouter_settle_retries_total").increment(1);
                        tracing::warn!(attempt, %error, "settle/release failed; retrying");
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(SETTLE_BACKOFF_MAX);
            }
            metrics::counter!("solrouter_settle_failures_total").increment(1);
            tracing::error!(?op, "settle/release gave up; the hold will expire");
        })
    }
}

/// What authentication needs of a key, and when the ledger said so.
#[derive(Clone, Copy)]
struct CachedKey {
    key: KeyId,
    account: AccountId,
    hash: KeyHash,
    revoked: bool,
    fetched: Instant,
}

#[derive(Default)]
struct KeyCache {
    entries: Mutex<HashMap<KeyHash, CachedKey>>,
}

impl KeyCache {
    fn get(&self, hash: &KeyHash) -> Option<CachedKey> {
        let entries = self.entries.lock().expect("key cache lock poisoned");
        entries.get(hash).copied().filter(|found| found.fetched.elapsed() < KEY_CACHE_TTL)
    }

    fn put(&self, hash: KeyHash, found: CachedKey) {
        let mut entries = self.entries.lock().expect("key cache lock poisoned");
        if entries.len() >= KEY_CACHE_ENTRIES_MAX {
            entries.clear();
        }
        entries.insert(hash, found);
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::CreateAccount { .. } => "create account",
        Op::Credit { .. } => "credit",
        Op::CreateKey { .. } => "create key",
        Op::RevokeKey { .. } => "revoke key",
        Op::Reserve { .. } => "reserve",
        Op::Settle { .. } => "settle",
        Op::Release { .. } => "release",
    }
}

/// Milliseconds since the Unix epoch, for hold expiry and record timestamps. The
/// ledger never reads a clock; the gateway stamps what it sends.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}
