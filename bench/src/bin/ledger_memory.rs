//! What the ledger's time-bounded sets (the op-id window and the ended holds) cost: resident
//! bytes per remembered entry and apply time per lifecycle (reserve, then settle), while
//! the window fills and once it is full (entries forgotten as fast as they come), and what
//! applying costs right after a snapshot's copy was taken. A measurement, not a test (it
//! asserts only that the ledger still audits): `cargo run --release -p solrouter-bench
//! --bin ledger_memory`.

use solrouter_bench::ACCOUNT_FUNDING;
use solrouter_ledger::*;
use std::time::{Duration, Instant};

/// Lifecycles per pair of batches (the reserves, then their settles).
const PER_BATCH: u64 = 2048;
/// Accounts the lifecycles spread over, each funded for all of them.
const N_ACCOUNTS: u64 = 1024;
/// Lifecycles remembered once the window is full.
const WINDOW_LIFECYCLES: u64 = 1 << 20;
/// Stamps between batches: the window ([`OPS_REMEMBERED_FOR_MS`]) then holds
/// [`WINDOW_LIFECYCLES`].
const STEP_MS: u64 = OPS_REMEMBERED_FOR_MS * PER_BATCH / WINDOW_LIFECYCLES;

/// Resident set size of this process, from `/proc/self/statm`.
fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux");
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Accounts funded as the other benchmarks' are: $1 million each. The ledger keeps an
/// ended hold whole behind a pointer when the balance it left is over $604 billion
/// (`PackedEnded`), as every hold of this benchmark's accounts was while they were funded
/// with `AMOUNT_MAX` (a trillion dollars each; docs/storage.md, "Ended holds in 96
/// bytes").
fn funded() -> Ledger {
    let mut ledger = Ledger::new();
    for account in 0..N_ACCOUNTS {
        let (id, key) = (AccountId(account), KeyId(account));
        let mut hash = [0u8; 32];
        hash[..8].copy_from_slice(&account.to_le_bytes());
        let ops = [
            Op::CreateAccount { account: id, name: format!("a{account}") },
            Op::Credit { account: id, amount: ACCOUNT_FUNDING },
            Op::CreateKey {
                account: id,
                key,
                name: "k".into(),
                hash,
                kind: KeyKind::Inference,
                limits: KeyLimits::default(),
            },
        ];
        let commands = ops
            .into_iter()
            .enumerate()
            .map(|(i, op)| Command { id: OpId(u128::from(account) << 8 | i as u128), op })
            .collect();
        ledger.apply(&Batch { stamp_ms: 1, commands });
    }
    ledger
}

/// Random-looking ids, as clients make them.
fn id(n: u64, kind: u128) -> u128 {
    (u128::from(n) << 2 | kind).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1 << 127
}

/// Batch pair `b`: the reserves and the settles of lifecycles `b * PER_BATCH..`.
fn batches(b: u64) -> [Batch; 2] {
    let stamp_ms = 1_000 + b * STEP_MS;
    let (reserves, settles) = (b * PER_BATCH..(b + 1) * PER_BATCH)
        .map(|n| {
            let (account, hold) = (AccountId(n % N_ACCOUNTS), HoldId(id(n, 0)));
            let key = KeyId(account.0);
            let amount = PicoUsd(2_000_000_000);
            let reserve = Op::Reserve { account, key, hold, amount, ttl_ms: 600_000 };
            let record = RequestRecord { model: "m".into(), status: 200, ..Default::default() };
            let actual = PicoUsd(1_000_000_000);
            let settle = Op::Settle { account, hold, actual, record, reserved_at_ms: stamp_ms };
            (
                Command { id: OpId(id(n, 1)), op: reserve },
                Command { id: OpId(id(n, 2)), op: settle },
            )
        })
        .unzip();
    [Batch { stamp_ms, commands: reserves }, Batch { stamp_ms, commands: settles }]
}

/// Applies batch pairs `from..to`, timing only the applies.
fn run(ledger: &mut Ledger, from: u64, to: u64) -> Duration {
    let mut took = Duration::ZERO;
    for b in from..to {
        let pair = batches(b);
        let started = Instant::now();
        for batch in &pair {
            ledger.apply(batch);
        }
        took += started.elapsed();
    }
    took
}

fn report(phase: &str, ledger: &Ledger, rss_before: u64, took: Duration, n_lifecycles: u64) {
    let entries = ledger.n_op_ids_remembered() + ledger.n_ended_holds_remembered();
    let grown = rss_bytes().saturating_sub(rss_before);
    let per_second = n_lifecycles as f64 / took.as_secs_f64();
    println!(
        "{phase}: {} op ids + {} ended holds remembered, RSS +{} MB ({} B per entry), \
         {per_second:.0} lifecycles/s",
        ledger.n_op_ids_remembered(),
        ledger.n_ended_holds_remembered(),
        grown >> 20,
        grown / entries.max(1) as u64,
    );
}

fn main() {
    let mut ledger = funded();
    let rss_before = rss_bytes();
    let n_fill = WINDOW_LIFECYCLES / PER_BATCH;
    let took = run(&mut ledger, 0, n_fill);
    report("filling", &ledger, rss_before, took, n_fill * PER_BATCH);
    let took = run(&mut ledger, n_fill, 3 * n_fill);
    report("full, 2 windows later", &ledger, rss_before, took, 2 * n_fill * PER_BATCH);
    // A snapshot's copy shares the state; the applies after it pay for what they change.
    let mut took = Duration::ZERO;
    let mut copies = Vec::new();
    for b in 3 * n_fill..4 * n_fill {
        if b % 64 == 0 {
            copies.push(ledger.clone());
        }
        took += run(&mut ledger, b, b + 1);
        if copies.len() > 1 {
            copies.remove(0);
        }
    }
    report("full, copied every 64 batch pairs", &ledger, rss_before, took, n_fill * PER_BATCH);
    assert!(ledger.audit().ok, "the ledger no longer audits");
}
