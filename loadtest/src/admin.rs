//! The gateway's admin API (`/v1/admin`, bearer admin token): provisioning the test
//! accounts and their keys before a run, and the money check after it: the ledger's
//! audit is ok and each account was charged exactly the `usage.cost` its clients saw.

use anyhow::{bail, Context, Result};
use futures_util::{stream, StreamExt, TryStreamExt};
use serde_json::{json, Value};
use solrouter_ledger::PicoUsd;
use std::time::Duration;

/// Admin calls in flight at once while provisioning.
const PROVISION_CONCURRENCY: usize = 16;
/// Longest the money check waits for the test accounts' holds to settle: longer than
/// the gateway's settle deadline (30 s), so a settle still being retried lands first.
const SETTLE_WAIT_MAX: Duration = Duration::from_secs(40);
/// How often an account with holds left is read again.
const SETTLE_POLL_INTERVAL: Duration = Duration::from_millis(100);

pub struct Admin {
    pub client: reqwest::Client,
    /// The gateway's base URL.
    pub base: String,
    pub token: String,
}

/// A test account and the keys minted for it.
pub struct TestAccount {
    pub id: String,
    pub keys: Vec<String>,
    /// `spent` when the run started.
    pub spent_before: PicoUsd,
}

/// One account's side of the money check.
pub struct AccountMoney {
    pub id: String,
    pub charged: PicoUsd,
    pub reported: PicoUsd,
}

/// The outcome of the money check.
pub struct MoneyCheck {
    pub audit_ok: bool,
    pub audit: Value,
    pub accounts: Vec<AccountMoney>,
}

impl MoneyCheck {
    pub fn ok(&self) -> bool {
        self.audit_ok && self.accounts.iter().all(|account| account.charged == account.reported)
    }

    pub fn total(&self, amount: impl Fn(&AccountMoney) -> PicoUsd) -> PicoUsd {
        PicoUsd(self.accounts.iter().map(|account| amount(account).0).sum())
    }

    pub fn to_json(&self) -> Value {
        let mismatches: Vec<Value> = self
            .accounts
            .iter()
            .filter(|account| account.charged != account.reported)
            .map(|account| {
                json!({
                    "account": account.id,
                    "charged": account.charged.to_string(),
                    "reported": account.reported.to_string(),
                })
            })
            .collect();
        json!({
            "ok": self.ok(),
            "audit_ok": self.audit_ok,
            "accounts": self.accounts.len(),
            "charged_usd": self.total(|account| account.charged).to_string(),
            "reported_usd": self.total(|account| account.reported).to_string(),
            "mismatches": mismatches,
        })
    }
}

impl Admin {
    /// Creates `n_accounts` accounts with `credit` (decimal USD) and `n_keys` keys each.
    pub async fn provision(
        &self,
        n_accounts: usize,
        credit: &str,
        n_keys: usize,
    ) -> Result<Vec<TestAccount>> {
        let run_tag: u64 = rand::random();
        stream::iter(0..n_accounts)
            .map(|account_idx| {
                self.account(format!("loadtest-{run_tag:x}-{account_idx}"), credit, n_keys)
            })
            .buffered(PROVISION_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn account(&self, name: String, credit: &str, n_keys: usize) -> Result<TestAccount> {
        let account = self.post("/v1/admin/accounts", json!({"name": name})).await?;
        let id = account["id"].as_str().context("account id")?.to_owned();
        let top_up = json!({"amount": credit, "idempotency_key": name});
        self.post(&format!("/v1/admin/accounts/{id}/credits"), top_up).await?;
        let mut keys = Vec::with_capacity(n_keys);
        for key_idx in 0..n_keys {
            let body = json!({"name": format!("loadtest-{key_idx}")});
            let key = self.post(&format!("/v1/admin/accounts/{id}/keys"), body).await?;
            keys.push(key["key"].as_str().context("key")?.to_owned());
        }
        let spent_before = self.spent(&id).await?;
        Ok(TestAccount { id, keys, spent_before })
    }

    /// Compares what each account was charged during the run with `reported` (pico-USD,
    /// in the order of `accounts`), and reads the ledger's audit.
    pub async fn check_money(
        &self,
        accounts: &[TestAccount],
        reported: &[u128],
    ) -> Result<MoneyCheck> {
        assert_eq!(accounts.len(), reported.len(), "a reported sum per test account");
        let mut checked = Vec::with_capacity(accounts.len());
        let deadline = tokio::time::Instant::now() + SETTLE_WAIT_MAX;
        for (account, reported) in accounts.iter().zip(reported) {
            let spent = self.spent_once_settled(&account.id, deadline).await?;
            let charged = spent.0.checked_sub(account.spent_before.0).with_context(|| {
                format!(
                    "account {}: spent went down, from {} to {spent}",
                    account.id, account.spent_before
                )
            })?;
            let (charged, reported) = (PicoUsd(charged), PicoUsd(*reported));
            checked.push(AccountMoney { id: account.id.clone(), charged, reported });
        }
        let audit = self.get("/v1/admin/audit").await?;
        Ok(MoneyCheck { audit_ok: audit["ok"].as_bool() == Some(true), audit, accounts: checked })
    }

    async fn spent(&self, account: &str) -> Result<PicoUsd> {
        Ok(self.spent_and_holds(account).await?.0)
    }

    /// `spent` once the account has no hold left, or at `deadline` whatever it is: a
    /// settle may land after its response reached the client (a gateway that answers
    /// before settling, a settle being retried), and the check must not race it.
    async fn spent_once_settled(
        &self,
        account: &str,
        deadline: tokio::time::Instant,
    ) -> Result<PicoUsd> {
        loop {
            let (spent, n_holds) = self.spent_and_holds(account).await?;
            if n_holds == 0 || tokio::time::Instant::now() >= deadline {
                return Ok(spent);
            }
            tokio::time::sleep(SETTLE_POLL_INTERVAL).await;
        }
    }

    async fn spent_and_holds(&self, account: &str) -> Result<(PicoUsd, u64)> {
        let view = self.get(&format!("/v1/admin/accounts/{account}")).await?;
        let spent = view["spent"].as_str().context("spent")?;
        let spent = PicoUsd::parse_usd(spent).context("spent is a decimal USD string")?;
        Ok((spent, view["holds"].as_u64().context("holds")?))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let request = self.client.post(format!("{}{path}", self.base)).json(&body);
        Self::json(request.bearer_auth(&self.token).send().await?).await
    }

    async fn get(&self, path: &str) -> Result<Value> {
        let request = self.client.get(format!("{}{path}", self.base));
        Self::json(request.bearer_auth(&self.token).send().await?).await
    }

    async fn json(response: reqwest::Response) -> Result<Value> {
        let status = response.status();
        let body: Value = response.json().await?;
        if !status.is_success() {
            bail!("admin API answered {status}: {body}");
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(audit_ok: bool, amounts: &[(u128, u128)]) -> bool {
        let accounts = amounts
            .iter()
            .map(|(charged, reported)| AccountMoney {
                id: "a".into(),
                charged: PicoUsd(*charged),
                reported: PicoUsd(*reported),
            })
            .collect();
        MoneyCheck { audit_ok, audit: Value::Null, accounts }.ok()
    }

    #[test]
    fn any_difference_fails_the_money_check() {
        assert!(check(true, &[(5, 5), (0, 0)]));
        assert!(!check(true, &[(5, 5), (1, 0)]), "one pico-dollar charged and not seen");
        assert!(!check(true, &[(5, 6)]), "seen and not charged");
        // Differences that cancel out across accounts still fail.
        assert!(!check(true, &[(5, 6), (6, 5)]));
        assert!(!check(false, &[(5, 5)]), "a failed audit fails the check");
    }
}
