//! Behaviour of the two-phase ledger at its boundary: batches in, outcomes and state out.

use proptest::prelude::*;
use solrouter_ledger::*;

const ACCOUNT: AccountId = AccountId(7);

struct Harness {
    ledger: Ledger,
    next_op: u128,
    stamp_ms: u64,
}

impl Harness {
    fn new() -> Harness {
        let mut harness = Harness { ledger: Ledger::new(), next_op: 1, stamp_ms: 1_000 };
        let name = "acme".to_string();
        harness.ok(Op::CreateAccount { account: ACCOUNT, name });
        harness
    }

    fn run(&mut self, op: Op) -> Outcome {
        self.next_op += 1;
        self.run_as(OpId(self.next_op), op)
    }

    fn run_as(&mut self, id: OpId, op: Op) -> Outcome {
        let batch = Batch { stamp_ms: self.stamp_ms, commands: vec![Command { id, op }] };
        let mut outcomes = self.ledger.apply(&batch);
        assert!(self.ledger.audit().ok, "{:?}", self.ledger.audit());
        outcomes.pop().unwrap()
    }

    fn ok(&mut self, op: Op) -> Reply {
        self.run(op).expect("operation should succeed")
    }

    fn account(&self) -> Account {
        self.ledger.account(ACCOUNT).unwrap().clone()
    }
}

fn usd(text: &str) -> PicoUsd {
    PicoUsd::parse_usd(text).unwrap()
}

fn reserve(hold: u128, amount: &str, expires_at_ms: u64) -> Op {
    Op::Reserve { account: ACCOUNT, hold: HoldId(hold), amount: usd(amount), expires_at_ms }
}

fn settle(hold: u128, actual: &str) -> Op {
    let record = RequestRecord { model: "mock/echo".into(), status: 200, ..Default::default() };
    Op::Settle { account: ACCOUNT, hold: HoldId(hold), actual: usd(actual), record }
}

#[test]
fn reserve_is_admitted_only_within_available() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    assert_eq!(
        h.ok(reserve(1, "0.60", 60_000)),
        Reply::Reserved { available: usd("0.40").0 as i128 }
    );
    let refused = h.run(reserve(2, "0.50", 60_000));
    assert_eq!(refused, Err(Rejection::InsufficientFunds { available: usd("0.40").0 as i128 }));
    assert_eq!(h.account().debits_pending, usd("0.60"));
}

#[test]
fn settle_posts_actual_and_releases_the_rest() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.60", 60_000));
    let settled = h.ok(settle(1, "0.25"));
    let expected =
        Reply::Settled { posted: usd("0.25"), released: usd("0.35"), excess: PicoUsd::ZERO };
    assert_eq!(settled, expected);
    let account = h.account();
    assert_eq!((account.debits_posted, account.debits_pending), (usd("0.25"), PicoUsd::ZERO));
    assert_eq!(account.available(), usd("0.75").0 as i128);
    let (owner, record) = h.ledger.record(HoldId(1)).unwrap();
    assert_eq!((owner, record.cost), (ACCOUNT, usd("0.25")));
}

#[test]
fn settle_beyond_the_hold_debits_the_excess_and_may_go_negative() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("0.10") });
    h.ok(reserve(1, "0.10", 60_000));
    let settled = h.ok(settle(1, "0.15"));
    let expected =
        Reply::Settled { posted: usd("0.10"), released: PicoUsd::ZERO, excess: usd("0.05") };
    assert_eq!(settled, expected);
    assert_eq!(h.account().available(), -(usd("0.05").0 as i128));
    // A negative balance blocks new reservations, even of zero.
    assert!(matches!(h.run(reserve(2, "0", 60_000)), Err(Rejection::InsufficientFunds { .. })));
}

#[test]
fn settling_twice_returns_the_first_result() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.50", 60_000));
    let first = h.ok(settle(1, "0.20"));
    assert_eq!(h.ok(settle(1, "0.40")), first, "a second settle under a new id is a no-op");
    assert_eq!(h.account().debits_posted, usd("0.20"));
}

#[test]
fn operation_ids_are_idempotent() {
    let mut h = Harness::new();
    let credit = Op::Credit { account: ACCOUNT, amount: usd("2.00") };
    let first = h.run_as(OpId(99), credit.clone());
    assert_eq!(h.run_as(OpId(99), credit), first);
    assert_eq!(h.account().credits, usd("2.00"));
    let other = Op::Credit { account: ACCOUNT, amount: usd("3.00") };
    assert_eq!(h.run_as(OpId(99), other), Err(Rejection::IdReused));
}

#[test]
fn expiry_is_applied_from_the_batch_stamp() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.80", 2_000));
    h.stamp_ms = 1_999;
    assert!(h.run(reserve(2, "0.50", 10_000)).is_err(), "hold 1 still live");
    h.stamp_ms = 2_000;
    h.ok(reserve(3, "0.50", 10_000));
    // Settling the expired hold is a direct debit.
    let settled = h.ok(settle(1, "0.10"));
    let expected =
        Reply::Settled { posted: PicoUsd::ZERO, released: PicoUsd::ZERO, excess: usd("0.10") };
    assert_eq!(settled, expected);
    // A stamp going backwards does not un-expire anything.
    h.stamp_ms = 500;
    assert_eq!(h.ledger.stamp_ms(), 2_000);
    assert_eq!(
        h.run(Op::Release { account: ACCOUNT, hold: HoldId(1) }),
        Err(Rejection::UnknownHold)
    );
}

#[test]
fn release_voids_a_hold() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.30", 60_000));
    assert_eq!(
        h.ok(Op::Release { account: ACCOUNT, hold: HoldId(1) }),
        Reply::Released { amount: usd("0.30") }
    );
    assert_eq!(h.account().available(), usd("1.00").0 as i128);
    let again = Op::Release { account: ACCOUNT, hold: HoldId(1) };
    assert_eq!(h.run(again), Err(Rejection::UnknownHold));
}

#[test]
fn keys_are_found_by_hash_and_revoked() {
    let mut h = Harness::new();
    let hash = [3u8; 32];
    let create = Op::CreateKey { account: ACCOUNT, key: KeyId(5), name: "ci".into(), hash };
    h.ok(create);
    let (id, key) = h.ledger.key_by_hash(&hash).unwrap();
    assert_eq!((id, key.account, key.revoked), (KeyId(5), ACCOUNT, false));
    h.ok(Op::RevokeKey { account: ACCOUNT, key: KeyId(5) });
    assert!(h.ledger.key(KeyId(5)).unwrap().revoked);
    let wrong_account = Op::RevokeKey { account: AccountId(8), key: KeyId(5) };
    assert_eq!(h.run(wrong_account), Err(Rejection::UnknownKey));
}

#[test]
fn invalid_commands_are_rejected_before_touching_state() {
    let mut h = Harness::new();
    let zero = Op::Credit { account: ACCOUNT, amount: PicoUsd::ZERO };
    assert!(matches!(h.run(zero), Err(Rejection::Invalid(_))));
    let huge = Op::Credit { account: ACCOUNT, amount: PicoUsd(AMOUNT_MAX.0 + 1) };
    assert!(matches!(h.run(huge), Err(Rejection::Invalid(_))));
    let unknown = Op::Credit { account: AccountId(1), amount: usd("1") };
    assert_eq!(h.run(unknown), Err(Rejection::UnknownAccount));
    assert!(
        matches!(h.run(reserve(1, "0", 1_000)), Err(Rejection::Invalid(_))),
        "expiry in the past"
    );
}

/// One step of a random workload over a few accounts and holds.
#[derive(Debug, Clone)]
enum Step {
    Credit { account: u8, cents: u32 },
    Reserve { account: u8, hold: u8, cents: u32, ttl_ms: u16 },
    Settle { account: u8, hold: u8, cents: u32 },
    Release { account: u8, hold: u8 },
    Tick { ms: u16 },
    Replay { back: u8 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3u8, 1..10_000u32).prop_map(|(account, cents)| Step::Credit { account, cents }),
        (0..3u8, 0..16u8, 0..5_000u32, 1..2_000u16).prop_map(|(account, hold, cents, ttl_ms)| {
            Step::Reserve { account, hold, cents, ttl_ms }
        }),
        (0..3u8, 0..16u8, 0..6_000u32).prop_map(|(account, hold, cents)| Step::Settle {
            account,
            hold,
            cents
        }),
        (0..3u8, 0..16u8).prop_map(|(account, hold)| Step::Release { account, hold }),
        (0..1_500u16).prop_map(|ms| Step::Tick { ms }),
        (0..8u8).prop_map(|back| Step::Replay { back }),
    ]
}

fn cents(n: u32) -> PicoUsd {
    PicoUsd(u128::from(n) * PICO_PER_USD / 100)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The bank invariant holds after every batch of any workload, a replica replaying the
    /// same batches (even re-delivered ones) ends identical, and the sum of acknowledged
    /// top-ups equals the sum of credits.
    #[test]
    fn bank_invariant_holds_under_random_workloads(steps in prop::collection::vec(step(), 1..200)) {
        let mut ledger = Ledger::new();
        let mut batches: Vec<Batch> = Vec::new();
        let mut stamp_ms = 1_000u64;
        let mut acknowledged_credits = 0u128;
        let mut commands = Vec::new();
        for account in 0..3u64 {
            let op = Op::CreateAccount { account: AccountId(account), name: format!("a{account}") };
            commands.push(Command { id: OpId(u128::from(account) + 1_000_000), op });
        }
        batches.push(Batch { stamp_ms, commands });
        ledger.apply(&batches[0]);
        for (index, step) in steps.into_iter().enumerate() {
            let id = OpId(index as u128 + 1);
            let op = match step {
                Step::Credit { account, cents: n } => Op::Credit { account: AccountId(account.into()), amount: cents(n) },
                Step::Reserve { account, hold, cents: n, ttl_ms } => Op::Reserve {
                    account: AccountId(account.into()), hold: HoldId(hold.into()), amount: cents(n),
                    expires_at_ms: stamp_ms + u64::from(ttl_ms),
                },
                Step::Settle { account, hold, cents: n } => Op::Settle {
                    account: AccountId(account.into()), hold: HoldId(hold.into()), actual: cents(n),
                    record: RequestRecord::default(),
                },
                Step::Release { account, hold } => Op::Release { account: AccountId(account.into()), hold: HoldId(hold.into()) },
                Step::Tick { ms } => { stamp_ms += u64::from(ms); continue; }
                Step::Replay { back } => {
                    // Re-deliver an earlier batch: idempotency must make it a no-op.
                    let earlier = batches[batches.len().saturating_sub(1 + back as usize)].clone();
                    let before = ledger.clone();
                    let mut replay = earlier.clone();
                    replay.stamp_ms = stamp_ms;
                    let first = ledger.apply(&replay);
                    let again = ledger.apply(&replay);
                    prop_assert_eq!(first, again);
                    prop_assert_eq!(before.audit().credits, ledger.audit().credits);
                    batches.push(replay);
                    continue;
                }
            };
            let batch = Batch { stamp_ms, commands: vec![Command { id, op: op.clone() }] };
            let outcome = ledger.apply(&batch).pop().unwrap();
            if let (Op::Credit { amount, .. }, Ok(_)) = (&op, &outcome) {
                acknowledged_credits += amount.0;
            }
            if let (Op::Reserve { .. }, Ok(Reply::Reserved { available })) = (&op, &outcome) {
                prop_assert!(*available >= 0);
            }
            batches.push(batch);
            let audit = ledger.audit();
            prop_assert!(audit.ok, "{:?}", audit.problems);
        }
        prop_assert_eq!(ledger.audit().credits.0, acknowledged_credits);
        let mut replica = Ledger::new();
        for batch in &batches {
            replica.apply(batch);
        }
        prop_assert_eq!(&replica, &ledger);
    }
}
