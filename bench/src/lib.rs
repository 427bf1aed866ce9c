//! Benchmarks of SolRouter's hot paths (`benches/`, run with `cargo bench -p solrouter-bench`),
//! the storage soak (`src/bin/storage_soak.rs`) and the workload generators they share.
//! Benchmarks report numbers; they assert nothing about them.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod history;
pub mod load;
pub mod processes;

use std::time::{SystemTime, UNIX_EPOCH};

use solrouter_ledger::{
    AccountId, Batch, Command, HoldId, KeyId, KeyKind, KeyLimits, Ledger, Op, OpId, PicoUsd,
    RequestRecord, PICO_PER_USD,
};

/// Accounts the lifecycle workload spreads over.
pub const WORKLOAD_ACCOUNTS: u64 = 1024;
/// What each workload account is topped up with: enough for a billion lifecycles.
pub const ACCOUNT_FUNDING: PicoUsd = PicoUsd(1_000_000 * PICO_PER_USD);
/// What a lifecycle reserves (a request's worst case) and what it then settles (its usage).
pub const LIFECYCLE_HOLD: PicoUsd = PicoUsd(2_000_000_000);
pub const LIFECYCLE_ACTUAL: PicoUsd = PicoUsd(1_000_000_000);
/// How far past the batch stamp a lifecycle's hold expires; far above any lifecycle's latency.
pub const LIFECYCLE_HOLD_TTL_MS: u64 = 60_000;

/// The API key of a workload account, which its reserves name.
pub fn workload_key(account: AccountId) -> KeyId {
    KeyId(account.0)
}

/// Commands that create, fund and give a key to the [`WORKLOAD_ACCOUNTS`] accounts, as
/// (create, credit, create key) triples: the others must be applied after the creation.
pub fn funding_commands() -> Vec<[Command; 3]> {
    (0..WORKLOAD_ACCOUNTS)
        .map(|account| {
            let id = AccountId(account);
            let mut hash = [0u8; 32];
            hash[..8].copy_from_slice(&account.to_le_bytes());
            [
                Command {
                    id: OpId(u128::from(account) << 2),
                    op: Op::CreateAccount { account: id, name: format!("bench-{account}") },
                },
                Command {
                    id: OpId(u128::from(account) << 2 | 1),
                    op: Op::Credit { account: id, amount: ACCOUNT_FUNDING },
                },
                Command {
                    id: OpId(u128::from(account) << 2 | 2),
                    op: Op::CreateKey {
                        account: id,
                        key: workload_key(id),
                        name: "bench".into(),
                        hash,
                        kind: KeyKind::Inference,
                        limits: KeyLimits::default(),
                    },
                },
            ]
        })
        .collect()
}

/// A ledger with [`WORKLOAD_ACCOUNTS`] funded accounts.
pub fn funded_ledger() -> Ledger {
    let mut ledger = Ledger::new();
    let commands = funding_commands().into_iter().flatten().collect::<Vec<_>>();
    for chunk in commands.chunks(solrouter_ledger::BATCH_COMMANDS_MAX) {
        ledger.apply(&Batch { stamp_ms: 1, commands: chunk.to_vec() });
    }
    ledger
}

/// Lifecycle number `n` (unique per workload run, the low bits of its hold id): a reserve of [`LIFECYCLE_HOLD`] on
/// account `n % WORKLOAD_ACCOUNTS`, then either a settle of [`LIFECYCLE_ACTUAL`] or, with
/// `release`, a release (a request that incurred no upstream cost). Op ids have bit 64 set,
/// so they never collide with [`funding_commands`].
pub fn lifecycle_commands(n: u64, release: bool) -> [Command; 2] {
    let account = AccountId(n % WORKLOAD_ACCOUNTS);
    // Stamped now, as a gateway does, so the history's retention keeps the record; the
    // hold leads with the same millisecond, as a gateway's does (its record then needs no
    // `holds` row in the history).
    let created_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    let created_ms = u64::try_from(created_ms).unwrap_or(u64::MAX);
    let hold = HoldId::time_ordered(created_ms, u128::from(n));
    let id = u128::from(n) << 2 | 1 << 64;
    let key = workload_key(account);
    let ttl_ms = LIFECYCLE_HOLD_TTL_MS;
    let reserve = Op::Reserve { account, key, hold, amount: LIFECYCLE_HOLD, ttl_ms };
    let finish = if release {
        Op::Release { account, hold }
    } else {
        let record = RequestRecord {
            model: "mock/echo".into(),
            status: 200,
            created_ms,
            ..Default::default()
        };
        // Built before the reserve is answered: no stamp claims the hold forgotten, so
        // the settle is charged whatever becomes of the reserve, as before stamps.
        let reserved_at_ms = u64::MAX;
        Op::Settle { account, hold, actual: LIFECYCLE_ACTUAL, record, reserved_at_ms }
    };
    [Command { id: OpId(id), op: reserve }, Command { id: OpId(id | 2), op: finish }]
}

/// `n_lifecycles` request lifecycles (reserve, then settle below the hold) as two batches,
/// the way a group-committing leader would see them under load. `first` makes ids unique.
pub fn lifecycle_batches(first: u64, n_lifecycles: usize, stamp_ms: u64) -> [Batch; 2] {
    let (reserves, settles) = (first..first + n_lifecycles as u64)
        .map(|n| {
            let [reserve, settle] = lifecycle_commands(n, false);
            (reserve, settle)
        })
        .unzip();
    [Batch { stamp_ms, commands: reserves }, Batch { stamp_ms, commands: settles }]
}
