use crate::limits::{KeyLimits, KeySpend, KeyUpdate, LimitReset, MinuteWindow, RateLimit};
use crate::money::{PicoUsd, AMOUNT_MAX};
use crate::window::{Window, WARM_AT_ONCE};
use imbl::OrdSet;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

mod holds;
mod legacy;
mod packed;
use holds::Holds;
pub use legacy::{LedgerV7, LedgerV8};
use packed::PackedEnded;

/// The state's maps: persistent, keyed by ids and key digests, hashed with foldhash
/// (seeded per process, as std's SipHash is, for a fraction of its instructions). The one
/// map keyed by text a stranger chooses (`users_by_email`, filled by sign-ups) keeps
/// SipHash, whose keyed hash resists crafted collisions.
type HashMap<K, V> =
    imbl::GenericHashMap<K, V, foldhash::fast::RandomState, imbl::shared_ptr::DefaultSharedPtr>;

/// How long (in batch stamps) the ledger remembers an applied operation id, to answer a
/// retry with the first outcome: the op-id window, which holds only the rare operations
/// that have no key of their own to be deduplicated by (accounts, keys, users, sessions).
/// Top-ups are deduplicated by account and idempotency key for the account's life, and
/// reserves, settles and releases by their hold ([`HOLDS_REMEMBERED_FOR_MS`]), so a
/// request served takes no room here. Longer than every client's overall retry deadline,
/// which the crates that own those deadlines assert (`solrouter-gateway`'s `bank.rs`).
pub const OPS_REMEMBERED_FOR_MS: u64 = 60_000;
/// Most operation ids remembered at once: the window's memory bound (about 150 bytes each
/// in memory, ~600 MB at the bound; `docs/storage.md`). A group sustaining more than
/// `OPS_REMEMBERED_MAX / OPS_REMEMBERED_FOR_MS` (~70,000) new operations per second of the
/// window's kinds refuses the excess with [`Rejection::Overloaded`] rather than forget an
/// id early; requests (reserves, settles, releases) and top-ups never count against it.
pub const OPS_REMEMBERED_MAX: usize = 1 << 22;
/// How long (in batch stamps) an ended hold (settled, released or expired) is remembered
/// past its end, to answer a retried reserve, settle or release by the hold rather than by
/// op id: a retried reserve gets its first reply instead of a second hold, a retried
/// settle its first reply instead of a second charge. A live hold answers them for its
/// whole life. Every retry of an operation comes within the client's deadline of its first
/// attempt (asserted shorter than this in the gateway), which precedes the end, so the
/// window only has to outlast that deadline, not the hold's expiry: remembering holds
/// until their expiry kept ~12 minutes of requests in memory under `solrouter dev`
/// defaults instead of one. A settle of a forgotten hold (a caller retrying later than
/// that) is refused, [`Rejection::HoldForgotten`], not charged again: the ledger tells it
/// from a hold never reserved by the reserve's stamp it carries.
pub const HOLDS_REMEMBERED_FOR_MS: u64 = 60_000;
/// Top-ups remembered per account, for the account's life (a retried top-up credits
/// once, however late): 65,536 is a top-up every 10 minutes for over a year. Past it the
/// account's top-ups are refused with [`Rejection::TopUpsExhausted`].
pub const TOP_UPS_PER_ACCOUNT_MAX: usize = 1 << 16;
/// Longest a hold may live: a request's total timeout is far below this.
pub const HOLD_TTL_MS_MAX: u64 = 24 * 60 * 60 * 1000;
/// Upper bound of commands in one batch (one Raft entry).
pub const BATCH_COMMANDS_MAX: usize = 4096;
/// Upper bound on free-text fields (names, model ids) kept in the state.
pub const NAME_BYTES_MAX: usize = 256;
/// Keys an account may have over its life (revoked ones included: they stay, so that
/// their usage and history keep their name): the bound of one account's key state and
/// of a key listing. Past it, [`Rejection::KeysExhausted`].
pub const KEYS_PER_ACCOUNT_MAX: usize = 1024;
/// The shard key of every user operation: a user is looked up by email at login, before
/// its account is known, so the user directory lives in one group, this account id's (an
/// account of that id may exist too: users are kept apart from accounts).
pub const USER_DIRECTORY: AccountId = AccountId(0);
/// Longest email address kept (RFC 5321's path limit).
pub const EMAIL_BYTES_MAX: usize = 254;
/// Longest password hash kept: an argon2id PHC string is about 100 bytes.
pub const PASSWORD_HASH_BYTES_MAX: usize = 256;
/// Users (owner and members) per account.
pub const USERS_PER_ACCOUNT_MAX: usize = 64;
/// Longest a revoked dashboard session is remembered past the batch that revoked it:
/// no session lives longer (the gateway's session lifetime is asserted below it), so a
/// revocation is never forgotten while its session's tokens are still accepted.
pub const SESSION_REMEMBERED_FOR_MS_MAX: u64 = 31 * 24 * 60 * 60 * 1000;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty)) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub $inner);
    };
}
id_type!(
    /// A client-generated id of one mutating operation; the idempotency key.
    OpId(u128)
);
id_type!(
    /// An account, client-generated (random), so a gateway can route it to its shard
    /// before the account exists.
    AccountId(u64)
);
id_type!(
    /// An API key's public id.
    KeyId(u64)
);
id_type!(
    /// A hold; also the id of the request ("generation") it pays for.
    HoldId(u128)
);

impl HoldId {
    /// Bits below the creation millisecond in a time-ordered id ([`HoldId::time_ordered`]).
    pub const RANDOM_BITS: u32 = 80;

    /// An id that leads with `created_ms` (its low 48 bits) above the low 80 bits of
    /// `random`: ids that grow with time, as a gateway makes them, so the request history
    /// finds a record by its id alone and its inserts append. The ledger takes any id.
    pub fn time_ordered(created_ms: u64, random: u128) -> HoldId {
        let stamp = u128::from(created_ms) & ((1 << (128 - Self::RANDOM_BITS)) - 1);
        HoldId((stamp << Self::RANDOM_BITS) | (random & ((1 << Self::RANDOM_BITS) - 1)))
    }

    /// The millisecond a time-ordered id leads with (for any other id, its top 48 bits).
    pub fn stamp_ms(self) -> u64 {
        (self.0 >> Self::RANDOM_BITS) as u64
    }
}
id_type!(
    /// A person who logs in to the dashboard, client-generated (random).
    UserId(u64)
);
id_type!(
    /// A dashboard session, client-generated (random); its tokens carry it.
    SessionId(u128)
);

/// What a user may do in its account's dashboard.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Created the account; adds members.
    Owner,
    Member,
}

/// SHA-256 of an API key's secret text. The key itself is never stored.
pub type KeyHash = [u8; 32];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: OpId,
    pub op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    CreateAccount {
        account: AccountId,
        name: String,
    },
    /// A top-up.
    Credit {
        account: AccountId,
        amount: PicoUsd,
    },
    CreateKey {
        account: AccountId,
        key: KeyId,
        name: String,
        hash: KeyHash,
        kind: KeyKind,
        limits: KeyLimits,
    },
    RevokeKey {
        account: AccountId,
        key: KeyId,
    },
    /// Admitted only if `key` is a live key of `account` and `amount ≤ available`. The
    /// hold expires `ttl_ms` after the stamp of the batch that applies it: one clock, the
    /// leader's, for every hold.
    Reserve {
        account: AccountId,
        key: KeyId,
        hold: HoldId,
        amount: PicoUsd,
        ttl_ms: u64,
    },
    /// Voids the hold (if it is this account's and still pending), then charges
    /// `min(actual, available)` and writes the rest off as the operator's loss, so
    /// `available` never goes below zero; records the request. A record marked
    /// [`RequestRecord::waived`] is charged nothing: all of `actual` is written off. A
    /// hold settled before answers with its first reply, whatever the op id. A hold the
    /// ledger does not know is charged by the same rule (a reserve the ledger does not
    /// have: what a client received is billed) only while it cannot have ended and been
    /// forgotten, i.e. until [`HOLDS_REMEMBERED_FOR_MS`] past `reserved_at_ms`; later it
    /// is refused, [`Rejection::HoldForgotten`], charging nothing: a settle retried that
    /// late repeats one applied long ago.
    Settle {
        account: AccountId,
        hold: HoldId,
        actual: PicoUsd,
        record: RequestRecord,
        /// The ledger stamp the hold was reserved at, as its [`Reply::Reserved`] said.
        reserved_at_ms: u64,
    },
    /// Voids a hold that incurred no upstream cost.
    Release {
        account: AccountId,
        hold: HoldId,
    },
    /// Renames, disables or enables a live key of `account`, or changes its limits
    /// (every field of `update` that is set). A revoked key cannot be changed.
    UpdateKey {
        account: AccountId,
        key: KeyId,
        update: KeyUpdate,
    },
    /// A dashboard user of `account` (sign-up makes the owner, the owner adds members),
    /// with its lower-case email and its password's argon2id hash (a PHC string). Kept in
    /// the user directory ([`USER_DIRECTORY`]'s group), not the account's: the account's
    /// existence is checked by the gateway, which creates it first.
    CreateUser {
        user: UserId,
        account: AccountId,
        email: String,
        password_hash: String,
        role: Role,
    },
    /// Ends a dashboard session of `account` on every gateway: remembered until the batch
    /// stamp reaches `until_ms` (when its tokens expire anyway, plus a margin for clocks),
    /// at most [`SESSION_REMEMBERED_FOR_MS_MAX`] past the stamp that applies it.
    RevokeSession {
        account: AccountId,
        session: SessionId,
        until_ms: u64,
    },
}

impl Op {
    /// The account this operation touches; the shard key.
    pub fn account(&self) -> AccountId {
        match self {
            Op::CreateAccount { account, .. }
            | Op::Credit { account, .. }
            | Op::CreateKey { account, .. }
            | Op::RevokeKey { account, .. }
            | Op::Reserve { account, .. }
            | Op::Settle { account, .. }
            | Op::Release { account, .. }
            | Op::UpdateKey { account, .. }
            | Op::RevokeSession { account, .. } => *account,
            Op::CreateUser { .. } => USER_DIRECTORY,
        }
    }

    /// A reserve, settle or release is answered again by its hold, not by op id: a live
    /// hold, and for [`HOLDS_REMEMBERED_FOR_MS`] past its end an ended one, keeps what its
    /// reserve, first settle and release answered, so these take no room in the op-id
    /// window. What they refuse is not remembered: a refusal changed nothing, and its
    /// retry (which a caller makes only when the answer never reached it) is decided
    /// afresh, as if the first attempt had not arrived, which its caller cannot tell apart.
    pub fn is_deduplicated_by_hold(&self) -> bool {
        self.hold().is_some()
    }

    /// The hold a reserve, settle or release is about.
    pub fn hold(&self) -> Option<HoldId> {
        match self {
            Op::Reserve { hold, .. } | Op::Settle { hold, .. } | Op::Release { hold, .. } => {
                Some(*hold)
            }
            _ => None,
        }
    }

    /// Checks what can be checked without the state. Run before proposing and again when
    /// applying, so a bad command never enters the log and a log never applies one.
    pub fn validate(&self) -> Result<(), Rejection> {
        let name_ok = |name: &str| name.len() <= NAME_BYTES_MAX;
        match self {
            Op::CreateAccount { name, .. } | Op::CreateKey { name, .. } if !name_ok(name) => {
                Err(Rejection::Invalid(Cow::Borrowed("name too long")))
            }
            Op::UpdateKey { update, .. } if update.name.as_deref().is_some_and(|n| !name_ok(n)) => {
                Err(Rejection::Invalid(Cow::Borrowed("name too long")))
            }
            Op::CreateKey { limits, .. } if !limits.is_valid() => {
                Err(Rejection::Invalid(Cow::Borrowed("key limits out of range")))
            }
            Op::UpdateKey { update, .. } if !update.limits(KeyLimits::default()).is_valid() => {
                Err(Rejection::Invalid(Cow::Borrowed("key limits out of range")))
            }
            Op::CreateUser { email, password_hash, .. }
                if email.is_empty()
                    || email.len() > EMAIL_BYTES_MAX
                    || email.bytes().any(|b| b.is_ascii_uppercase())
                    || password_hash.is_empty()
                    || password_hash.len() > PASSWORD_HASH_BYTES_MAX =>
            {
                Err(Rejection::Invalid(Cow::Borrowed("email or password hash out of range")))
            }
            Op::Credit { amount, .. } if amount.0 == 0 || *amount > AMOUNT_MAX => {
                Err(Rejection::Invalid(Cow::Borrowed("credit amount out of range")))
            }
            Op::Reserve { amount, .. } if *amount > AMOUNT_MAX => {
                Err(Rejection::Invalid(Cow::Borrowed("reserve amount out of range")))
            }
            Op::Reserve { ttl_ms, .. } if *ttl_ms == 0 || *ttl_ms > HOLD_TTL_MS_MAX => {
                Err(Rejection::Invalid(Cow::Borrowed("hold ttl out of range")))
            }
            Op::Settle { actual, record, .. }
                if *actual > AMOUNT_MAX
                    || !name_ok(&record.model)
                    || !name_ok(&record.provider) =>
            {
                Err(Rejection::Invalid(Cow::Borrowed("settle amount or record out of range")))
            }
            _ => Ok(()),
        }
    }
}

/// One batch of commands, stamped with the leader's clock when it was proposed. The stamp
/// is the only time the state machine ever sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub stamp_ms: u64,
    pub commands: Vec<Command>,
}

/// What a request cost and how it went; becomes the account's request history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RequestRecord {
    pub key: Option<KeyId>,
    pub model: String,
    pub provider: String,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub reasoning_tokens: u64,
    pub cached_tokens: u64,
    pub latency_ms: u64,
    /// HTTP status the client saw (200 for a completed stream).
    pub status: u16,
    pub streamed: bool,
    pub created_ms: u64,
    /// The gateway counted (some of) the tokens itself: the provider's usage was missing
    /// or partial, and the charge is the larger of the two counts.
    pub usage_estimated: bool,
    /// The provider reported more than the model's context plus output limit: a provider
    /// fault, settled at that bound.
    pub usage_clamped: bool,
    /// The request produced nothing (no output tokens; an error or an empty answer), so
    /// the customer is not charged: the settle writes all of `actual`, what the provider
    /// billed, off.
    pub waived: bool,
    /// Filled in by the ledger: what was actually charged.
    pub cost: PicoUsd,
    /// Filled in by the ledger: what the account could not pay (the operator's loss).
    pub written_off: PicoUsd,
    /// Time to first token: from the request's arrival to the first output (a stream's
    /// first content event; a plain answer's arrival from upstream); `None` when nothing
    /// came.
    pub ttft_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    AccountCreated,
    Credited {
        credits: PicoUsd,
    },
    KeyCreated,
    KeyRevoked,
    /// `reserved_at_ms`: the stamp of the batch that made the hold (a retry answers the
    /// first one's), which the hold's [`Op::Settle`] carries.
    Reserved {
        available: i128,
        reserved_at_ms: u64,
    },
    /// `charged + written_off = actual`: `charged` was debited (at most what the account
    /// had once its hold was voided), `written_off` is the operator's loss; `released` is
    /// the part of the hold that went back to `available` (zero when the hold had expired
    /// or was unknown).
    Settled {
        charged: PicoUsd,
        released: PicoUsd,
        written_off: PicoUsd,
    },
    Released {
        amount: PicoUsd,
    },
    KeyUpdated,
    UserCreated,
    SessionRevoked,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// A `Cow` rather than `&'static str` so that outcomes (kept in the idempotency window,
    /// hence in snapshots) deserialize from owned bytes; the ledger only ever builds
    /// borrowed static reasons.
    #[error("invalid command: {0}")]
    Invalid(Cow<'static, str>),
    #[error("unknown account")]
    UnknownAccount,
    #[error("account already exists")]
    AccountExists,
    #[error("key id already exists")]
    KeyExists,
    #[error("unknown key")]
    UnknownKey,
    #[error("API key has been revoked")]
    KeyRevoked,
    #[error("hold id already used")]
    HoldExists,
    #[error("unknown or expired hold")]
    UnknownHold,
    #[error("insufficient credit: {available} pico-USD available")]
    InsufficientFunds { available: i128 },
    #[error("operation id reused for a different operation")]
    IdReused,
    /// The idempotency window is full of ids younger than [`OPS_REMEMBERED_FOR_MS`]:
    /// nothing was applied; retry later.
    #[error("ledger overloaded: too many operations in the idempotency window; retry later")]
    Overloaded,
    /// The account already has [`TOP_UPS_PER_ACCOUNT_MAX`] top-ups, each remembered for
    /// the account's life; nothing was applied.
    #[error("the account has reached its limit of top-ups")]
    TopUpsExhausted,
    /// The key is disabled (reversibly, unlike [`Rejection::KeyRevoked`]).
    #[error("API key is disabled")]
    KeyDisabled,
    /// A management key manages keys; it cannot pay for requests.
    #[error("a management key cannot be used for requests")]
    ManagementKey,
    /// The key's spend in its period (`spent`, charged and held) plus this reserve would
    /// pass its limit; the limit starts over at `resets_at_ms` (`None`: never).
    #[error("the key's spend limit of {} is reached ({} spent or held)", limit.amount, spent)]
    KeySpendLimit { limit: crate::limits::SpendLimit, spent: PicoUsd, resets_at_ms: Option<u64> },
    /// The key's requests or tokens in the current minute reached `limit`; retry after
    /// `retry_after_ms`, when the minute ends.
    #[error("the key's rate limit is reached ({limit:?}); retry in {retry_after_ms} ms")]
    KeyRateLimited { limit: RateLimit, retry_after_ms: u64 },
    /// The account has [`KEYS_PER_ACCOUNT_MAX`] keys.
    #[error("the account has reached its limit of keys")]
    KeysExhausted,
    /// The user id or the email is taken.
    #[error("a user with this email already exists")]
    UserExists,
    #[error("the account has reached its limit of users")]
    TooManyUsers,
    /// A settle of a hold the ledger no longer knows, reserved [`HOLDS_REMEMBERED_FOR_MS`]
    /// or more before: it ended (settled, released or expired) and was forgotten, so this
    /// is a retry too late to be answered with the first reply; nothing was charged.
    #[error("hold ended and forgotten: a settle retried this late is not charged again")]
    HoldForgotten,
}

pub type Outcome = Result<Reply, Rejection>;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub name: String,
    pub credits: PicoUsd,
    pub debits_posted: PicoUsd,
    pub debits_pending: PicoUsd,
    pub n_holds: u32,
    /// Usage the account could not pay when it was settled: the operator's loss, not a
    /// debit (it is not part of `debits_posted`).
    pub written_off: PicoUsd,
}

impl Account {
    /// `credits − debits_posted − debits_pending`; never negative (the two commands that
    /// add a debit, a reserve and a settle, assert it of the account they debit; the audit
    /// checks every account).
    pub fn available(&self) -> i128 {
        self.credits.0 as i128 - self.debits_posted.0 as i128 - self.debits_pending.0 as i128
    }

    /// Gives back what a hold of `amount` held.
    fn drop_hold(&mut self, amount: PicoUsd) {
        let pending = self.debits_pending.0.checked_sub(amount.0).expect("pending underflow");
        self.debits_pending = PicoUsd(pending);
        self.n_holds = self.n_holds.checked_sub(1).expect("hold count underflow");
    }
}

/// What a key may do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyKind {
    /// Pays for requests (completions, embeddings).
    #[default]
    Inference,
    /// Manages its account's keys; the ledger refuses its reserves.
    Management,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub account: AccountId,
    pub name: String,
    pub hash: KeyHash,
    pub revoked: bool,
    /// Everything charged to requests made with this key.
    pub usage: PicoUsd,
    pub kind: KeyKind,
    /// Refuses the key's reserves while set; reversible.
    pub disabled: bool,
    pub limits: KeyLimits,
    /// Charges per day, week and month (read with [`Key::spent`]).
    pub spend: KeySpend,
    /// What the key's pending holds hold, and how many there are.
    pub held: PicoUsd,
    pub n_holds: u32,
    /// Requests admitted and tokens settled in the current minute (read with
    /// [`MinuteWindow::at`]).
    pub minute: MinuteWindow,
    /// Batch stamps of the key's creation and last update.
    pub created_ms: u64,
    pub updated_ms: u64,
}

impl Key {
    /// Gives back what a hold of `amount` made with the key held.
    fn drop_hold(&mut self, amount: PicoUsd) {
        self.held = PicoUsd(self.held.0.checked_sub(amount.0).expect("key held underflow"));
        self.n_holds = self.n_holds.checked_sub(1).expect("key hold count underflow");
    }

    /// Counts a settled request of `tokens` charged `charged` at `at_ms`.
    fn charge(&mut self, at_ms: u64, charged: PicoUsd, tokens: u64) {
        self.usage = self.usage.checked_add(charged).expect("key usage overflow");
        self.spend.add(at_ms, charged);
        self.minute = self.minute.at(at_ms);
        self.minute.tokens = self.minute.tokens.saturating_add(tokens);
    }

    /// What the key was charged in the `reset` period containing `at_ms`.
    pub fn spent(&self, reset: LimitReset, at_ms: u64) -> PicoUsd {
        self.spend.in_period(reset, at_ms, self.usage)
    }

    /// What the key may still spend or hold in its limit's period at `at_ms`, if it has a
    /// spend limit.
    pub fn limit_remaining(&self, at_ms: u64) -> Option<PicoUsd> {
        let limit = self.limits.spend()?;
        let used = self.spent(limit.reset, at_ms).checked_add(self.held).expect("bounded sums");
        Some(limit.amount.saturating_sub(used))
    }

    /// Refuses a reserve of `amount` at `at_ms` that a limit of the key forbids; checked
    /// in this order: requests per minute, tokens per minute, spend.
    fn admits(&self, amount: PicoUsd, at_ms: u64) -> Result<(), Rejection> {
        let minute = self.minute.at(at_ms);
        let retry_after_ms = minute.remaining_ms(at_ms);
        if let Some(rpm) = self.limits.requests_per_minute.filter(|rpm| minute.requests >= *rpm) {
            let limit = RateLimit::RequestsPerMinute(rpm);
            return Err(Rejection::KeyRateLimited { limit, retry_after_ms });
        }
        if let Some(tpm) = self.limits.tokens_per_minute.filter(|tpm| minute.tokens >= *tpm) {
            let limit = RateLimit::TokensPerMinute(tpm);
            return Err(Rejection::KeyRateLimited { limit, retry_after_ms });
        }
        if let Some(limit) = self.limits.spend() {
            let spent = self.spent(limit.reset, at_ms).checked_add(self.held).expect("bounded");
            if spent.checked_add(amount).expect("bounded sums") > limit.amount {
                let resets_at_ms = limit.reset.next_reset_ms(at_ms);
                return Err(Rejection::KeySpendLimit { limit, spent, resets_at_ms });
            }
        }
        Ok(())
    }
}

/// A top-up as remembered for its account's life: what it credited (to recognise a
/// retry, or an idempotency key reused for another amount) and the balance it left (the
/// retry's reply).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TopUp {
    amount: PicoUsd,
    credits: PicoUsd,
    /// The stamp of the batch that applied it.
    stamp_ms: u64,
}

/// One top-up as [`Ledger::top_ups`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopUpView {
    pub amount: PicoUsd,
    /// The account's credits after it.
    pub credits: PicoUsd,
    pub stamp_ms: u64,
}

/// A dashboard user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub account: AccountId,
    pub email: String,
    /// argon2id, as a PHC string.
    pub password_hash: String,
    pub role: Role,
}

/// A hold that ended (settled, released or expired), kept to answer a retry of its
/// reserve, settle or release the way the first attempt was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Ended {
    /// The hold as its reserve made it; `None` when a settle ended a hold never reserved
    /// here, or the hold was carried over from format version 8 (whose op-id window still
    /// answers that build's reserves and releases for as long as a retry can come).
    reservation: Option<Reservation>,
    /// The first settle's reply, if a settle came (before or after the hold's end).
    settled: Option<Settlement>,
}

/// What an ended hold's reserve was and answered: a retried reserve (the same
/// operation) is answered again, another reserve of the hold refused as
/// [`Rejection::HoldExists`]; a retried release answers `Released` again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Reservation {
    account: AccountId,
    key: KeyId,
    amount: PicoUsd,
    /// The reserve's [`Reply::Reserved`].
    available: i128,
    reserved_at_ms: u64,
    /// At most [`HOLD_TTL_MS_MAX`].
    ttl_ms: u32,
    /// A release ended the hold, answered [`Reply::Released`] with its amount.
    released: bool,
}

const _: () = assert!(HOLD_TTL_MS_MAX <= u32::MAX as u64, "a TTL fits a reservation");

impl Reservation {
    /// The reserve that made hold `id`: a retry is this operation.
    fn reserve(&self, id: HoldId) -> Op {
        let (account, key, amount, ttl_ms) =
            (self.account, self.key, self.amount, u64::from(self.ttl_ms));
        Op::Reserve { account, key, hold: id, amount, ttl_ms }
    }

    fn reply(&self) -> Reply {
        Reply::Reserved { available: self.available, reserved_at_ms: self.reserved_at_ms }
    }
}

/// A settle's [`Reply::Settled`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Settlement {
    charged: PicoUsd,
    released: PicoUsd,
    written_off: PicoUsd,
}

impl Settlement {
    fn reply(self) -> Reply {
        let Settlement { charged, released, written_off } = self;
        Reply::Settled { charged, released, written_off }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Hold {
    account: AccountId,
    /// The key that made it, whose `held` counts it.
    key: KeyId,
    amount: PicoUsd,
    reserved_at_ms: u64,
    expires_at_ms: u64,
    /// The account's available balance once the hold was made: the reserve's reply,
    /// which a retry answers again.
    available: i128,
}

impl Hold {
    /// The reserve that made hold `id`: a retry is this operation.
    fn reserve(&self, id: HoldId) -> Op {
        let ttl_ms = self.expires_at_ms - self.reserved_at_ms;
        Op::Reserve { account: self.account, key: self.key, hold: id, amount: self.amount, ttl_ms }
    }

    fn reply(&self) -> Reply {
        Reply::Reserved { available: self.available, reserved_at_ms: self.reserved_at_ms }
    }

    /// What the hold leaves to remember once it ends.
    fn reservation(&self) -> Reservation {
        let ttl_ms = self.expires_at_ms - self.reserved_at_ms;
        Reservation {
            account: self.account,
            key: self.key,
            amount: self.amount,
            available: self.available,
            reserved_at_ms: self.reserved_at_ms,
            ttl_ms: u32::try_from(ttl_ms).expect("at most HOLD_TTL_MS_MAX"),
            released: false,
        }
    }
}

/// The result of the bank check over every account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Audit {
    pub ok: bool,
    pub n_accounts: u64,
    pub n_holds: u64,
    pub credits: PicoUsd,
    pub debits_posted: PicoUsd,
    pub debits_pending: PicoUsd,
    /// Sum of every applied top-up; must equal `credits`.
    pub credited: PicoUsd,
    /// Sum of every write-off; must equal the sum of the accounts' `written_off`.
    pub written_off: PicoUsd,
    pub problems: Vec<String>,
}

/// The whole replicated state. Serializable as a snapshot. Its maps are persistent
/// (`imbl`): a clone shares their nodes, so it costs O(1) and a snapshot encodes a copy
/// while apply goes on; each write copies the O(log n) nodes on its path. The two
/// time-bounded sets, which hold an entry per recent request, are `Window`s: a clone
/// shares their chunks and index pages, and a write copies the one it touches. The
/// pending holds keep their young ones in plain maps (`Holds`): a clone copies those, a
/// bounded number.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    accounts: HashMap<AccountId, Account>,
    keys: HashMap<KeyId, Key>,
    keys_by_hash: HashMap<KeyHash, KeyId>,
    /// Each account's keys, at most [`KEYS_PER_ACCOUNT_MAX`].
    keys_by_account: HashMap<AccountId, OrdSet<KeyId>>,
    /// Pending holds, and their order of expiry for deterministic voiding (`holds.rs`:
    /// plain maps for the young, persistent ones for those that live long).
    holds: Holds,
    /// Holds that ended (settled, released, expired), by hold id, so that reserves,
    /// settles and releases are deduplicated by hold, not by op id: each is remembered
    /// until [`HOLDS_REMEMBERED_FOR_MS`] of batch stamps past its end. A settle's request
    /// record itself leaves the state machine: [`settled_records`] hands it to the
    /// history store.
    ended: Window<PackedEnded>,
    /// Idempotency window: op id → (fingerprint of the op, outcome), until
    /// [`OPS_REMEMBERED_FOR_MS`] of batch stamps past the one that applied it, for the
    /// operations not deduplicated by hold or by account (applied top-ups are in
    /// `top_ups`).
    applied: Window<(u64, Outcome)>,
    /// Every applied top-up of each account, by op id (which the gateway derives from the
    /// account and the caller's idempotency key), at most [`TOP_UPS_PER_ACCOUNT_MAX`] each.
    top_ups: HashMap<AccountId, HashMap<OpId, TopUp>>,
    /// Highest stamp applied so far; stamps never go backwards inside the state.
    stamp_ms: u64,
    /// Sum of every top-up ever applied (the bank check's left side).
    credited: PicoUsd,
    /// Sum of every write-off ever applied.
    written_off: PicoUsd,
    /// Dashboard users (only in [`USER_DIRECTORY`]'s group), by id, by email and by
    /// account (at most [`USERS_PER_ACCOUNT_MAX`] each).
    users: HashMap<UserId, User>,
    users_by_email: imbl::HashMap<String, UserId>,
    members: HashMap<AccountId, OrdSet<UserId>>,
    /// Revoked sessions, each until the stamp it is forgotten at (its tokens have expired
    /// by then), and in that order.
    revoked_sessions: HashMap<SessionId, u64>,
    revoked_order: OrdSet<(u64, SessionId)>,
}

impl Ledger {
    pub fn new() -> Ledger {
        Ledger::default()
    }

    /// Applies a batch: first voids holds expired at the batch's stamp, then each command
    /// in order. Returns one outcome per command.
    pub fn apply(&mut self, batch: &Batch) -> Vec<Outcome> {
        assert!(batch.commands.len() <= BATCH_COMMANDS_MAX, "oversized batch");
        self.stamp_ms = self.stamp_ms.max(batch.stamp_ms);
        self.expire(self.stamp_ms);
        self.applied.forget(self.stamp_ms);
        self.ended.forget(self.stamp_ms);
        self.forget_revocations(self.stamp_ms);
        // Each reserve, settle and release looks its hold up among the ended ones, a cache
        // miss each in a loaded node's window: a few commands' lookups are started at once.
        let mut outcomes = Vec::with_capacity(batch.commands.len());
        for commands in batch.commands.chunks(WARM_AT_ONCE) {
            self.ended.warm(commands.iter().filter_map(|c| c.op.hold()).map(|hold| hold.0));
            outcomes.extend(commands.iter().map(|c| self.apply_command(c)));
        }
        outcomes
    }

    fn apply_command(&mut self, command: &Command) -> Outcome {
        // Every op id is looked up: a reserve or release applied by a build of format 8
        // or older was remembered here, and is answered from here while it is.
        if let Some((seen, outcome)) = self.applied.get(command.id.0) {
            let same = *seen == fingerprint(&command.op);
            return if same { outcome.clone() } else { Err(Rejection::IdReused) };
        }
        // A reserve, settle or release is not remembered by op id: its hold answers a
        // retry.
        let by_op_id = !command.op.is_deduplicated_by_hold();
        if let Op::Credit { account, amount } = &command.op {
            let top_up = self.top_ups.get(account).and_then(|top_ups| top_ups.get(&command.id));
            if let Some(top_up) = top_up {
                return if top_up.amount == *amount {
                    Ok(Reply::Credited { credits: top_up.credits })
                } else {
                    Err(Rejection::IdReused)
                };
            }
        }
        if by_op_id && self.applied.len() >= OPS_REMEMBERED_MAX {
            // Not remembered, and nothing applied: a retry is decided afresh.
            return Err(Rejection::Overloaded);
        }
        // No balance is looked up again here to assert it: the two ops that debit one (a
        // reserve, a settle) assert it of the account they debit, which they hold.
        let outcome = command.op.validate().and_then(|()| self.apply_op(command.id, &command.op));
        if by_op_id && !matches!((&command.op, &outcome), (Op::Credit { .. }, Ok(_))) {
            self.remember(command.id, fingerprint(&command.op), outcome.clone());
        }
        outcome
    }

    fn remember(&mut self, id: OpId, fingerprint: u64, outcome: Outcome) {
        assert!(self.applied.len() < OPS_REMEMBERED_MAX, "checked before applying");
        assert!(!self.applied.contains(id.0), "looked up before applying");
        let forget_at_ms = self.stamp_ms.saturating_add(OPS_REMEMBERED_FOR_MS);
        self.applied.insert(id.0, forget_at_ms, (fingerprint, outcome));
    }

    /// Forgets the revoked sessions whose tokens have expired at `stamp_ms`.
    fn forget_revocations(&mut self, stamp_ms: u64) {
        while let Some(&(forget_at_ms, session)) = self.revoked_order.get_min() {
            if forget_at_ms > stamp_ms {
                break;
            }
            assert!(self.revoked_order.remove(&(forget_at_ms, session)).is_some());
            assert!(self.revoked_sessions.remove(&session).is_some(), "revocations out of sync");
        }
    }

    /// Remembers how `hold` ended, replacing an earlier ending (a settle after the hold
    /// expired or was released), for [`HOLDS_REMEMBERED_FOR_MS`] from now.
    fn end_hold(&mut self, hold: HoldId, ended: Ended) {
        let forget_at_ms = self.stamp_ms.saturating_add(HOLDS_REMEMBERED_FOR_MS);
        self.ended.insert(hold.0, forget_at_ms, PackedEnded::from(ended));
    }

    fn apply_op(&mut self, id: OpId, op: &Op) -> Outcome {
        match op {
            Op::CreateAccount { account, name } => {
                if self.accounts.contains_key(account) {
                    return Err(Rejection::AccountExists);
                }
                let fresh = Account { name: name.clone(), ..Account::default() };
                self.accounts.insert(*account, fresh);
                Ok(Reply::AccountCreated)
            }
            Op::Credit { account, amount } => {
                let entry = self.accounts.get_mut(account).ok_or(Rejection::UnknownAccount)?;
                let top_ups = self.top_ups.entry(*account).or_default();
                if top_ups.len() >= TOP_UPS_PER_ACCOUNT_MAX {
                    return Err(Rejection::TopUpsExhausted);
                }
                entry.credits = entry.credits.checked_add(*amount).expect("credits overflow");
                self.credited = self.credited.checked_add(*amount).expect("credited overflow");
                let top_up =
                    TopUp { amount: *amount, credits: entry.credits, stamp_ms: self.stamp_ms };
                assert!(top_ups.insert(id, top_up).is_none(), "a top-up applies once");
                Ok(Reply::Credited { credits: entry.credits })
            }
            Op::CreateKey { account, key, name, hash, kind, limits } => {
                if !self.accounts.contains_key(account) {
                    return Err(Rejection::UnknownAccount);
                }
                if self.keys.contains_key(key) || self.keys_by_hash.contains_key(hash) {
                    return Err(Rejection::KeyExists);
                }
                let account_keys = self.keys_by_account.entry(*account).or_default();
                if account_keys.len() >= KEYS_PER_ACCOUNT_MAX {
                    return Err(Rejection::KeysExhausted);
                }
                account_keys.insert(*key);
                let record = Key {
                    account: *account,
                    name: name.clone(),
                    hash: *hash,
                    revoked: false,
                    usage: PicoUsd::ZERO,
                    kind: *kind,
                    disabled: false,
                    limits: *limits,
                    spend: KeySpend::default(),
                    held: PicoUsd::ZERO,
                    n_holds: 0,
                    minute: MinuteWindow::default(),
                    created_ms: self.stamp_ms,
                    updated_ms: self.stamp_ms,
                };
                self.keys.insert(*key, record);
                self.keys_by_hash.insert(*hash, *key);
                Ok(Reply::KeyCreated)
            }
            Op::UpdateKey { account, key, update } => match self.keys.get_mut(key) {
                Some(entry) if entry.account == *account && entry.revoked => {
                    Err(Rejection::KeyRevoked)
                }
                Some(entry) if entry.account == *account => {
                    if let Some(name) = &update.name {
                        entry.name.clone_from(name);
                    }
                    entry.disabled = update.disabled.unwrap_or(entry.disabled);
                    entry.limits = update.limits(entry.limits);
                    entry.updated_ms = self.stamp_ms;
                    assert!(entry.limits.is_valid(), "validated before applying");
                    Ok(Reply::KeyUpdated)
                }
                _ => Err(Rejection::UnknownKey),
            },
            Op::RevokeKey { account, key } => match self.keys.get_mut(key) {
                Some(entry) if entry.account == *account => {
                    entry.revoked = true;
                    Ok(Reply::KeyRevoked)
                }
                _ => Err(Rejection::UnknownKey),
            },
            Op::Reserve { account, key, hold, amount, ttl_ms } => {
                self.reserve(*account, *key, *hold, *amount, *ttl_ms)
            }
            Op::Settle { account, hold, actual, record, reserved_at_ms } => {
                self.settle(*account, *hold, *actual, record, *reserved_at_ms)
            }
            Op::Release { account, hold } => self.release(*account, *hold),
            Op::CreateUser { user, account, email, password_hash, role } => {
                if self.users.contains_key(user) || self.users_by_email.contains_key(email) {
                    return Err(Rejection::UserExists);
                }
                let members = self.members.entry(*account).or_default();
                if members.len() >= USERS_PER_ACCOUNT_MAX {
                    return Err(Rejection::TooManyUsers);
                }
                members.insert(*user);
                let record = User {
                    account: *account,
                    email: email.clone(),
                    password_hash: password_hash.clone(),
                    role: *role,
                };
                self.users.insert(*user, record);
                self.users_by_email.insert(email.clone(), *user);
                Ok(Reply::UserCreated)
            }
            Op::RevokeSession { account, session, until_ms } => {
                if !self.accounts.contains_key(account) {
                    return Err(Rejection::UnknownAccount);
                }
                let latest = self.stamp_ms.saturating_add(SESSION_REMEMBERED_FOR_MS_MAX);
                let forget_at_ms = (*until_ms).min(latest);
                if forget_at_ms > self.stamp_ms && !self.revoked_sessions.contains_key(session) {
                    self.revoked_sessions.insert(*session, forget_at_ms);
                    self.revoked_order.insert((forget_at_ms, *session));
                }
                Ok(Reply::SessionRevoked)
            }
        }
    }

    fn reserve(
        &mut self,
        account: AccountId,
        key: KeyId,
        hold: HoldId,
        amount: PicoUsd,
        ttl_ms: u64,
    ) -> Outcome {
        // A retried reserve finds its hold made, live or ended, and answers its first
        // reply; another reserve of the hold is refused. A refused reserve left nothing.
        let op = Op::Reserve { account, key, hold, amount, ttl_ms };
        if let Some(held) = self.holds.get(&hold) {
            return if held.reserve(hold) == op {
                Ok(held.reply())
            } else {
                Err(Rejection::HoldExists)
            };
        }
        if let Some(ended) = self.ended.get(hold.0).map(PackedEnded::unpack) {
            return match ended.reservation {
                Some(made) if made.reserve(hold) == op => Ok(made.reply()),
                _ => Err(Rejection::HoldExists),
            };
        }
        // One lookup each of the account and the key, for the checks and the changes alike
        // (a refused reserve's copy-on-write of their paths changes nothing).
        let Some(entry) = self.accounts.get_mut(&account) else {
            return Err(Rejection::UnknownAccount);
        };
        // The ledger itself refuses a revoked, disabled or limited key, so a gateway whose
        // key cache is stale cannot spend with it, and every gateway counts against the
        // same limits.
        let key_entry = match self.keys.get_mut(&key) {
            Some(key_entry) if key_entry.account == account => key_entry,
            _ => return Err(Rejection::UnknownKey),
        };
        if key_entry.revoked {
            return Err(Rejection::KeyRevoked);
        }
        if key_entry.disabled {
            return Err(Rejection::KeyDisabled);
        }
        if key_entry.kind == KeyKind::Management {
            return Err(Rejection::ManagementKey);
        }
        let stamp_ms = self.stamp_ms;
        key_entry.admits(amount, stamp_ms)?;
        assert!(ttl_ms > 0 && ttl_ms <= HOLD_TTL_MS_MAX, "validated before applying");
        let expires_at_ms = stamp_ms.checked_add(ttl_ms).expect("stamp overflow");
        let available = entry.available();
        if (amount.0 as i128) > available {
            return Err(Rejection::InsufficientFunds { available });
        }
        entry.debits_pending = entry.debits_pending.checked_add(amount).expect("pending overflow");
        entry.n_holds += 1;
        let available = entry.available();
        key_entry.held = key_entry.held.checked_add(amount).expect("key held overflow");
        key_entry.n_holds += 1;
        key_entry.minute = key_entry.minute.at(stamp_ms);
        key_entry.minute.requests += 1;
        if let Some(limit) = key_entry.limits.spend() {
            let used = key_entry.spent(limit.reset, stamp_ms).checked_add(key_entry.held);
            assert!(used.expect("bounded") <= limit.amount, "a reserve passed its key's limit");
        }
        let reserved_at_ms = stamp_ms;
        let made = Hold { account, key, amount, reserved_at_ms, expires_at_ms, available };
        assert!(made.reserve(hold) == op, "a hold knows the reserve that made it");
        let reply = made.reply();
        self.holds.insert(hold, made);
        assert!(available >= 0, "a reservation made the balance negative");
        Ok(reply)
    }

    fn release(&mut self, account: AccountId, hold: HoldId) -> Outcome {
        match self.holds.get(&hold) {
            Some(entry) if entry.account == account => {
                let held = self.void_hold(hold);
                let reservation = Reservation { released: true, ..held.reservation() };
                self.end_hold(hold, Ended { reservation: Some(reservation), settled: None });
                Ok(Reply::Released { amount: held.amount })
            }
            Some(_) => Err(Rejection::UnknownHold),
            // A retried release answers its first reply; any other release of an ended
            // hold (expired, settled, another account's) finds nothing to release.
            None => match self.ended.get(hold.0).and_then(|ended| ended.unpack().reservation) {
                Some(made) if made.released && made.account == account => {
                    Ok(Reply::Released { amount: made.amount })
                }
                _ => Err(Rejection::UnknownHold),
            },
        }
    }

    fn settle(
        &mut self,
        account: AccountId,
        hold: HoldId,
        actual: PicoUsd,
        record: &RequestRecord,
        reserved_at_ms: u64,
    ) -> Outcome {
        // A pending hold has not ended: a hold ends once, and its id is not reserved again
        // while it is remembered. So the usual settle, of a pending hold, skips the window
        // and takes the hold out with its one lookup (another account's stays).
        let pending = self.holds.remove_if(&hold, |held| held.account == account);
        if pending.is_none() && self.holds.contains_key(&hold) {
            return match self.accounts.contains_key(&account) {
                true => Err(Rejection::UnknownHold),
                false => Err(Rejection::UnknownAccount),
            };
        }
        debug_assert!(pending.is_none() || !self.ended.contains(hold.0), "pending and ended");
        let ended = match pending {
            Some(_) => None,
            None => self.ended.get(hold.0).map(PackedEnded::unpack),
        };
        if let Some(settled) = ended.and_then(|ended| ended.settled) {
            // Settling twice (even under a new op id) changes nothing.
            return Ok(settled.reply());
        }
        // One lookup of the account, for the hold's release and the charge alike.
        let Some(entry) = self.accounts.get_mut(&account) else {
            assert!(pending.is_none(), "a pending hold of an unknown account");
            return Err(Rejection::UnknownAccount);
        };
        let (voided, reservation) = match (pending, ended) {
            (Some(held), _) => {
                entry.drop_hold(held.amount);
                (Some((held.key, held.amount)), Some(held.reservation()))
            }
            // Expired or released: charged like any other settle, within the funds.
            (None, Some(ended)) => (None, ended.reservation),
            // Every hold reserved at `reserved_at_ms` ended at or after it and is remembered
            // for the window past its end: unknown after that, it may have been settled.
            (None, None)
                if self.stamp_ms >= reserved_at_ms.saturating_add(HOLDS_REMEMBERED_FOR_MS) =>
            {
                return Err(Rejection::HoldForgotten)
            }
            // Never reserved: charged like any other settle, within the funds.
            (None, None) => (None, None),
        };
        let held = voided.map_or(PicoUsd::ZERO, |(_, amount)| amount);
        let available = u128::try_from(entry.available()).expect("available is never negative");
        let chargeable = if record.waived { 0 } else { available };
        let charged = PicoUsd(actual.0.min(chargeable));
        let written_off = actual.saturating_sub(charged);
        let released = held.saturating_sub(charged);
        entry.debits_posted = entry.debits_posted.checked_add(charged).expect("posted overflow");
        entry.written_off = entry.written_off.checked_add(written_off).expect("write-off overflow");
        self.written_off = self.written_off.checked_add(written_off).expect("write-off overflow");
        assert!(entry.available() >= 0, "a settle made the balance negative");
        // The hold's key gives back what it held and the record's key is charged: one
        // key, looked up once, but for a record naming another (or none).
        let tokens = record.prompt_tokens.saturating_add(record.completion_tokens);
        let stamp_ms = self.stamp_ms;
        if let Some((key, amount)) = voided {
            let key_entry = self.keys.get_mut(&key).expect("hold of a known key");
            key_entry.drop_hold(amount);
            if record.key == Some(key) {
                key_entry.charge(stamp_ms, charged, tokens);
            }
        }
        if record.key != voided.map(|(key, _)| key) {
            if let Some(key_entry) = record.key.and_then(|key| self.keys.get_mut(&key)) {
                key_entry.charge(stamp_ms, charged, tokens);
            }
        }
        let settled = Settlement { charged, released, written_off };
        self.end_hold(hold, Ended { reservation, settled: Some(settled) });
        Ok(settled.reply())
    }

    /// Removes a pending hold, giving back what it held; returns it.
    fn void_hold(&mut self, hold: HoldId) -> Hold {
        let entry = self.holds.remove(&hold).expect("voiding a known hold");
        let account = self.accounts.get_mut(&entry.account).expect("hold of a known account");
        account.drop_hold(entry.amount);
        self.keys.get_mut(&entry.key).expect("hold of a known key").drop_hold(entry.amount);
        entry
    }

    fn expire(&mut self, stamp_ms: u64) {
        while let Some((expires_at_ms, hold)) = self.holds.first_expiring() {
            if expires_at_ms > stamp_ms {
                break;
            }
            let held = self.void_hold(hold);
            self.end_hold(hold, Ended { reservation: Some(held.reservation()), settled: None });
        }
    }

    pub fn stamp_ms(&self) -> u64 {
        self.stamp_ms
    }

    /// When the earliest pending hold expires, if there is one. A replica's leader uses it
    /// to propose an empty batch once that time has passed, so a hold abandoned by a
    /// crashed gateway is voided even when no other command reaches its group.
    pub fn next_expiry_ms(&self) -> Option<u64> {
        self.holds.first_expiring().map(|(expires_at_ms, _)| expires_at_ms)
    }

    pub fn account(&self, account: AccountId) -> Option<&Account> {
        self.accounts.get(&account)
    }

    pub fn key(&self, key: KeyId) -> Option<&Key> {
        self.keys.get(&key)
    }

    pub fn key_by_hash(&self, hash: &KeyHash) -> Option<(KeyId, &Key)> {
        let id = self.keys_by_hash.get(hash)?;
        Some((*id, &self.keys[id]))
    }

    /// An account's keys (revoked ones included), by id.
    pub fn keys_of(&self, account: AccountId) -> impl Iterator<Item = (KeyId, &Key)> {
        let ids = self.keys_by_account.get(&account).into_iter().flatten();
        ids.map(|id| (*id, &self.keys[id]))
    }

    /// The account's top-ups, oldest first (credits only grow, so their order is that
    /// of the credits each left).
    pub fn top_ups(&self, account: AccountId) -> Vec<TopUpView> {
        let mut found: Vec<TopUpView> = self
            .top_ups
            .get(&account)
            .into_iter()
            .flat_map(HashMap::values)
            .map(|top_up| TopUpView {
                amount: top_up.amount,
                credits: top_up.credits,
                stamp_ms: top_up.stamp_ms,
            })
            .collect();
        found.sort_by_key(|top_up| top_up.credits);
        found
    }

    pub fn user(&self, user: UserId) -> Option<&User> {
        self.users.get(&user)
    }

    /// The user whose (lower-case) email this is.
    pub fn user_by_email(&self, email: &str) -> Option<(UserId, &User)> {
        let id = self.users_by_email.get(email)?;
        Some((*id, &self.users[id]))
    }

    /// The users of `account`, by id.
    pub fn members(&self, account: AccountId) -> Vec<(UserId, User)> {
        let ids = self.members.get(&account).into_iter().flatten();
        ids.map(|id| (*id, self.users[id].clone())).collect()
    }

    /// Whether `session` was revoked (and its tokens may not have expired yet).
    pub fn session_revoked(&self, session: SessionId) -> bool {
        self.revoked_sessions.contains_key(&session)
    }

    /// Revoked sessions still remembered: bounded by the rate of logouts times the
    /// longest session.
    pub fn n_revoked_sessions_remembered(&self) -> usize {
        self.revoked_sessions.len()
    }

    /// Ended holds still remembered (to answer a retried reserve, settle or release):
    /// bounded by the rate holds end at times [`HOLDS_REMEMBERED_FOR_MS`].
    pub fn n_ended_holds_remembered(&self) -> usize {
        self.ended.len()
    }

    /// Operation ids remembered in the window: everything but reserves, settles and
    /// releases (deduplicated by hold) and top-ups (by account).
    pub fn n_op_ids_remembered(&self) -> usize {
        self.applied.len()
    }

    /// The bank check over every account (DESIGN.md §3).
    pub fn audit(&self) -> Audit {
        let mut problems = Vec::new();
        let mut pending_by_account: BTreeMap<AccountId, (u128, u32)> = BTreeMap::new();
        let mut pending_by_key: BTreeMap<KeyId, (u128, u32)> = BTreeMap::new();
        problems.extend(self.holds.problems());
        for (id, hold) in self.holds.iter() {
            let entry = pending_by_account.entry(hold.account).or_default();
            entry.0 += hold.amount.0;
            entry.1 += 1;
            let entry = pending_by_key.entry(hold.key).or_default();
            entry.0 += hold.amount.0;
            entry.1 += 1;
            // A settle of a pending hold relies on it: it skips the ended holds.
            if self.ended.contains(id.0) {
                problems.push(format!("hold {:x} both pending and ended", id.0));
            }
        }
        let (mut credits, mut posted, mut pending, mut written_off) = (0u128, 0u128, 0u128, 0u128);
        for (id, account) in &self.accounts {
            credits += account.credits.0;
            posted += account.debits_posted.0;
            pending += account.debits_pending.0;
            written_off += account.written_off.0;
            if account.available() < 0 {
                problems.push(format!("account {:x}: available below zero", id.0));
            }
            let top_ups = self.top_ups.get(id).into_iter().flat_map(HashMap::values);
            if top_ups.map(|top_up| top_up.amount.0).sum::<u128>() != account.credits.0 {
                problems.push(format!("account {:x}: credits differ from its top-ups", id.0));
            }
            let (held, n_holds) = pending_by_account.get(id).copied().unwrap_or_default();
            if held != account.debits_pending.0 || n_holds != account.n_holds {
                problems.push(format!("account {:x}: pending differs from its holds", id.0));
            }
            let sum = account.debits_posted.0 as i128
                + account.debits_pending.0 as i128
                + account.available();
            if sum != account.credits.0 as i128 {
                problems.push(format!("account {:x}: credits ≠ debits + available", id.0));
            }
        }
        let mut n_indexed_keys = 0;
        for (account, ids) in &self.keys_by_account {
            n_indexed_keys += ids.len();
            if ids.iter().any(|id| self.keys.get(id).is_none_or(|key| key.account != *account)) {
                problems.push(format!("account {:x}: key index out of sync", account.0));
            }
        }
        if n_indexed_keys != self.keys.len() || self.keys_by_hash.len() != self.keys.len() {
            problems.push("key indexes and keys differ in size".into());
        }
        for (id, key) in &self.keys {
            let (held, n_holds) = pending_by_key.get(id).copied().unwrap_or_default();
            if held != key.held.0 || n_holds != key.n_holds {
                problems.push(format!("key {:x}: held differs from its holds", id.0));
            }
        }
        if self.top_ups.keys().any(|id| !self.accounts.contains_key(id)) {
            problems.push("top-ups remembered for an unknown account".into());
        }
        problems.extend(self.ended.problems("ended holds"));
        if self.ended.iter().any(|(hold, _, _)| self.holds.contains_key(&HoldId(hold))) {
            problems.push("a hold both pending and ended".into());
        }
        problems.extend(self.applied.problems("idempotency window"));
        let n_members: usize = self.members.values().map(OrdSet::len).sum();
        if self.users.len() != self.users_by_email.len() || self.users.len() != n_members {
            problems.push("users and their indexes differ in size".into());
        }
        if self.revoked_sessions.len() != self.revoked_order.len() {
            problems.push("revoked sessions and their order differ in size".into());
        }
        if credits != self.credited.0 {
            problems.push("sum of credits differs from sum of top-ups".into());
        }
        if written_off != self.written_off.0 {
            problems.push("sum of accounts' write-offs differs from the total".into());
        }
        Audit {
            ok: problems.is_empty(),
            n_accounts: self.accounts.len() as u64,
            n_holds: self.holds.len() as u64,
            credits: PicoUsd(credits),
            debits_posted: PicoUsd(posted),
            debits_pending: PicoUsd(pending),
            credited: self.credited,
            written_off: self.written_off,
            problems,
        }
    }
}

/// The request records a batch settled, as the history keeps them: each `Settle` that
/// succeeded, with what the ledger charged and wrote off filled in, and the account that
/// paid. A retried settle yields its record again (with the first reply's figures); the
/// history keeps the first.
pub fn settled_records<'a>(
    batch: &'a Batch,
    outcomes: &'a [Outcome],
) -> impl Iterator<Item = (AccountId, HoldId, RequestRecord)> + 'a {
    assert_eq!(batch.commands.len(), outcomes.len(), "one outcome per command");
    batch.commands.iter().zip(outcomes).filter_map(|(command, outcome)| {
        match (&command.op, outcome) {
            (
                Op::Settle { account, hold, record, .. },
                Ok(Reply::Settled { charged, written_off, .. }),
            ) => {
                let record =
                    RequestRecord { cost: *charged, written_off: *written_off, ..record.clone() };
                Some((*account, *hold, record))
            }
            _ => None,
        }
    })
}

/// A stable 64-bit fingerprint of an operation, to detect an op id reused for a different
/// operation. FNV-1a over the derived `Hash` stream: deterministic across processes and
/// releases of `std` (unlike `DefaultHasher`), and no allocation on the apply path.
fn fingerprint(op: &Op) -> u64 {
    let mut hasher = Fnv1a::default();
    op.hash(&mut hasher);
    hasher.finish()
}

/// FNV-1a, a hasher whose output is stable across processes, platforms of one word size
/// and releases of `std` (unlike `std`'s randomly keyed one): for fingerprints that must
/// agree between replicas and runs.
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Fnv1a {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv1a {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full window refuses new commands (applying and remembering nothing) rather than
    /// forget an id early, still answers the ids it holds, and takes new commands again
    /// once stamps have moved `OPS_REMEMBERED_FOR_MS` past the oldest. Requests, which it
    /// does not hold, are served all along.
    #[test]
    fn a_full_window_refuses_new_commands_until_ids_age_out() {
        const FILLED_AT_MS: u64 = 1_000;
        let revoke = Op::RevokeKey { account: AccountId(9), key: KeyId(9) };
        let mut ledger = Ledger::new();
        // An outcome only the window can answer: there is no such key.
        let remembered = (fingerprint(&revoke), Ok(Reply::KeyRevoked));
        let forget_at_ms = FILLED_AT_MS + OPS_REMEMBERED_FOR_MS;
        for n in 0..OPS_REMEMBERED_MAX as u128 {
            ledger.applied.insert(n, forget_at_ms, remembered.clone());
        }
        ledger.stamp_ms = FILLED_AT_MS;

        let create = Op::CreateAccount { account: AccountId(1), name: "a".into() };
        let (account, key, hold, amount) = (AccountId(1), KeyId(1), HoldId(1), PicoUsd(1));
        let reserve = Op::Reserve { account, key, hold, amount, ttl_ms: 1 };
        let commands = vec![
            Command { id: OpId(u128::MAX), op: create },
            Command { id: OpId(5), op: revoke },
            Command { id: OpId(u128::MAX - 1), op: reserve },
        ];
        let mut batch = Batch { stamp_ms: FILLED_AT_MS + OPS_REMEMBERED_FOR_MS - 1, commands };
        let outcomes = ledger.apply(&batch);
        let unknown = Err(Rejection::UnknownAccount);
        assert_eq!(outcomes, [Err(Rejection::Overloaded), Ok(Reply::KeyRevoked), unknown]);
        assert!(ledger.account(AccountId(1)).is_none());
        assert_eq!(ledger.applied.len(), OPS_REMEMBERED_MAX);

        batch.stamp_ms += 1;
        let outcomes = ledger.apply(&batch);
        let expected =
            [Ok(Reply::AccountCreated), Err(Rejection::UnknownKey), Err(Rejection::UnknownKey)];
        assert_eq!(outcomes, expected);
        assert_eq!(ledger.applied.len(), 2);
        assert!(ledger.audit().ok);
    }

    /// The audit reports a hold both pending and ended, which a settle of a pending hold
    /// takes never to happen (it does not look among the ended holds).
    #[test]
    fn the_audit_finds_a_hold_both_pending_and_ended() {
        let both = |audit: Audit| audit.problems.iter().any(|p| p.contains("pending and ended"));
        let mut ledger = Ledger::new();
        let (account, key, hold) = (AccountId(1), KeyId(1), HoldId(7));
        let pending = Hold {
            account,
            key,
            amount: PicoUsd::ZERO,
            reserved_at_ms: 0,
            expires_at_ms: 10,
            available: 0,
        };
        ledger.holds.insert(hold, pending);
        assert!(!both(ledger.audit()));
        ledger.end_hold(hold, Ended { reservation: None, settled: None });
        assert!(both(ledger.audit()));
    }
}
