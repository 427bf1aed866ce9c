//! What travels inside the `LedgerService` envelopes (see `proto/raft.proto`), encoded by
//! [`codec`](crate::codec).
//! Shared by the server (`service.rs`) and the client (`client.rs`); private to the crate
//! except [`Consistency`] and [`Topology`], which are part of the public API.

use crate::error::LedgerError;
use crate::history::{
    ExportPage, History, HistoryCursor, HistoryPage, HistoryQuery, UsageQuery, UsageRow,
    HISTORY_EXPORT_PAGE_MAX,
};
use crate::incarnation::Incarnation;
use serde::{Deserialize, Serialize};
use solrouter_ledger::{
    Account, AccountId, Audit, HoldId, Key, KeyHash, KeyId, Ledger, PicoUsd, RequestRecord,
    SessionId, TopUpView, User, UserId,
};
use std::collections::BTreeMap;
use std::time::Duration;

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Consistency {
    /// Sees every command acknowledged before the read started: served by the group's
    /// leader after it confirmed its leadership with a quorum (one round trip).
    Linearizable,
    /// Whatever the answering replica has applied, possibly behind the leader: no Raft
    /// round, and any replica (a follower too) may answer.
    Stale,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// The answering node.
    pub node_id: u64,
    pub n_groups: u32,
    /// Every node in any group's membership (voters and learners), with its address.
    pub members: BTreeMap<u64, String>,
    /// The incarnation of each of `members` (what its data directory was created as).
    pub incarnations: BTreeMap<u64, Incarnation>,
    /// The voters of each group, by group index.
    pub voters: Vec<Vec<u64>>,
    /// Each group's leader as this node knows it, by group index.
    pub leaders: Vec<Option<u64>>,
}

/// One read of one group's state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Read {
    /// Nothing: a linearizable ping proves the group has a leader with a quorum.
    Ping,
    Account(AccountId),
    Key(KeyId),
    KeyByHash(KeyHash),
    Audit,
    /// The record of a settled hold, if `account` paid for it (from the history).
    Record {
        account: AccountId,
        hold: HoldId,
    },
    /// A page of an account's request history.
    History(HistoryQuery),
    /// An account's usage per bucket, key and model.
    Usage(UsageQuery),
    /// The group's records after `after` in creation order, for a replica that installed
    /// a snapshot whose last entry is `through`: served only by a replica that applied
    /// the group's entries through it and wishes for no copy of its own, so that it holds
    /// the record of each of them.
    HistoryExport {
        after: Option<HistoryCursor>,
        through: u64,
    },
    /// An account's keys, revoked ones included.
    KeysOf(AccountId),
    /// The top-ups of an account, oldest first.
    TopUps(AccountId),
    /// A dashboard user by id (from the user directory).
    User(UserId),
    /// A dashboard user by lower-case email (from the user directory).
    UserByEmail(String),
    /// The users of an account (from the user directory).
    Members(AccountId),
    /// Whether a dashboard session was revoked.
    SessionRevoked(SessionId),
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadRequest {
    pub read: Read,
    pub consistency: Consistency,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReadAnswer {
    Ping,
    Account(Option<Account>),
    Key(Option<Key>),
    KeyByHash(Option<(KeyId, Key)>),
    Audit(Audit),
    Record(Option<RequestRecord>),
    History(HistoryPage),
    Usage(Vec<UsageRow>),
    HistoryExport(ExportPage),
    Keys(Vec<(KeyId, Key)>),
    TopUps(Vec<TopUpView>),
    User(Option<User>),
    UserByEmail(Option<(UserId, User)>),
    Members(Vec<(UserId, User)>),
    SessionRevoked(bool),
}

/// A membership change of one group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum MembershipChange {
    /// Adds node `id` at `addr`: first as a learner that catches up, then as a voter.
    Add { id: u64, addr: String },
    /// Removes node `id` from the voters and from the group.
    Remove { id: u64 },
}

/// [`LedgerError`] as it crosses the wire. A remote node's storage failure or shutdown
/// makes that node unavailable to the client, not the client's own storage broken.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum WireError {
    NotLeader { leader_id: Option<u64>, leader_addr: Option<String> },
    Unavailable(String),
    Timeout { ms: u64 },
    Invalid(String),
}

impl From<LedgerError> for WireError {
    fn from(error: LedgerError) -> WireError {
        match error {
            LedgerError::NotLeader { leader_id, leader_addr } => {
                WireError::NotLeader { leader_id, leader_addr }
            }
            LedgerError::Timeout(after) => WireError::Timeout { ms: after.as_millis() as u64 },
            LedgerError::Invalid(reason) | LedgerError::InvalidTls(reason) => {
                WireError::Invalid(reason)
            }
            LedgerError::InvalidOptions(reason) => WireError::Invalid(reason.to_owned()),
            LedgerError::Unavailable { .. }
            | LedgerError::Storage { .. }
            | LedgerError::Shutdown => WireError::Unavailable(error.to_string()),
        }
    }
}

impl From<WireError> for LedgerError {
    fn from(error: WireError) -> LedgerError {
        match error {
            WireError::NotLeader { leader_id, leader_addr } => {
                LedgerError::NotLeader { leader_id, leader_addr }
            }
            WireError::Unavailable(reason) => LedgerError::Unavailable { reason },
            WireError::Timeout { ms } => LedgerError::Timeout(Duration::from_millis(ms)),
            WireError::Invalid(reason) => LedgerError::Invalid(reason),
        }
    }
}

/// Answers `read` from one replica's ledger, or `None` for a read of the request history
/// ([`answer_history`]). Pure: the caller chose the replica and made sure it is fresh
/// enough.
pub(crate) fn answer(ledger: &Ledger, read: &Read) -> Option<ReadAnswer> {
    Some(match read {
        Read::Ping => ReadAnswer::Ping,
        Read::Account(account) => ReadAnswer::Account(ledger.account(*account).cloned()),
        Read::Key(key) => ReadAnswer::Key(ledger.key(*key).cloned()),
        Read::KeyByHash(hash) => {
            ReadAnswer::KeyByHash(ledger.key_by_hash(hash).map(|(id, key)| (id, key.clone())))
        }
        Read::Audit => ReadAnswer::Audit(ledger.audit()),
        Read::KeysOf(account) => {
            ReadAnswer::Keys(ledger.keys_of(*account).map(|(id, key)| (id, key.clone())).collect())
        }
        Read::TopUps(account) => ReadAnswer::TopUps(ledger.top_ups(*account)),
        Read::User(user) => ReadAnswer::User(ledger.user(*user).cloned()),
        Read::UserByEmail(email) => ReadAnswer::UserByEmail(
            ledger.user_by_email(email).map(|(id, user)| (id, user.clone())),
        ),
        Read::Members(account) => ReadAnswer::Members(ledger.members(*account)),
        Read::SessionRevoked(session) => {
            ReadAnswer::SessionRevoked(ledger.session_revoked(*session))
        }
        Read::Record { .. } | Read::History(_) | Read::Usage(_) | Read::HistoryExport { .. } => {
            return None
        }
    })
}

/// Answers a read of the request history of group `group` from one replica's history
/// store, which holds every record its ledger replica applied (but those of the entries
/// a snapshot install skipped, until their copy ends); `applied` is the last of the
/// group's entries the replica applied, `in_group` tells the group's accounts.
pub(crate) fn answer_history(
    history: &History,
    read: &Read,
    group: u32,
    applied: u64,
    in_group: impl Fn(AccountId) -> bool,
) -> Result<ReadAnswer, LedgerError> {
    let failed = |e: redb::Error| LedgerError::storage("reading the request history", e);
    match read {
        Read::Record { account, hold } => {
            history.record(*account, *hold).map(ReadAnswer::Record).map_err(failed)
        }
        Read::History(query) => history.query(query).map(ReadAnswer::History).map_err(failed),
        Read::Usage(query) => history.usage(query).map(ReadAnswer::Usage).map_err(failed),
        Read::HistoryExport { after, through } => {
            // A copy for a snapshot's install comes from a replica that holds the record
            // of every entry the snapshot covers: one that applied them, and lacks none
            // of its own to a snapshot install.
            if applied < *through {
                let reason = format!("group {group} applied through {applied}, not {through}");
                return Err(LedgerError::Unavailable { reason });
            }
            let wanted = history.backfills_wanted().map_err(failed)?;
            if wanted.iter().any(|(wished, _)| *wished == group) {
                let reason = format!("group {group}'s records are still being copied here");
                return Err(LedgerError::Unavailable { reason });
            }
            let page = history.export(in_group, *after, HISTORY_EXPORT_PAGE_MAX);
            page.map(ReadAnswer::HistoryExport).map_err(failed)
        }
        other => Err(LedgerError::Invalid(format!("{other:?} is not a history read"))),
    }
}

/// The audit of a whole cluster from the audits of its groups (each group keeps a
/// disjoint set of accounts, so sums add up).
pub(crate) fn merge_audits(audits: Vec<Audit>) -> Audit {
    let mut merged = Audit {
        ok: true,
        n_accounts: 0,
        n_holds: 0,
        credits: PicoUsd::ZERO,
        debits_posted: PicoUsd::ZERO,
        debits_pending: PicoUsd::ZERO,
        credited: PicoUsd::ZERO,
        written_off: PicoUsd::ZERO,
        problems: Vec::new(),
    };
    let add = |total: PicoUsd, part: PicoUsd| total.checked_add(part).expect("audit sum overflow");
    for (group_idx, audit) in audits.into_iter().enumerate() {
        merged.ok &= audit.ok;
        merged.n_accounts += audit.n_accounts;
        merged.n_holds += audit.n_holds;
        merged.credits = add(merged.credits, audit.credits);
        merged.debits_posted = add(merged.debits_posted, audit.debits_posted);
        merged.debits_pending = add(merged.debits_pending, audit.debits_pending);
        merged.credited = add(merged.credited, audit.credited);
        merged.written_off = add(merged.written_off, audit.written_off);
        merged
            .problems
            .extend(audit.problems.into_iter().map(|p| format!("group {group_idx}: {p}")));
    }
    merged
}
