//! The gateway's ledger client: the only module that submits ledger commands or reads
//! ledger state. Everything money-related in the gateway goes through [`Bank`], which
//! talks either to a ledger node in this process (dev mode) or to a remote, sharded
//! cluster (gateway mode); nothing outside this file knows which.

use crate::error::ApiError;
use crate::keys;
use crate::telemetry::{LedgerWaits, ModelCharges};
use foldhash::HashMap;
use http::header::AUTHORIZATION;
use http::HeaderMap;
use sha2::{Digest, Sha256};
use solrouter_ledger::{
    Account, AccountId, Audit, Command, HoldId, Key, KeyHash, KeyId, KeyKind, KeyLimits, KeyUpdate,
    Op, OpId, Outcome, PicoUsd, Rejection, Reply, RequestRecord, Role, SessionId, TopUpView, User,
    UserId,
};
use solrouter_raft::{
    Consistency, HistoryPage, HistoryQuery, LedgerApi, LedgerClient, LedgerError, LedgerHandle,
    LedgerNode, UsageQuery, UsageRow,
};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The header Anthropic's SDKs send their key in (OpenAI's send `Authorization`).
pub const API_KEY_HEADER: &str = "x-api-key";

/// How long a hold outlives the request's total upstream timeout (its time-to-live is
/// the sum; the ledger stamps the expiry with the leader's clock).
pub const HOLD_GRACE: Duration = Duration::from_secs(120);
/// The overall deadline of one settle or release, every retry included. Well inside the
/// hold's life, so a settle that is still trying finds its hold; one that arrives later
/// anyway (a reply lost, a ledger outage) is still safe: the ledger charges it within the
/// account's funds, exactly once, and refuses a retry after it has forgotten the hold
/// (`Rejection::HoldForgotten`) rather than charge it again.
pub const SETTLE_DEADLINE: Duration = Duration::from_secs(30);
const SETTLE_BACKOFF_FIRST: Duration = Duration::from_millis(100);
const SETTLE_BACKOFF_MAX: Duration = Duration::from_secs(2);
const _: () = assert!(SETTLE_DEADLINE.as_millis() < HOLD_GRACE.as_millis() / 2);
// A retry must find the ledger still remembering its first outcome, twice over (so a new
// leader whose clock runs ahead cannot shorten the window below the retries). Settles and
// releases (retried until `SETTLE_DEADLINE`) and reserves (retried by the ledger client
// until `CLIENT_CALL_DEADLINE`) are deduplicated by their hold, which the ledger remembers
// for its life and `HOLDS_REMEMBERED_FOR_MS` past its end; every other operation but
// top-ups (remembered for the account's life) by op id, submitted once and retried by the
// ledger client only.
const _: () =
    assert!(solrouter_ledger::HOLDS_REMEMBERED_FOR_MS as u128 >= 2 * SETTLE_DEADLINE.as_millis());
const _: () = assert!(
    solrouter_ledger::HOLDS_REMEMBERED_FOR_MS as u128
        >= 2 * solrouter_raft::CLIENT_CALL_DEADLINE.as_millis()
);
const _: () = assert!(
    solrouter_ledger::OPS_REMEMBERED_FOR_MS as u128
        >= 2 * solrouter_raft::CLIENT_CALL_DEADLINE.as_millis()
);
// Every hold's time-to-live (the longest request plus the grace) is one the ledger takes.
const _: () = assert!(
    crate::config::TIMEOUT_MS_CEILING + HOLD_GRACE.as_millis() as u64
        <= solrouter_ledger::HOLD_TTL_MS_MAX
);
/// How long a gateway of a remote cluster trusts a key it looked up: a revocation reaches
/// every gateway within this (DESIGN.md §4: about a second), and a busy key costs one
/// ledger read per second instead of one per request. Money does not wait for it: the
/// ledger refuses a reserve with a revoked key at once.
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(1);
/// Keys cached at once (~100 bytes each); a flood of distinct keys empties the cache
/// rather than growing it.
pub const KEY_CACHE_ENTRIES_MAX: usize = 65_536;

/// The caller of an authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub key: KeyId,
    pub kind: KeyKind,
}

/// Which keys an endpoint takes ([`Bank::authenticate_for`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUse {
    /// Requests that spend (completions, embeddings): inference keys only.
    Inference,
    /// Key management: management keys only.
    Management,
    /// The account's own data (credits, history, the calling key): either kind.
    Read,
}

/// What a settle the ledger applied charged, and what it wrote off as the operator's
/// loss (usage beyond what the account had).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    pub charged: PicoUsd,
    pub written_off: PicoUsd,
}

/// A handle to the ledger, cheap to clone.
#[derive(Clone)]
pub struct Bank {
    /// A node in this process (dev mode) or a cluster reached over gRPC (gateway mode):
    /// both answer the same calls with the same meaning.
    ledger: LedgerHandle,
    /// Found keys, in gateway mode only: a local node answers as fast as a cache would.
    key_cache: Option<Arc<KeyCache>>,
    waits: Arc<LedgerWaits>,
    /// What settles charged and wrote off, by model.
    charges: Arc<ModelCharges>,
}

impl Bank {
    /// A bank over the single-node ledger of dev mode, in this process. Its one replica
    /// has applied every acknowledged command, so its local reads are already current.
    pub fn new(node: LedgerNode) -> Bank {
        let waits = Arc::new(LedgerWaits::register());
        let charges = Arc::default();
        Bank { ledger: LedgerHandle::Local(node), key_cache: None, waits, charges }
    }

    /// The ledger node in this process, in dev mode: its gauges go on the gateway's
    /// `/metrics` (a cluster's nodes serve their own).
    pub fn local_node(&self) -> Option<&LedgerNode> {
        match &self.ledger {
            LedgerHandle::Local(node) => Some(node),
            LedgerHandle::Remote(_) => None,
        }
    }

    /// A bank over a remote ledger cluster.
    pub fn remote(client: LedgerClient) -> Bank {
        Bank {
            ledger: LedgerHandle::Remote(client),
            key_cache: Some(Arc::new(KeyCache::default())),
            waits: Arc::new(LedgerWaits::register()),
            charges: Arc::default(),
        }
    }

    /// Submits one command; a ledger that cannot answer (within the ledger client's
    /// deadline) becomes a 503 with `Retry-After`. Every `Op` the gateway submits is built
    /// in this file, by the typed operations below, with its op-id policy.
    async fn submit(&self, id: OpId, op: Op) -> Result<Outcome, ApiError> {
        let context = op_name(&op);
        let command = Command { id, op };
        self.ledger.submit(command).await.map_err(|error| ApiError::ledger(context, error))
    }

    pub async fn create_account(
        &self,
        account: AccountId,
        name: String,
    ) -> Result<Outcome, ApiError> {
        self.submit(OpId(keys::random_u128()), Op::CreateAccount { account, name }).await
    }

    /// An account whose id and operation id derive from the caller's idempotency key, so
    /// a retry of the call names the same account and, while the ledger remembers the
    /// operation, answers the first reply; later it is refused as `AccountExists`.
    pub async fn create_account_once(
        &self,
        idempotency_key: &str,
        name: String,
    ) -> Result<(AccountId, Outcome), ApiError> {
        let (account, op) = account_ids(idempotency_key);
        Ok((account, self.submit(op, Op::CreateAccount { account, name }).await?))
    }

    /// A top-up, one ledger operation however often it is retried: its op id derives from
    /// the account and the caller's idempotency key, and the ledger remembers an account's
    /// top-ups for the account's life, so it credits once.
    pub async fn credit(
        &self,
        account: AccountId,
        amount: PicoUsd,
        idempotency_key: &str,
    ) -> Result<Outcome, ApiError> {
        let id = credit_op_id(account, idempotency_key);
        self.submit(id, Op::Credit { account, amount }).await
    }

    pub async fn create_key(
        &self,
        account: AccountId,
        key: KeyId,
        name: String,
        hash: KeyHash,
        kind: KeyKind,
        limits: KeyLimits,
    ) -> Result<Outcome, ApiError> {
        let op = Op::CreateKey { account, key, name, hash, kind, limits };
        self.submit(OpId(keys::random_u128()), op).await
    }

    /// Renames, disables or enables a key of `account`, or changes its limits. A gateway
    /// that cached the key may still authenticate it for up to [`KEY_CACHE_TTL`]; the
    /// ledger applies a disable or a new limit to every reserve from now on.
    pub async fn update_key(
        &self,
        account: AccountId,
        key: KeyId,
        update: KeyUpdate,
    ) -> Result<Outcome, ApiError> {
        self.submit(OpId(keys::random_u128()), Op::UpdateKey { account, key, update }).await
    }

    pub async fn revoke_key(&self, account: AccountId, key: KeyId) -> Result<Outcome, ApiError> {
        self.submit(OpId(keys::random_u128()), Op::RevokeKey { account, key }).await
    }

    /// A dashboard user of `account`, in the user directory; `email` lower-case.
    pub async fn create_user(
        &self,
        user: UserId,
        account: AccountId,
        email: String,
        password_hash: String,
        role: Role,
    ) -> Result<Outcome, ApiError> {
        let op = Op::CreateUser { user, account, email, password_hash, role };
        self.submit(OpId(keys::random_u128()), op).await
    }

    /// Ends a dashboard session on every gateway: the ledger remembers it until
    /// `until_ms` (ledger time), when its tokens have expired.
    pub async fn revoke_session(
        &self,
        account: AccountId,
        session: SessionId,
        until_ms: u64,
    ) -> Result<Outcome, ApiError> {
        let op = Op::RevokeSession { account, session, until_ms };
        self.submit(OpId(keys::random_u128()), op).await
    }

    /// Reads below are linearizable: they see every command acknowledged before they
    /// started.
    pub async fn account(&self, account: AccountId) -> Result<Option<Account>, ApiError> {
        self.ledger
            .account(account, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    pub async fn key(&self, key: KeyId) -> Result<Option<Key>, ApiError> {
        self.ledger
            .key(key, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// Key `key` if it is `account`'s (one read of the account's group).
    pub async fn key_of(&self, account: AccountId, key: KeyId) -> Result<Option<Key>, ApiError> {
        self.ledger
            .key_of(account, key, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// Every key of `account`, revoked ones included, by id.
    pub async fn keys(&self, account: AccountId) -> Result<Vec<(KeyId, Key)>, ApiError> {
        self.ledger
            .keys(account, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// The top-ups of `account`, oldest first.
    pub async fn top_ups(&self, account: AccountId) -> Result<Vec<TopUpView>, ApiError> {
        let found = self.ledger.top_ups(account, Consistency::Linearizable).await;
        found.map_err(|error| ApiError::ledger("read", error))
    }

    pub async fn user(&self, user: UserId) -> Result<Option<User>, ApiError> {
        let found = self.ledger.user(user, Consistency::Linearizable).await;
        found.map_err(|error| ApiError::ledger("read", error))
    }

    /// The user of a lower-case email.
    pub async fn user_by_email(&self, email: &str) -> Result<Option<(UserId, User)>, ApiError> {
        let found = self.ledger.user_by_email(email.to_owned(), Consistency::Linearizable).await;
        found.map_err(|error| ApiError::ledger("read", error))
    }

    /// The users of `account`.
    pub async fn members(&self, account: AccountId) -> Result<Vec<(UserId, User)>, ApiError> {
        let found = self.ledger.members(account, Consistency::Linearizable).await;
        found.map_err(|error| ApiError::ledger("read", error))
    }

    /// Whether a session was revoked: linearizable, so a logout acknowledged on any
    /// gateway is seen by every later check on every gateway.
    pub async fn session_revoked(
        &self,
        account: AccountId,
        session: SessionId,
    ) -> Result<bool, ApiError> {
        let found = self.ledger.session_revoked(account, session, Consistency::Linearizable).await;
        found.map_err(|error| ApiError::ledger("read", error))
    }

    /// The record of the request `hold` paid for, if `account` made it.
    pub async fn record(
        &self,
        account: AccountId,
        hold: HoldId,
    ) -> Result<Option<RequestRecord>, ApiError> {
        self.ledger
            .record(account, hold, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// A page of an account's request history, newest first.
    pub async fn history(&self, query: HistoryQuery) -> Result<HistoryPage, ApiError> {
        self.ledger
            .history(query, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// An account's usage per bucket, key and model.
    pub async fn usage(&self, query: UsageQuery) -> Result<Vec<UsageRow>, ApiError> {
        self.ledger
            .usage(query, Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("read", error))
    }

    /// The bank check over every account.
    pub async fn audit(&self) -> Result<Audit, ApiError> {
        self.ledger
            .audit(Consistency::Linearizable)
            .await
            .map_err(|error| ApiError::ledger("audit", error))
    }

    /// Succeeds when every part of the ledger has a leader that a quorum confirms.
    pub async fn ready(&self) -> Result<(), ApiError> {
        self.ledger.ready().await.map_err(|error| ApiError::ledger("readiness", error))
    }

    /// Holds `amount` for request `hold` of `caller`, for `ttl` from when the ledger
    /// applies it. The ledger refuses a revoked or unknown key (`KeyRevoked`,
    /// `UnknownKey`) and an amount above the balance. When no answer arrives the reserve
    /// may still have been applied: it is released, so the money is not held until expiry.
    pub async fn reserve(
        &self,
        caller: Caller,
        hold: HoldId,
        amount: PicoUsd,
        ttl: Duration,
    ) -> Result<Outcome, ApiError> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        let op = Op::Reserve { account: caller.account, key: caller.key, hold, amount, ttl_ms };
        let started = Instant::now();
        let outcome = self.submit(OpId(keys::random_u128()), op).await;
        self.waits.reserve.record(started.elapsed());
        outcome.inspect_err(|_| {
            self.release(caller.account, hold);
        })
    }

    /// Authenticates an inference key ([`KeyUse::Inference`]): the requests that spend.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.authenticate_for(headers, KeyUse::Inference).await
    }

    /// Authenticates the customer's key, sent as `Authorization: Bearer sr_…` (OpenAI's
    /// SDKs) or `x-api-key: sr_…` (Anthropic's), for `usage`: a key of another kind is
    /// a 403, a revoked or disabled one a 401. In gateway mode a key found less
    /// than [`KEY_CACHE_TTL`] ago is trusted; a miss is a linearizable read, which sees
    /// every revocation acknowledged before it, so a revocation is final on every gateway
    /// within [`KEY_CACHE_TTL`] however far a replica lags (and at once for money: the
    /// ledger refuses a reserve with a revoked or disabled key).
    pub async fn authenticate_for(
        &self,
        headers: &HeaderMap,
        usage: KeyUse,
    ) -> Result<Caller, ApiError> {
        let text = match (headers.get(AUTHORIZATION), headers.get(API_KEY_HEADER)) {
            (Some(authorization), _) => authorization
                .to_str()
                .ok()
                .and_then(|text| text.strip_prefix("Bearer "))
                .map(str::trim)
                .ok_or_else(|| ApiError::unauthorized("malformed Authorization header"))?,
            (None, Some(api_key)) => api_key
                .to_str()
                .map(str::trim)
                .map_err(|_| ApiError::unauthorized("malformed x-api-key header"))?,
            (None, None) => {
                return Err(ApiError::unauthorized(
                    "missing API key: send `Authorization: Bearer sr_…` or `x-api-key: sr_…`",
                ))
            }
        };
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
                if found.disabled {
                    return Err(ApiError::unauthorized("API key is disabled"));
                }
                match (usage, found.kind) {
                    (KeyUse::Inference, KeyKind::Management) => Err(ApiError::forbidden(
                        "a management key cannot make requests; use an inference key",
                    )),
                    (KeyUse::Management, KeyKind::Inference) => Err(ApiError::forbidden(
                        "managing keys takes a management key (or a dashboard session)",
                    )),
                    _ => Ok(Caller { account: claimed, key: found.key, kind: found.kind }),
                }
            }
            _ => Err(ApiError::unauthorized("invalid API key")),
        }
    }

    /// One read; only a found key is cached (a missing one may be created a moment
    /// later). Remote: linearizable, at least as new as any acknowledged revocation.
    /// Local (dev mode's single node): its applied state already is.
    async fn look_up_key(
        &self,
        account: AccountId,
        hash: KeyHash,
    ) -> Result<Option<CachedKey>, ApiError> {
        let consistency = match self.ledger {
            LedgerHandle::Local(_) => Consistency::Stale,
            LedgerHandle::Remote(_) => Consistency::Linearizable,
        };
        let found = self
            .ledger
            .key_by_hash(account, hash, consistency)
            .await
            .map_err(|error| ApiError::ledger("authentication", error))?;
        let Some((key, entry)) = found else { return Ok(None) };
        let found = CachedKey {
            key,
            account: entry.account,
            hash: entry.hash,
            revoked: entry.revoked,
            disabled: entry.disabled,
            kind: entry.kind,
            fetched: Instant::now(),
        };
        if let Some(cache) = &self.key_cache {
            cache.put(hash, found);
        }
        Ok(Some(found))
    }

    /// Settles a hold, reserved at ledger stamp `reserved_at_ms` (its `Reserved` reply's),
    /// with the request's record: the ledger charges `actual` within the account's funds
    /// and writes off the rest (counted by model on `/metrics`, as answered). Retried with
    /// the same operation id (a retry after a lost reply applies once) until
    /// [`SETTLE_DEADLINE`]. Yields what was charged, or `None` if the ledger refused it or
    /// the deadline passed. The caller must run it to its end even when its client is gone
    /// (the pipeline awaits it in the request's detached work, `pipeline::detached`, and
    /// hands it to a task of its own if it outlasts the client's wait).
    pub async fn settle(
        &self,
        account: AccountId,
        hold: HoldId,
        reserved_at_ms: u64,
        actual: PicoUsd,
        record: RequestRecord,
    ) -> Option<Settled> {
        let flags = [
            (record.usage_estimated, "solrouter_usage_estimated_total"),
            (record.usage_clamped, "solrouter_usage_clamped_total"),
            (record.waived, "solrouter_waived_total"),
        ];
        let model = record.model.clone();
        let op = Op::Settle { account, hold, actual, record, reserved_at_ms };
        let started = Instant::now();
        let reply = self.finish(op).await;
        self.waits.settle.record(started.elapsed());
        let Reply::Settled { charged, written_off, .. } = reply? else {
            tracing::error!(hold = hold.0, "a settle answered with another reply");
            return None;
        };
        for (flag, counter) in flags {
            if flag {
                metrics::counter!(counter).increment(1);
            }
        }
        self.charges.record(&model, charged.0, written_off.0);
        if written_off > PicoUsd::ZERO {
            tracing::warn!(hold = hold.0, %written_off, "usage beyond the balance written off");
        }
        Some(Settled { charged, written_off })
    }

    /// Voids a hold that incurred no upstream cost, retrying like [`Bank::settle`].
    pub fn release(&self, account: AccountId, hold: HoldId) -> tokio::task::JoinHandle<()> {
        let bank = self.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            bank.finish(Op::Release { account, hold }).await;
            bank.waits.release.record(started.elapsed());
        })
    }

    /// Submits a settle or release under one op id until it is answered or
    /// [`SETTLE_DEADLINE`] passes. `None` when it was refused or never answered.
    async fn finish(&self, op: Op) -> Option<Reply> {
        let id = OpId(keys::random_u128());
        let deadline = tokio::time::Instant::now() + SETTLE_DEADLINE;
        let mut backoff = SETTLE_BACKOFF_FIRST;
        loop {
            let command = Command { id, op: op.clone() };
            let error = match tokio::time::timeout_at(deadline, self.ledger.submit(command)).await {
                Ok(Ok(Ok(reply))) => return Some(reply),
                // A defensive release of a hold that was never made (its reserve failed)
                // or is already gone (expired, settled): nothing to do.
                Ok(Ok(Err(Rejection::UnknownHold))) if matches!(op, Op::Release { .. }) => {
                    return None
                }
                // A settle of a hold the ledger has forgotten: an earlier attempt of this
                // one settled it (its reply lost) longer ago than the ledger remembers, so
                // nothing more is charged. The deadlines make it unreachable; counted.
                Ok(Ok(Err(Rejection::HoldForgotten))) if matches!(op, Op::Settle { .. }) => {
                    metrics::counter!("solrouter_settles_forgotten_total").increment(1);
                    tracing::warn!(?op, "settle of a forgotten hold refused: already settled");
                    return None;
                }
                // A full idempotency window applied nothing: try again.
                Ok(Ok(Err(rejection @ Rejection::Overloaded))) => {
                    LedgerError::Unavailable { reason: rejection.to_string() }
                }
                Ok(Ok(Err(rejection))) => {
                    // A rejection is final: retrying the same op gets the same answer.
                    metrics::counter!("solrouter_settle_failures_total").increment(1);
                    tracing::error!(?op, %rejection, "ledger rejected a settle/release");
                    return None;
                }
                Ok(Err(error)) if error.is_retryable() => error,
                Ok(Err(error)) => {
                    metrics::counter!("solrouter_settle_failures_total").increment(1);
                    tracing::error!(?op, %error, "settle/release failed for good");
                    return None;
                }
                Err(_elapsed) => LedgerError::Timeout(SETTLE_DEADLINE),
            };
            if tokio::time::Instant::now() + backoff >= deadline {
                metrics::counter!("solrouter_settle_failures_total").increment(1);
                tracing::error!(?op, %error, "settle/release out of time; it may still apply");
                return None;
            }
            metrics::counter!("solrouter_settle_retries_total").increment(1);
            tracing::warn!(%error, "settle/release failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(SETTLE_BACKOFF_MAX);
        }
    }
}

/// What authentication needs of a key, and when the ledger said so.
#[derive(Clone, Copy)]
struct CachedKey {
    key: KeyId,
    account: AccountId,
    hash: KeyHash,
    revoked: bool,
    disabled: bool,
    kind: KeyKind,
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
        Op::UpdateKey { .. } => "update key",
        Op::CreateUser { .. } => "create user",
        Op::RevokeSession { .. } => "revoke session",
    }
}

/// The operation id of a top-up: a hash of the account and the caller's idempotency
/// key, so a retried top-up is the same ledger operation and applies once.
fn credit_op_id(account: AccountId, idempotency_key: &str) -> OpId {
    let parts = [&account.0.to_be_bytes()[..], idempotency_key.as_bytes()];
    let digest = keyed_digest(b"solrouter credit\0", &parts);
    OpId(u128::from_be_bytes(digest[..16].try_into().expect("16 bytes")))
}

/// The account id and operation id of an account created under `idempotency_key`.
fn account_ids(idempotency_key: &str) -> (AccountId, OpId) {
    let digest = keyed_digest(b"solrouter account\0", &[idempotency_key.as_bytes()]);
    let (id, op) = digest.split_at(8);
    let account = AccountId(u64::from_be_bytes(id.try_into().expect("8 bytes")));
    (account, OpId(u128::from_be_bytes(op[..16].try_into().expect("16 bytes"))))
}

/// The SHA-256 of `domain` then `parts`: what ids derived from a caller's idempotency
/// key are cut from, so every retry of a call derives the same ones. Never to change:
/// a retry that reaches a newer build must still name the same operation.
fn keyed_digest(domain: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new().chain_update(domain);
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// Milliseconds since the Unix epoch, for record timestamps. The ledger never reads a
/// clock: a hold's expiry is stamped by the leader.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(text: &str) -> PicoUsd {
        PicoUsd::parse_usd(text).unwrap()
    }

    #[test]
    fn credit_ids_depend_on_account_and_key() {
        let (first, second) = (AccountId(1), AccountId(2));
        assert_eq!(credit_op_id(first, "a"), credit_op_id(first, "a"));
        assert_ne!(credit_op_id(first, "a"), credit_op_id(second, "a"));
        assert_ne!(credit_op_id(first, "a"), credit_op_id(first, "b"));
    }

    /// The money path of one request through the bank, against dev mode's ledger: a
    /// settle beyond the funds charges what there is and reports the write-off; a revoked
    /// key is refused by authentication and by the ledger's reserve alike; each reserve,
    /// settle and release's wait is measured.
    #[tokio::test]
    async fn settles_within_the_funds_and_refuses_revoked_keys() {
        let dir = tempfile::tempdir().unwrap();
        let node = LedgerNode::open_single(dir.path()).await.unwrap();
        let recorder = crate::telemetry::prometheus_builder().build_recorder();
        let metrics = recorder.handle();
        let bank = metrics::with_local_recorder(&recorder, || Bank::new(node));
        let account = AccountId(keys::random_u64());
        let caller = Caller { account, key: KeyId(keys::random_u64()), kind: KeyKind::Inference };
        bank.create_account(account, "t".into()).await.unwrap().unwrap();
        bank.credit(account, usd("1.00"), "first").await.unwrap().unwrap();
        let retried = bank.credit(account, usd("1.00"), "first").await.unwrap();
        assert_eq!(retried, Ok(Reply::Credited { credits: usd("1.00") }), "credited once");
        let minted = keys::mint(account);
        let (kind, limits) = (KeyKind::Inference, KeyLimits::default());
        let created = bank.create_key(account, caller.key, "k".into(), minted.hash, kind, limits);
        created.await.unwrap().unwrap();
        let mut bearer = HeaderMap::new();
        bearer.insert(AUTHORIZATION, format!("Bearer {}", minted.text).parse().unwrap());
        assert_eq!(bank.authenticate(&bearer).await.unwrap(), caller);
        let mut api_key = HeaderMap::new();
        api_key.insert(API_KEY_HEADER, minted.text.parse().unwrap());
        assert_eq!(bank.authenticate(&api_key).await.unwrap(), caller);

        let (hold, ttl) = (HoldId(keys::random_u128()), Duration::from_secs(60));
        let reserved = bank.reserve(caller, hold, usd("0.60"), ttl).await.unwrap();
        let Ok(Reply::Reserved { reserved_at_ms, .. }) = reserved else { panic!("{reserved:?}") };
        let created_ms = now_ms();
        let record =
            RequestRecord { key: Some(caller.key), created_ms, ..RequestRecord::default() };
        let settled = bank.settle(account, hold, reserved_at_ms, usd("1.50"), record).await;
        assert_eq!(settled, Some(Settled { charged: usd("1.00"), written_off: usd("0.50") }));
        let state = bank.account(account).await.unwrap().unwrap();
        assert_eq!((state.available(), state.written_off), (0, usd("0.50")));
        let kept = bank.record(account, hold).await.unwrap().unwrap();
        assert_eq!((kept.cost, kept.written_off), (usd("1.00"), usd("0.50")));

        bank.revoke_key(account, caller.key).await.unwrap().unwrap();
        let refused = bank.authenticate(&bearer).await.unwrap_err();
        assert_eq!(refused.status(), http::StatusCode::UNAUTHORIZED);
        let hold = HoldId(keys::random_u128());
        let reserved = bank.reserve(caller, hold, PicoUsd::ZERO, ttl).await.unwrap();
        assert_eq!(reserved, Err(Rejection::KeyRevoked));
        bank.release(account, hold).await.unwrap();
        assert!(bank.audit().await.unwrap().ok);
        let text = metrics.render();
        for (op, count) in [("reserve", 2), ("settle", 1), ("release", 1)] {
            let line = format!("solrouter_ledger_wait_seconds_count{{op=\"{op}\"}} {count}");
            assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
        }
    }

    /// Ids derived from idempotency keys are part of the contract with every client that
    /// retries: a top-up retried across an upgrade must name the same operation.
    #[test]
    fn ids_derived_from_idempotency_keys_never_change() {
        let op = credit_op_id(AccountId(0x0123_4567_89ab_cdef), "topup-1");
        assert_eq!(op, OpId(0x4d9f_0498_f4d3_9253_9c99_297c_e0e0_01c1));
        assert_eq!(account_ids("acme-signup").0, AccountId(0xa73c_51c3_5c50_0f82));
    }
}
