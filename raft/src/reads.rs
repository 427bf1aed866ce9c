//! [`LedgerApi`]: the typed submits and reads of a ledger, written once for the in-process
//! [`LedgerNode`], the remote [`LedgerClient`] and [`LedgerHandle`] (either). Each of them
//! only answers one group's [`Read`] and submits one command ([`GroupAccess`]); this module
//! routes each read to its account's group, or to every group and merges the answers, and
//! gives every group call of a read the read's one deadline.

use crate::client::LedgerClient;
use crate::error::LedgerError;
use crate::history::{HistoryPage, HistoryQuery, UsageQuery, UsageRow};
use crate::node::{group_of_account, LedgerNode};
use crate::wire::{merge_audits, Consistency, Read, ReadAnswer, ReadRequest};
use solrouter_ledger::{
    Account, AccountId, Audit, Command, HoldId, Key, KeyHash, KeyId, Outcome, RequestRecord,
    SessionId, TopUpView, User, UserId, USER_DIRECTORY,
};
use std::future::Future;
use tokio::time::Instant;

/// What [`LedgerApi`] is built on: one group's reads and one command's submit. Public in a
/// private module, so no other crate can name or implement it (`LedgerApi` is sealed).
pub trait GroupAccess: Sync {
    fn n_groups(&self) -> u32;

    /// One group's answer to `request`. A client keeps to `deadline` (the read's, from
    /// [`GroupAccess::read_deadline`]; without one, its own from now); a node has its
    /// group's own bounds and no deadline of its own to keep.
    fn read_group(
        &self,
        group_idx: u32,
        request: ReadRequest,
        deadline: Option<Instant>,
    ) -> impl Future<Output = Result<ReadAnswer, LedgerError>> + Send;

    /// Submits `command` to its account's group, within the handle's own bound (a node's
    /// [`SUBMIT_TIMEOUT`](crate::SUBMIT_TIMEOUT), a client's
    /// [`CLIENT_CALL_DEADLINE`](crate::CLIENT_CALL_DEADLINE), which goes with the command
    /// into its batch instead of a timer per command).
    fn submit_command(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Outcome, LedgerError>> + Send;

    /// When a [`LedgerApi`] read that starts now must be answered, every attempt and every
    /// group it asks included; `None` when the handle's own timeouts bound its calls.
    ///
    /// The deadline goes into the read's group calls instead of a timer around them: one
    /// around them fired first when the last attempt was still under way, and the read
    /// failed "no outcome within 5s" instead of saying why its attempts failed.
    fn read_deadline(&self) -> Option<Instant>;
}

/// The typed submits and reads of a ledger, alike in meaning for a node in this process
/// and a client of a remote cluster. Every read is `consistency` fresh (see
/// [`Consistency`]); a remote call answers or fails within
/// [`CLIENT_CALL_DEADLINE`](crate::CLIENT_CALL_DEADLINE), retryably. Implemented by
/// [`LedgerNode`], [`LedgerClient`] and [`LedgerHandle`]; sealed.
pub trait LedgerApi: GroupAccess {
    /// Submits one command to its group's leader, group-committed with concurrent
    /// submits of the same group, and returns its outcome. After a `Timeout` the command
    /// may still be applied: resubmit it under the same op id.
    fn submit(
        &self,
        command: Command,
    ) -> impl Future<Output = Result<Outcome, LedgerError>> + Send {
        self.submit_command(command)
    }

    /// An account.
    fn account(
        &self,
        account: AccountId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<Account>, LedgerError>> + Send {
        async move {
            match read_account_group(self, account, Read::Account(account), consistency).await? {
                ReadAnswer::Account(found) => Ok(found),
                other => Err(mismatch("account", &other)),
            }
        }
    }

    /// The key whose secret hashes to `hash`, if it belongs to `account`. Keys live in
    /// their account's group; the account is part of the key's text, so authentication
    /// knows where to look.
    fn key_by_hash(
        &self,
        account: AccountId,
        hash: KeyHash,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<(KeyId, Key)>, LedgerError>> + Send {
        async move {
            match read_account_group(self, account, Read::KeyByHash(hash), consistency).await? {
                ReadAnswer::KeyByHash(found) => Ok(found.filter(|(_, key)| key.account == account)),
                other => Err(mismatch("key by hash", &other)),
            }
        }
    }

    /// A key by id alone (the admin API's revocation), which may be in any group: asks
    /// each in turn.
    fn key(
        &self,
        key: KeyId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<Key>, LedgerError>> + Send {
        async move {
            let deadline = self.read_deadline();
            for group_idx in 0..self.n_groups() {
                let request = ReadRequest { read: Read::Key(key), consistency };
                match self.read_group(group_idx, request, deadline).await? {
                    ReadAnswer::Key(Some(found)) => return Ok(Some(found)),
                    ReadAnswer::Key(None) => {}
                    other => return Err(mismatch("key", &other)),
                }
            }
            Ok(None)
        }
    }

    /// Key `key`, if it belongs to `account`: one read of the account's group.
    fn key_of(
        &self,
        account: AccountId,
        key: KeyId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<Key>, LedgerError>> + Send {
        async move {
            match read_account_group(self, account, Read::Key(key), consistency).await? {
                ReadAnswer::Key(found) => Ok(found.filter(|found| found.account == account)),
                other => Err(mismatch("key", &other)),
            }
        }
    }

    /// Every key of `account` (at most `KEYS_PER_ACCOUNT_MAX`), revoked ones included.
    fn keys(
        &self,
        account: AccountId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Vec<(KeyId, Key)>, LedgerError>> + Send {
        async move {
            match read_account_group(self, account, Read::KeysOf(account), consistency).await? {
                ReadAnswer::Keys(keys) => Ok(keys),
                other => Err(mismatch("keys", &other)),
            }
        }
    }

    /// The request record of a settled hold, if `account` paid for it.
    fn record(
        &self,
        account: AccountId,
        hold: HoldId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<RequestRecord>, LedgerError>> + Send {
        async move {
            let read = Read::Record { account, hold };
            match read_account_group(self, account, read, consistency).await? {
                ReadAnswer::Record(found) => Ok(found),
                other => Err(mismatch("record", &other)),
            }
        }
    }

    /// A page of an account's request history, newest first.
    fn history(
        &self,
        query: HistoryQuery,
        consistency: Consistency,
    ) -> impl Future<Output = Result<HistoryPage, LedgerError>> + Send {
        async move {
            let account = query.account;
            match read_account_group(self, account, Read::History(query), consistency).await? {
                ReadAnswer::History(page) => Ok(page),
                other => Err(mismatch("history", &other)),
            }
        }
    }

    /// An account's usage per bucket, key and model.
    fn usage(
        &self,
        query: UsageQuery,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Vec<UsageRow>, LedgerError>> + Send {
        async move {
            let account = query.account;
            match read_account_group(self, account, Read::Usage(query), consistency).await? {
                ReadAnswer::Usage(rows) => Ok(rows),
                other => Err(mismatch("usage", &other)),
            }
        }
    }

    /// The top-ups of `account`, oldest first.
    fn top_ups(
        &self,
        account: AccountId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Vec<TopUpView>, LedgerError>> + Send {
        async move {
            match read_account_group(self, account, Read::TopUps(account), consistency).await? {
                ReadAnswer::TopUps(top_ups) => Ok(top_ups),
                other => Err(mismatch("top-ups", &other)),
            }
        }
    }

    /// A dashboard user by id, from the user directory.
    fn user(
        &self,
        user: UserId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<User>, LedgerError>> + Send {
        async move {
            match read_account_group(self, USER_DIRECTORY, Read::User(user), consistency).await? {
                ReadAnswer::User(found) => Ok(found),
                other => Err(mismatch("user", &other)),
            }
        }
    }

    /// A dashboard user by lower-case email, from the user directory.
    fn user_by_email(
        &self,
        email: String,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Option<(UserId, User)>, LedgerError>> + Send {
        async move {
            let read = Read::UserByEmail(email);
            match read_account_group(self, USER_DIRECTORY, read, consistency).await? {
                ReadAnswer::UserByEmail(found) => Ok(found),
                other => Err(mismatch("user by email", &other)),
            }
        }
    }

    /// The users of `account`, from the user directory.
    fn members(
        &self,
        account: AccountId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Vec<(UserId, User)>, LedgerError>> + Send {
        async move {
            let read = Read::Members(account);
            match read_account_group(self, USER_DIRECTORY, read, consistency).await? {
                ReadAnswer::Members(found) => Ok(found),
                other => Err(mismatch("members", &other)),
            }
        }
    }

    /// Whether `session` of `account` was revoked.
    fn session_revoked(
        &self,
        account: AccountId,
        session: SessionId,
        consistency: Consistency,
    ) -> impl Future<Output = Result<bool, LedgerError>> + Send {
        async move {
            let read = Read::SessionRevoked(session);
            match read_account_group(self, account, read, consistency).await? {
                ReadAnswer::SessionRevoked(revoked) => Ok(revoked),
                other => Err(mismatch("session revoked", &other)),
            }
        }
    }

    /// The bank check of every group, merged. Each group is read on its own, so with
    /// `Linearizable` each part is current but the parts are not one atomic cut (no
    /// command spans two groups, so every part is consistent in itself).
    fn audit(
        &self,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Audit, LedgerError>> + Send {
        async move {
            let deadline = self.read_deadline();
            let mut audits = Vec::with_capacity(self.n_groups() as usize);
            for group_idx in 0..self.n_groups() {
                let request = ReadRequest { read: Read::Audit, consistency };
                match self.read_group(group_idx, request, deadline).await? {
                    ReadAnswer::Audit(audit) => audits.push(audit),
                    other => return Err(mismatch("audit", &other)),
                }
            }
            Ok(merge_audits(audits))
        }
    }

    /// Succeeds when every group has a leader that a quorum confirms.
    fn ready(&self) -> impl Future<Output = Result<(), LedgerError>> + Send {
        async move {
            let deadline = self.read_deadline();
            for group_idx in 0..self.n_groups() {
                let request =
                    ReadRequest { read: Read::Ping, consistency: Consistency::Linearizable };
                match self.read_group(group_idx, request, deadline).await? {
                    ReadAnswer::Ping => {}
                    other => return Err(mismatch("ping", &other)),
                }
            }
            Ok(())
        }
    }
}

impl LedgerApi for LedgerNode {}
impl LedgerApi for LedgerClient {}
impl LedgerApi for LedgerHandle {}

/// A ledger in this process or a remote cluster, for a caller that serves either (the
/// gateway: dev mode or gateway mode). Both answer every [`LedgerApi`] call with the same
/// meaning. Cheap to clone.
#[derive(Clone)]
pub enum LedgerHandle {
    /// A node in this process.
    Local(LedgerNode),
    /// A cluster of ledger nodes reached over gRPC.
    Remote(LedgerClient),
}

impl GroupAccess for LedgerHandle {
    fn n_groups(&self) -> u32 {
        match self {
            LedgerHandle::Local(node) => node.n_groups(),
            LedgerHandle::Remote(client) => client.n_groups(),
        }
    }

    // Each call's future is boxed (one allocation per call): unboxed, every caller's
    // future would hold the larger of the two (1.2–2.8 KB) and each `.await` level above,
    // up to the request's task, would copy it once more.
    async fn read_group(
        &self,
        group_idx: u32,
        request: ReadRequest,
        deadline: Option<Instant>,
    ) -> Result<ReadAnswer, LedgerError> {
        match self {
            LedgerHandle::Local(node) => {
                Box::pin(node.read_group(group_idx, request, deadline)).await
            }
            LedgerHandle::Remote(client) => {
                Box::pin(client.read_group(group_idx, request, deadline)).await
            }
        }
    }

    async fn submit_command(&self, command: Command) -> Result<Outcome, LedgerError> {
        match self {
            LedgerHandle::Local(node) => Box::pin(node.submit_command(command)).await,
            LedgerHandle::Remote(client) => Box::pin(client.submit_command(command)).await,
        }
    }

    fn read_deadline(&self) -> Option<Instant> {
        match self {
            LedgerHandle::Local(node) => node.read_deadline(),
            LedgerHandle::Remote(client) => client.read_deadline(),
        }
    }
}

async fn read_account_group<R: GroupAccess + ?Sized>(
    reader: &R,
    account: AccountId,
    read: Read,
    consistency: Consistency,
) -> Result<ReadAnswer, LedgerError> {
    let group_idx = group_of_account(account, reader.n_groups());
    let request = ReadRequest { read, consistency };
    reader.read_group(group_idx, request, reader.read_deadline()).await
}

/// An answer of the wrong kind: client and server disagree about the protocol.
fn mismatch(asked: &str, answer: &ReadAnswer) -> LedgerError {
    LedgerError::Invalid(format!("asked for {asked}, got {answer:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use solrouter_ledger::KeyId;
    use std::sync::Mutex;
    use std::time::Duration;

    /// Two groups, like a client's: group 0 answers at once, group 1 fails with its
    /// reason a moment after the deadline it is handed, as a client's last attempt does
    /// when it is still under way at the deadline (its RPC's timeout is cut to the
    /// deadline and fires in the timer's next tick).
    struct SecondRefuses {
        deadlines: Mutex<Vec<Option<Instant>>>,
    }

    impl GroupAccess for SecondRefuses {
        fn n_groups(&self) -> u32 {
            2
        }

        async fn read_group(
            &self,
            group_idx: u32,
            _request: ReadRequest,
            deadline: Option<Instant>,
        ) -> Result<ReadAnswer, LedgerError> {
            self.deadlines.lock().unwrap().push(deadline);
            if group_idx == 0 {
                return Ok(ReadAnswer::Key(None));
            }
            let deadline = deadline.expect("a client's read has a deadline");
            tokio::time::sleep_until(deadline + Duration::from_millis(1)).await;
            Err(LedgerError::Unavailable { reason: "the node the caller knew is gone".into() })
        }

        async fn submit_command(&self, _command: Command) -> Result<Outcome, LedgerError> {
            unreachable!("the test only reads")
        }

        fn read_deadline(&self) -> Option<Instant> {
            Some(Instant::now() + Duration::from_secs(5))
        }
    }

    impl LedgerApi for SecondRefuses {}

    /// A read that asks several groups gives each the read's one deadline, and puts no
    /// timer of its own over them: it fails with the reason its last group call gave,
    /// not with a bare timeout (session 35's CI failed on a 5-s timer around the reads
    /// that fired while the client's last attempt was under way).
    #[tokio::test(start_paused = true)]
    async fn a_read_keeps_one_deadline_and_reports_why_its_group_call_failed() {
        let ledger = SecondRefuses { deadlines: Mutex::default() };
        let started = Instant::now();
        let failed = ledger.key(KeyId(7), Consistency::Linearizable).await.unwrap_err();
        assert!(failed.to_string().contains("the node the caller knew is gone"), "{failed}");
        let deadlines = ledger.deadlines.lock().unwrap().clone();
        let deadline = Some(started + Duration::from_secs(5));
        assert_eq!(deadlines, [deadline, deadline], "one deadline for the read's group calls");
    }
}
