//! The end of a run: the human summary on stdout and the JSON report, from both phases
//! and the money check.

use crate::admin::MoneyCheck;
use crate::schedule::Load;
use crate::stats::{overhead_ms, PhaseReport};
use crate::Args;
use serde_json::{json, Value};

pub struct Report<'a> {
    pub args: &'a Args,
    pub plan_load: &'a Load,
    /// Through the gateways.
    pub through: PhaseReport,
    /// Straight to the upstream mock, when measured.
    pub straight: Option<PhaseReport>,
    pub money: MoneyCheck,
}

impl Report<'_> {
    pub fn print(&self) {
        println!("load: {}  mix: {}  model: {}", self.load_line(), self.args.mix, self.args.model);
        self.through.print();
        if let Some(straight) = &self.straight {
            straight.print();
            let overhead = overhead_ms(&self.through, straight);
            let parts: Vec<String> =
                overhead.iter().map(|(label, ms)| format!("{label} {ms:+.3}")).collect();
            println!("gateway overhead ms (gateway - direct): {}", parts.join("  "));
        }
        let money = &self.money;
        println!(
            "money: charged {} USD, clients saw {} USD over {} accounts; audit {}",
            money.total(|account| account.charged),
            money.total(|account| account.reported),
            money.accounts.len(),
            if money.audit_ok { "ok" } else { "FAILED" },
        );
        for account in money.accounts.iter().filter(|account| account.charged != account.reported) {
            println!(
                "  MISMATCH account {}: charged {} USD, clients saw {} USD",
                account.id, account.charged, account.reported
            );
        }
        let n_unseen =
            self.through.tally.errors.iter().filter(|(kind, _)| !kind.starts_with("status"));
        let n_unseen: u64 = n_unseen.map(|(_, n)| n).sum();
        if !money.ok() && n_unseen > 0 {
            println!(
                "  note: {n_unseen} requests failed in transport, mid-stream or without a readable \
                 usage.cost; what the gateway charged for them, their clients never saw"
            );
        }
        if !money.audit_ok {
            println!("  audit: {}", money.audit);
        }
        println!("money check: {}", if money.ok() { "ok" } else { "FAILED" });
    }

    pub fn to_json(&self) -> Value {
        let overhead = self.straight.as_ref().map(|straight| {
            let pairs = overhead_ms(&self.through, straight).into_iter();
            Value::Object(pairs.map(|(label, ms)| (label.to_owned(), json!(ms))).collect())
        });
        let (mode, steps) = match self.plan_load {
            Load::Open(steps) => ("open", steps),
            Load::Closed(steps) => ("closed", steps),
        };
        json!({
            "config": {
                "mode": mode,
                "steps": steps.values(),
                "step_s": steps.step().as_secs_f64(),
                "duration_s": steps.end().as_secs_f64(),
                "requests_max": self.args.requests,
                "gateways": self.args.gateway,
                "mix": self.args.mix,
                "model": self.args.model,
                "accounts": self.args.accounts,
                "keys_per_account": self.args.keys_per_account,
                "hot_share": self.args.hot_share,
                "seed": self.args.seed,
            },
            "gateway": self.through.to_json(),
            "direct": self.straight.as_ref().map(PhaseReport::to_json),
            "overhead_ms": overhead,
            "money": self.money.to_json(),
            "ok": self.money.ok(),
        })
    }

    fn load_line(&self) -> String {
        let (unit, steps) = match self.plan_load {
            Load::Open(steps) => ("req/s", steps),
            Load::Closed(steps) => ("in flight", steps),
        };
        let values: Vec<String> = steps.values().iter().map(u32::to_string).collect();
        format!(
            "{} {unit}, steps of {:.1} s, {:.1} s per phase",
            values.join(" → "),
            steps.step().as_secs_f64(),
            steps.end().as_secs_f64()
        )
    }
}
