//! The gateway's ledger client: the only module that submits ledger commands or reads
//! ledger state. Everything money-related in the gateway goes through [`Bank`], so the
//! later move from an in-process ledger node to a remote, sharded cluster changes this
//! file and no other.

use crate::error::ApiError;
use crate::keys;
use solrouter_ledger::{
    AccountId, Command, HoldId, KeyId, Ledger, Op, OpId, Outcome, PicoUsd, Rejection, RequestRecord,
};
use solrouter_raft::LedgerNode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The caller of an authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub account: AccountId,
    pub key: KeyId,
}

/// A handle to the ledger, cheap to clone.
#[derive(Clone)]
pub struct Bank {
    node: LedgerNode,
}

impl Bank {
    pub fn new(node: LedgerNode) -> Bank {
        Bank { node }
    }

    pub fn node(&self) -> &LedgerNode {
        &self.node
    }

    /// Submits one command; a ledger that cannot answer becomes a 503.
    pub async fn submit(&self, id: OpId, op: Op) -> Result<Outcome, ApiError> {
        let context = op_name(&op);
        self.node.submit(Command { id, op }).await.map_err(|error| ApiError::ledger(context, error))
    }

    /// A linearizable read: sees every command acknowledged before it started.
    pub async fn read<R>(&self, read: impl FnOnce(&Ledger) -> R) -> Result<R, ApiError> {
        self.node.read(read).await.map_err(|error| ApiError::ledger("read", error))
    }

    /// Authenticates an `Authorization` header value. Reads the local state, not a
    /// linearizable read: on the single node of dev mode the local state already holds
    /// every acknowledged revocation, and a Raft round per request would double latency.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, ApiError> {
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
        let found = self.node.read_local(|ledger| {
            ledger.key_by_hash(&hash).map(|(id, key)| (id, key.account, key.hash, key.revoked))
        });
        match found {
            Some((key, account, stored, revoked))
                if account == claimed && keys::secrets_equal(&stored, &hash) =>
            {
                if revoked {
                    return Err(ApiError::unauthorized("API key has been revoked"));
                }
                Ok(Caller { account, key })
            }
            _ => Err(ApiError::unauthorized("invalid API key")),
        }
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
                match bank.node.submit(Command { id, op: op.clone() }).await {
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
