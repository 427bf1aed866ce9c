//! Benchmarks of SolRouter's hot paths (`benches/`, run with `cargo bench -p solrouter-bench`)
//! and the workload generators they share. Benchmarks report numbers; they assert nothing.
#![forbid(unsafe_code)]

use solrouter_ledger::{
    AccountId, Batch, Command, HoldId, Ledger, Op, OpId, PicoUsd, RequestRecord, PICO_PER_USD,
};

/// Accounts the lifecycle workload spreads over.
pub const WORKLOAD_ACCOUNTS: u64 = 1024;

/// A ledger with [`WORKLOAD_ACCOUNTS`] funded accounts.
pub fn funded_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    let commands = (0..WORKLOAD_ACCOUNTS)
        .flat_map(|account| {
            let id = AccountId(account);
            let amount = PicoUsd(1_000_000 * PICO_PER_USD);
            [
                Command {
                    id: OpId(u128::from(account) << 1),
                    op: Op::CreateAccount { account: id, name: format!("bench-{account}") },
                },
                Command {
                    id: OpId(u128::from(account) << 1 | 1),
                    op: Op::Credit { account: id, amount },
                },
            ]
        })
        .collect::<Vec<_>>();
    for chunk in commands.chunks(solrouter_ledger::BATCH_COMMANDS_MAX) {
        ledger.apply(&Batch { stamp_ms: 1, commands: chunk.to_vec() });
    }
    ledger
}

/// `n_lifecycles` request lifecycles (reserve, then settle below the hold) as two batches,
/// the way a group-committing leader would see them under load. `first` makes ids unique.
pub fn lifecycle_batches(first: u64, n_lifecycles: usize, stamp_ms: u64) -> [Batch; 2] {
    let lifecycle = |index: usize| {
        let n = first + index as u64;
        (
            AccountId(n % WORKLOAD_ACCOUNTS),
            HoldId(u128::from(n)),
            OpId(u128::from(n) << 2 | 1 << 64),
        )
    };
    let reserves = (0..n_lifecycles)
        .map(|index| {
            let (account, hold, id) = lifecycle(index);
            let amount = PicoUsd(2_000_000_000);
            let expires_at_ms = stamp_ms + 60_000;
            Command { id, op: Op::Reserve { account, hold, amount, expires_at_ms } }
        })
        .collect();
    let settles = (0..n_lifecycles)
        .map(|index| {
            let (account, hold, id) = lifecycle(index);
            let record =
                RequestRecord { model: "mock/echo".into(), status: 200, ..Default::default() };
            let op = Op::Settle { account, hold, actual: PicoUsd(1_000_000_000), record };
            Command { id: OpId(id.0 | 2), op }
        })
        .collect();
    [Batch { stamp_ms, commands: reserves }, Batch { stamp_ms, commands: settles }]
}
