//! Typed reads over the groups of a cluster, shared by the in-process [`crate::LedgerNode`]
//! and the remote [`crate::LedgerClient`]: both answer one group's [`Read`]; this module
//! routes each read to its account's group, or to every group and merges the answers.

use crate::error::LedgerError;
use crate::history::{HistoryPage, HistoryQuery, UsageQuery, UsageRow};
use crate::node::group_of_account;
use crate::wire::{merge_audits, Consistency, Read, ReadAnswer, ReadRequest};
use solrouter_ledger::{Account, AccountId, Audit, HoldId, Key, KeyHash, KeyId, RequestRecord};
use std::future::Future;

/// Something that answers a read of one group: a local node or a client of a cluster.
pub(crate) trait GroupReader: Sync {
    fn n_groups(&self) -> u32;

    fn read_group(
        &self,
        group_idx: u32,
        request: ReadRequest,
    ) -> impl Future<Output = Result<ReadAnswer, LedgerError>> + Send;
}

async fn read_account_group<R: GroupReader>(
    reader: &R,
    account: AccountId,
    read: Read,
    consistency: Consistency,
) -> Result<ReadAnswer, LedgerError> {
    let group_idx = group_of_account(account, reader.n_groups());
    reader.read_group(group_idx, ReadRequest { read, consistency }).await
}

pub(crate) async fn account<R: GroupReader>(
    reader: &R,
    account: AccountId,
    consistency: Consistency,
) -> Result<Option<Account>, LedgerError> {
    match read_account_group(reader, account, Read::Account(account), consistency).await? {
        ReadAnswer::Account(found) => Ok(found),
        other => Err(mismatch("account", &other)),
    }
}

/// Keys live in their account's group; the account is part of the key's text, so
/// authentication knows where to look.
pub(crate) async fn key_by_hash<R: GroupReader>(
    reader: &R,
    account: AccountId,
    hash: KeyHash,
    consistency: Consistency,
) -> Result<Option<(KeyId, Key)>, LedgerError> {
    match read_account_group(reader, account, Read::KeyByHash(hash), consistency).await? {
        ReadAnswer::KeyByHash(found) => Ok(found.filter(|(_, key)| key.account == account)),
        other => Err(mismatch("key by hash", &other)),
    }
}

/// A key by id alone (the admin API's revocation) may be in any group: asks each in turn.
pub(crate) async fn key<R: GroupReader>(
    reader: &R,
    key: KeyId,
    consistency: Consistency,
) -> Result<Option<Key>, LedgerError> {
    for group_idx in 0..reader.n_groups() {
        let request = ReadRequest { read: Read::Key(key), consistency };
        match reader.read_group(group_idx, request).await? {
            ReadAnswer::Key(Some(found)) => return Ok(Some(found)),
            ReadAnswer::Key(None) => {}
            other => return Err(mismatch("key", &other)),
        }
    }
    Ok(None)
}

pub(crate) async fn record<R: GroupReader>(
    reader: &R,
    account: AccountId,
    hold: HoldId,
    consistency: Consistency,
) -> Result<Option<RequestRecord>, LedgerError> {
    let read = Read::Record { account, hold };
    match read_account_group(reader, account, read, consistency).await? {
        ReadAnswer::Record(found) => Ok(found),
        other => Err(mismatch("record", &other)),
    }
}

pub(crate) async fn history<R: GroupReader>(
    reader: &R,
    query: HistoryQuery,
    consistency: Consistency,
) -> Result<HistoryPage, LedgerError> {
    let account = query.account;
    match read_account_group(reader, account, Read::History(query), consistency).await? {
        ReadAnswer::History(page) => Ok(page),
        other => Err(mismatch("history", &other)),
    }
}

pub(crate) async fn usage<R: GroupReader>(
    reader: &R,
    query: UsageQuery,
    consistency: Consistency,
) -> Result<Vec<UsageRow>, LedgerError> {
    let account = query.account;
    match read_account_group(reader, account, Read::Usage(query), consistency).await? {
        ReadAnswer::Usage(rows) => Ok(rows),
        other => Err(mismatch("usage", &other)),
    }
}

/// The bank check of every group, merged. Each group is read on its own, so with
/// `Linearizable` each part is current but the parts are not one atomic cut (no command
/// spans two groups, so every part is consistent in itself).
pub(crate) async fn audit<R: GroupReader>(
    reader: &R,
    consistency: Consistency,
) -> Result<Audit, LedgerError> {
    let mut audits = Vec::with_capacity(reader.n_groups() as usize);
    for group_idx in 0..reader.n_groups() {
        match reader.read_group(group_idx, ReadRequest { read: Read::Audit, consistency }).await? {
            ReadAnswer::Audit(audit) => audits.push(audit),
            other => return Err(mismatch("audit", &other)),
        }
    }
    Ok(merge_audits(audits))
}

/// Succeeds when every group has a leader that a quorum confirms.
pub(crate) async fn ready<R: GroupReader>(reader: &R) -> Result<(), LedgerError> {
    for group_idx in 0..reader.n_groups() {
        let request = ReadRequest { read: Read::Ping, consistency: Consistency::Linearizable };
        match reader.read_group(group_idx, request).await? {
            ReadAnswer::Ping => {}
            other => return Err(mismatch("ping", &other)),
        }
    }
    Ok(())
}

/// An answer of the wrong kind: client and server disagree about the protocol.
fn mismatch(asked: &str, answer: &ReadAnswer) -> LedgerError {
    LedgerError::Invalid(format!("asked for {asked}, got {answer:?}"))
}
