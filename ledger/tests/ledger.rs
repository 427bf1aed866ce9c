//! Behaviour of the two-phase ledger at its boundary: batches in, outcomes and state out.

use proptest::prelude::*;
use solrouter_ledger::*;

const ACCOUNT: AccountId = AccountId(7);
const KEY: KeyId = KeyId(70);

struct Harness {
    ledger: Ledger,
    next_op: u128,
    stamp_ms: u64,
    /// What a history store keeps: each hold's first settled record.
    history: std::collections::HashMap<HoldId, (AccountId, RequestRecord)>,
    /// The stamp each hold's reserve was answered with, as a gateway keeps it to settle.
    reserved_at: std::collections::HashMap<HoldId, u64>,
}

impl Harness {
    fn new() -> Harness {
        let mut harness = Harness {
            ledger: Ledger::new(),
            next_op: 1,
            stamp_ms: 1_000,
            history: std::collections::HashMap::new(),
            reserved_at: std::collections::HashMap::new(),
        };
        let name = "acme".to_string();
        harness.ok(Op::CreateAccount { account: ACCOUNT, name });
        harness.ok(create_key(ACCOUNT, KEY, [7; 32], KeyLimits::default()));
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
        for (account, hold, record) in settled_records(&batch, &outcomes) {
            self.history.entry(hold).or_insert((account, record));
        }
        let outcome = outcomes.pop().unwrap();
        if let (Op::Reserve { hold, .. }, Ok(Reply::Reserved { reserved_at_ms, .. })) =
            (&batch.commands[0].op, &outcome)
        {
            self.reserved_at.insert(*hold, *reserved_at_ms);
        }
        outcome
    }

    /// A settle of `hold` as a gateway sends it, with the stamp its reserve was answered
    /// with (a hold never reserved claims the current stamp).
    fn settle_with(&self, hold: u128, actual: &str, record: RequestRecord) -> Op {
        self.settle_as(ACCOUNT, hold, actual, record)
    }

    /// The same, naming `account`.
    fn settle_as(&self, account: AccountId, hold: u128, actual: &str, record: RequestRecord) -> Op {
        let hold = HoldId(hold);
        let reserved_at_ms = self.reserved_at.get(&hold).copied().unwrap_or(self.stamp_ms);
        Op::Settle { account, hold, actual: usd(actual), record, reserved_at_ms }
    }

    fn settle(&self, hold: u128, actual: &str) -> Op {
        self.settle_with(hold, actual, echo_record())
    }

    fn record(&self, hold: HoldId) -> (AccountId, RequestRecord) {
        self.history[&hold].clone()
    }

    fn ok(&mut self, op: Op) -> Reply {
        self.run(op).expect("operation should succeed")
    }

    fn account(&self) -> Account {
        self.ledger.account(ACCOUNT).unwrap().clone()
    }
}

/// A plain answer's record, as the mock's echo model makes it.
fn echo_record() -> RequestRecord {
    RequestRecord { model: "mock/echo".into(), status: 200, ..Default::default() }
}

fn usd(text: &str) -> PicoUsd {
    PicoUsd::parse_usd(text).unwrap()
}

fn create_key(account: AccountId, key: KeyId, hash: KeyHash, limits: KeyLimits) -> Op {
    let (name, kind) = ("k".to_string(), KeyKind::Inference);
    Op::CreateKey { account, key, name, hash, kind, limits }
}

fn reserve(hold: u128, amount: &str, ttl_ms: u64) -> Op {
    Op::Reserve { account: ACCOUNT, key: KEY, hold: HoldId(hold), amount: usd(amount), ttl_ms }
}

#[test]
fn reserve_is_admitted_only_within_available() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    assert_eq!(
        h.ok(reserve(1, "0.60", 60_000)),
        Reply::Reserved { available: usd("0.40").0 as i128, reserved_at_ms: 1_000 }
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
    let settled = h.ok(h.settle(1, "0.25"));
    let expected =
        Reply::Settled { charged: usd("0.25"), released: usd("0.35"), written_off: PicoUsd::ZERO };
    assert_eq!(settled, expected);
    let account = h.account();
    assert_eq!((account.debits_posted, account.debits_pending), (usd("0.25"), PicoUsd::ZERO));
    assert_eq!(account.available(), usd("0.75").0 as i128);
    let (owner, record) = h.record(HoldId(1));
    assert_eq!((owner, record.cost, record.written_off), (ACCOUNT, usd("0.25"), PicoUsd::ZERO));
    assert_eq!(h.ledger.key(KEY).unwrap().usage, PicoUsd::ZERO, "the record named no key");
}

/// A settle naming another account than its pending hold's changes nothing: the hold stays
/// pending, in its expiry order too, for its own account's settle.
#[test]
fn a_settle_of_another_accounts_hold_leaves_it_pending() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(Op::CreateAccount { account: AccountId(8), name: "other".into() });
    h.ok(reserve(1, "0.60", 60_000));
    h.ok(reserve(2, "0.10", 60_000));
    let foreign = h.settle_as(AccountId(8), 1, "0.25", echo_record());
    assert_eq!(h.run(foreign), Err(Rejection::UnknownHold));
    let unknown = h.settle_as(AccountId(9), 1, "0.25", echo_record());
    assert_eq!(h.run(unknown), Err(Rejection::UnknownAccount));
    assert_eq!(h.account().debits_pending, usd("0.70"));
    assert_eq!(h.ledger.next_expiry_ms(), Some(61_000));
    let settled = h.ok(h.settle(1, "0.25"));
    assert_eq!(
        settled,
        Reply::Settled { charged: usd("0.25"), released: usd("0.35"), written_off: PicoUsd::ZERO }
    );
    h.stamp_ms = 61_000;
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("0.01") });
    assert_eq!(h.ledger.next_expiry_ms(), None, "hold 2 expired in its order");
    assert_eq!(h.account().debits_pending, PicoUsd::ZERO);
}

#[test]
fn settle_beyond_the_hold_charges_from_the_balance_first() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.10", 60_000));
    let settled = h.ok(h.settle(1, "0.15"));
    let expected = Reply::Settled {
        charged: usd("0.15"),
        released: PicoUsd::ZERO,
        written_off: PicoUsd::ZERO,
    };
    assert_eq!(settled, expected);
    assert_eq!(h.account().available(), usd("0.85").0 as i128);
}

#[test]
fn a_waived_settle_charges_nothing_and_writes_the_provider_bill_off() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.10", 60_000));
    let record = RequestRecord { key: Some(KEY), waived: true, ..RequestRecord::default() };
    let waived = h.settle_with(1, "0.02", record);
    let settled = h.ok(waived);
    let expected =
        Reply::Settled { charged: PicoUsd::ZERO, released: usd("0.10"), written_off: usd("0.02") };
    assert_eq!(settled, expected);
    let account = h.account();
    assert_eq!((account.available(), account.written_off), (usd("1.00").0 as i128, usd("0.02")));
    let (_, record) = h.record(HoldId(1));
    assert_eq!(
        (record.cost, record.written_off, record.waived),
        (PicoUsd::ZERO, usd("0.02"), true)
    );
    assert_eq!(h.ledger.key(KEY).unwrap().usage, PicoUsd::ZERO);
    let audit = h.ledger.audit();
    assert_eq!((audit.ok, audit.written_off), (true, usd("0.02")));
}

#[test]
fn settle_beyond_the_funds_writes_the_rest_off_and_never_goes_negative() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("0.12") });
    h.ok(reserve(1, "0.10", 60_000));
    let record = RequestRecord { key: Some(KEY), ..RequestRecord::default() };
    let over = h.settle_with(1, "0.15", record);
    let settled = h.ok(over);
    let expected =
        Reply::Settled { charged: usd("0.12"), released: PicoUsd::ZERO, written_off: usd("0.03") };
    assert_eq!(settled, expected);
    let account = h.account();
    assert_eq!((account.available(), account.written_off), (0, usd("0.03")));
    assert_eq!(account.debits_posted, usd("0.12"), "the loss is not a debit");
    let (_, record) = h.record(HoldId(1));
    assert_eq!((record.cost, record.written_off), (usd("0.12"), usd("0.03")));
    assert_eq!(h.ledger.key(KEY).unwrap().usage, usd("0.12"), "a key is charged what was");
    let audit = h.ledger.audit();
    assert_eq!((audit.ok, audit.written_off), (true, usd("0.03")));
    // An empty balance still admits a reserve of nothing, and nothing more.
    h.ok(reserve(2, "0", 60_000));
    assert!(matches!(h.run(reserve(3, "0.01", 60_000)), Err(Rejection::InsufficientFunds { .. })));
}

#[test]
fn settling_twice_returns_the_first_result() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.50", 60_000));
    let first = h.ok(h.settle(1, "0.20"));
    assert_eq!(h.ok(h.settle(1, "0.40")), first, "a second settle under a new id is a no-op");
    assert_eq!(h.account().debits_posted, usd("0.20"));
    // The same after the hold would have expired, and for a write-off.
    h.ok(reserve(2, "0.10", 1_000));
    let over = h.ok(h.settle(2, "5.00"));
    assert_eq!(
        over,
        Reply::Settled { charged: usd("0.80"), released: PicoUsd::ZERO, written_off: usd("4.20") }
    );
    h.stamp_ms += 10_000;
    assert_eq!(h.ok(h.settle(2, "5.00")), over);
    assert_eq!((h.account().written_off, h.ledger.audit().written_off), (usd("4.20"), usd("4.20")));
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

/// A top-up retried after ten minutes of other traffic (by batch stamps, far past the op-id
/// window) still credits once and answers its first reply.
#[test]
fn a_top_up_retried_after_ten_minutes_of_traffic_credits_once() {
    const TRAFFIC_MS: u64 = 10 * 60 * 1000;
    const BATCH_EVERY_MS: u64 = 250;
    let mut h = Harness::new();
    let top_up = Op::Credit { account: ACCOUNT, amount: usd("5.00") };
    let first = h.run_as(OpId(u128::MAX), top_up.clone());
    assert_eq!(first, Ok(Reply::Credited { credits: usd("5.00") }));
    let started_ms = h.stamp_ms;
    while h.stamp_ms < started_ms + TRAFFIC_MS {
        h.stamp_ms += BATCH_EVERY_MS;
        let hold = u128::from(h.stamp_ms);
        assert!(matches!(h.ok(reserve(hold, "0.01", 30_000)), Reply::Reserved { .. }));
        assert!(matches!(h.ok(h.settle(hold, "0.001")), Reply::Settled { .. }));
    }
    let charged = h.account().debits_posted;
    assert_eq!(charged.0, usd("0.001").0 * u128::from(TRAFFIC_MS / BATCH_EVERY_MS));
    assert_eq!(h.run_as(OpId(u128::MAX), top_up), first);
    assert_eq!(h.account().credits, usd("5.00"));
    assert_eq!(h.ledger.audit().credited, usd("5.00"));
    // The same idempotency key for another amount is refused, however late.
    let other = Op::Credit { account: ACCOUNT, amount: usd("6.00") };
    assert_eq!(h.run_as(OpId(u128::MAX), other), Err(Rejection::IdReused));
}

/// An ended hold is remembered (a retried reserve or settle answers its first reply,
/// another reserve of it is refused `HoldExists`) until `HOLDS_REMEMBERED_FOR_MS` past its
/// end, however far its expiry lies beyond, then forgotten; requests take no room in the
/// op-id window. The state holds what is live, not every request ever served.
#[test]
fn ended_holds_are_remembered_for_a_bounded_time() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("100.00") });
    let windowed = h.ledger.n_op_ids_remembered();
    let reserved = h.ok(reserve(0, "0.01", 600_000));
    h.ok(h.settle(0, "0.001"));
    for hold in 1..1_000 {
        h.ok(reserve(hold, "0.01", 600_000));
        h.ok(h.settle(hold, "0.001"));
    }
    h.ok(reserve(1_000, "0.01", 600_000));
    h.ok(Op::Release { account: ACCOUNT, hold: HoldId(1_000) });
    assert_eq!(h.ledger.n_ended_holds_remembered(), 1_001);
    assert_eq!(h.ledger.n_op_ids_remembered(), windowed, "reserves, settles, releases: none");
    let first = h.ok(h.settle(0, "0.5"));
    h.stamp_ms += HOLDS_REMEMBERED_FOR_MS - 1;
    assert_eq!(h.ok(h.settle(0, "0.5")), first, "remembered for the window past its end");
    assert_eq!(h.ok(reserve(0, "0.01", 600_000)), reserved);
    assert_eq!(h.run(reserve(0, "0.02", 600_000)), Err(Rejection::HoldExists));
    assert_eq!(h.ledger.n_ended_holds_remembered(), 1_001);
    assert_eq!(h.account().debits_pending, PicoUsd::ZERO, "no hold made again");
    h.stamp_ms += 1;
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    assert_eq!(h.ledger.n_ended_holds_remembered(), 0, "forgotten once the window passed");
    assert_eq!(h.history.len(), 1_000, "the records went to the history");
}

/// A retried reserve (the same operation, whatever its op id) answers its first reply
/// while its hold is live, and once it was settled, released or expired, for the window
/// past its end; it changes nothing and never makes the hold again.
#[test]
fn a_retried_reserve_answers_its_first_reply_for_the_hold_s_life_and_window() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    let retry_of = |h: &mut Harness, hold: u128, first: &Reply| {
        let (pending, holds) = (h.account().debits_pending, h.account().n_holds);
        assert_eq!(h.run(reserve(hold, "0.10", 1_000)).as_ref(), Ok(first), "new op id");
        let id = OpId(hold << 64);
        assert_eq!(h.run_as(id, reserve(hold, "0.10", 1_000)).as_ref(), Ok(first), "its op id");
        assert_eq!((h.account().debits_pending, h.account().n_holds), (pending, holds));
    };
    let mut first = Vec::new();
    for hold in 1..=4 {
        first.push(h.run_as(OpId(hold << 64), reserve(hold, "0.10", 1_000)).unwrap());
    }
    // The balance moves, and the first reply still says what it was then.
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    retry_of(&mut h, 1, &first[0]);
    h.ok(h.settle(2, "0.05"));
    retry_of(&mut h, 2, &first[1]);
    h.ok(Op::Release { account: ACCOUNT, hold: HoldId(3) });
    retry_of(&mut h, 3, &first[2]);
    h.stamp_ms += 1_000;
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    assert_eq!(h.account().n_holds, 0, "all expired");
    for hold in 1..=4 {
        retry_of(&mut h, hold, &first[hold as usize - 1]);
    }
    h.stamp_ms += HOLDS_REMEMBERED_FOR_MS - 1;
    retry_of(&mut h, 4, &first[3]);
    assert_eq!(h.account().debits_pending, PicoUsd::ZERO);
}

/// The ledger keeps an ended hold's amounts in 64 bits and the balance it left in 80 when
/// they fit: a hold of more than $18.4 million (2^64 pico-USD), one that left more than
/// $9.2 million (2^63) or more than $604 billion (2^79) available answer their retries as
/// exactly as any other.
#[test]
fn holds_of_amounts_beyond_64_bits_answer_their_retries_whole() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("25000000") });
    let large = reserve(1, "20000000", 1_000);
    let first_large = h.ok(large.clone());
    let settled = h.ok(h.settle(1, "19000000.000000000001"));
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("30000000") });
    let first_rich = h.ok(reserve(2, "0.10", 1_000));
    h.ok(Op::Credit { account: ACCOUNT, amount: AMOUNT_MAX });
    let first_richest = h.ok(reserve(3, "0.10", 1_000));
    let left = |reply: &Reply| match reply {
        Reply::Reserved { available, .. } => *available,
        other => panic!("{other:?}"),
    };
    assert!(left(&first_large) < 1 << 63);
    assert!((1 << 63..1 << 79).contains(&left(&first_rich)));
    assert!(left(&first_richest) >= 1 << 79);
    let released = Reply::Released { amount: usd("0.10") };
    for hold in [2, 3] {
        assert_eq!(h.ok(Op::Release { account: ACCOUNT, hold: HoldId(hold) }), released);
    }
    h.stamp_ms += HOLDS_REMEMBERED_FOR_MS - 1;
    assert_eq!(h.ok(large), first_large);
    assert_eq!(h.ok(h.settle(1, "0.01")), settled);
    assert_eq!(h.ok(reserve(2, "0.10", 1_000)), first_rich);
    assert_eq!(h.ok(reserve(3, "0.10", 1_000)), first_richest);
    for hold in [2, 3] {
        assert_eq!(h.ok(Op::Release { account: ACCOUNT, hold: HoldId(hold) }), released);
    }
    assert_eq!(h.account().debits_posted, usd("19000000.000000000001"));
}

/// A reserve of a hold that exists (live or ended) with another account, key, amount or
/// time-to-live is refused as a conflict and changes nothing, as is a reserve of a hold a
/// settle ended without a reserve here.
#[test]
fn a_reserve_reusing_a_hold_for_another_operation_is_refused() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(Op::CreateAccount { account: AccountId(8), name: "other".into() });
    h.ok(create_key(AccountId(8), KeyId(80), [8; 32], KeyLimits::default()));
    h.ok(Op::Credit { account: AccountId(8), amount: usd("1.00") });
    h.ok(create_key(ACCOUNT, KeyId(71), [9; 32], KeyLimits::default()));
    let others = [
        Op::Reserve {
            account: AccountId(8),
            key: KeyId(80),
            hold: HoldId(5),
            amount: usd("0.10"),
            ttl_ms: 1_000,
        },
        Op::Reserve {
            account: ACCOUNT,
            key: KeyId(71),
            hold: HoldId(5),
            amount: usd("0.10"),
            ttl_ms: 1_000,
        },
        reserve(5, "0.20", 1_000),
        reserve(5, "0.10", 2_000),
    ];
    h.ok(reserve(5, "0.10", 1_000));
    let check = |h: &mut Harness| {
        let before = (h.account(), h.ledger.account(AccountId(8)).cloned());
        for other in &others {
            assert_eq!(h.run(other.clone()), Err(Rejection::HoldExists), "{other:?}");
        }
        assert_eq!((h.account(), h.ledger.account(AccountId(8)).cloned()), before);
    };
    check(&mut h);
    h.ok(h.settle(5, "0.01"));
    check(&mut h);
    h.ok(h.settle(6, "0.01"));
    assert_eq!(h.run(reserve(6, "0.10", 1_000)), Err(Rejection::HoldExists), "settled, never made");
}

/// A refused reserve leaves nothing, not even its refusal: retried (under its op id) once
/// the account was topped up, it is admitted; each refusal changed nothing.
#[test]
fn a_refused_reserve_retried_after_a_top_up_is_admitted() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("0.05") });
    let id = OpId(42 << 64);
    let refused = h.run_as(id, reserve(1, "0.10", 1_000));
    assert_eq!(refused, Err(Rejection::InsufficientFunds { available: usd("0.05").0 as i128 }));
    assert_eq!(h.run_as(id, reserve(1, "0.10", 1_000)), refused);
    assert_eq!(
        (h.account().debits_pending, h.ledger.n_ended_holds_remembered()),
        (PicoUsd::ZERO, 0)
    );
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    let admitted = Reply::Reserved { available: usd("0.95").0 as i128, reserved_at_ms: h.stamp_ms };
    assert_eq!(h.run_as(id, reserve(1, "0.10", 1_000)), Ok(admitted.clone()));
    assert_eq!(h.run_as(id, reserve(1, "0.10", 1_000)), Ok(admitted));
    assert_eq!(h.account().debits_pending, usd("0.10"));
}

/// A retried release answers its first reply from the hold (after a settle of the
/// released hold too); a release of an ended hold that no release ended, or of another
/// account's, finds nothing.
#[test]
fn a_retried_release_answers_its_first_reply() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(Op::CreateAccount { account: AccountId(8), name: "other".into() });
    h.ok(reserve(1, "0.10", 1_000));
    h.ok(reserve(2, "0.10", 1_000));
    let release = |hold| Op::Release { account: ACCOUNT, hold: HoldId(hold) };
    let released = Reply::Released { amount: usd("0.10") };
    assert_eq!(h.ok(release(1)), released);
    assert_eq!(h.ok(release(1)), released);
    let foreign = Op::Release { account: AccountId(8), hold: HoldId(1) };
    assert_eq!(h.run(foreign), Err(Rejection::UnknownHold));
    h.ok(h.settle(1, "0.01"));
    h.ok(h.settle(2, "0.01"));
    h.stamp_ms += HOLDS_REMEMBERED_FOR_MS - 1;
    assert_eq!(h.ok(release(1)), released);
    assert_eq!(h.run(release(2)), Err(Rejection::UnknownHold), "settled, not released");
    assert_eq!(h.account().debits_posted, usd("0.02"));
    assert_eq!(h.account().available(), usd("0.98").0 as i128);
}

/// Requests take no room in the op-id window: under a stream of reserves, settles,
/// releases and expiries (retries and refusals included) it holds nothing once the
/// account's and key's creation aged out; the ended holds hold the last window's requests.
#[test]
fn the_op_id_window_stays_empty_under_requests() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("10.00") });
    for hold in 0..3_000u128 {
        h.stamp_ms += 100;
        h.ok(reserve(hold, "0.01", 500));
        h.ok(reserve(hold, "0.01", 500));
        match hold % 3 {
            0 => {
                h.ok(h.settle(hold, "0.001"));
            }
            1 => {
                h.ok(Op::Release { account: ACCOUNT, hold: HoldId(hold) });
            }
            _ => {}
        }
        h.run(reserve(1 << 64 | hold, "100.00", 500)).unwrap_err();
        h.run(Op::Release { account: ACCOUNT, hold: HoldId(2 << 64 | hold) }).unwrap_err();
    }
    assert_eq!(h.ledger.n_op_ids_remembered(), 0, "the creations forgotten, nothing added");
    let window = (HOLDS_REMEMBERED_FOR_MS / 100) as usize;
    let n_ended = h.ledger.n_ended_holds_remembered();
    assert!((window - 10..=window).contains(&n_ended), "{n_ended} ended holds remembered");
}

/// Other operations are remembered for `OPS_REMEMBERED_FOR_MS` of batch stamps, then
/// decided afresh: a key creation retried within the window gets its first reply, after
/// it the key's own rule (`KeyExists`).
#[test]
fn op_ids_are_remembered_for_a_fixed_time() {
    let mut h = Harness::new();
    let create = create_key(ACCOUNT, KeyId(71), [8; 32], KeyLimits::default());
    let first = h.run_as(OpId(77), create.clone());
    assert_eq!(first, Ok(Reply::KeyCreated));
    h.stamp_ms += OPS_REMEMBERED_FOR_MS - 1;
    assert_eq!(h.run_as(OpId(77), create.clone()), first);
    h.stamp_ms += 1;
    assert_eq!(h.run_as(OpId(77), create), Err(Rejection::KeyExists));
}

#[test]
fn top_ups_past_the_per_account_limit_are_refused() {
    let mut h = Harness::new();
    let amount = PicoUsd(1);
    let commands: Vec<Command> = (0..TOP_UPS_PER_ACCOUNT_MAX as u128)
        .map(|n| Command { id: OpId(1 << 64 | n), op: Op::Credit { account: ACCOUNT, amount } })
        .collect();
    for chunk in commands.chunks(BATCH_COMMANDS_MAX) {
        let batch = Batch { stamp_ms: h.stamp_ms, commands: chunk.to_vec() };
        assert!(h.ledger.apply(&batch).iter().all(Result::is_ok));
    }
    let credited = PicoUsd(TOP_UPS_PER_ACCOUNT_MAX as u128);
    assert_eq!(h.account().credits, credited);
    let one_more = Op::Credit { account: ACCOUNT, amount };
    assert_eq!(h.run(one_more), Err(Rejection::TopUpsExhausted));
    // Retries of the remembered ones still answer, and nothing was credited twice.
    let retried = h.run_as(commands[0].id, commands[0].op.clone());
    assert_eq!(retried, Ok(Reply::Credited { credits: amount }));
    assert_eq!(h.account().credits, credited);
}

#[test]
fn expiry_is_applied_from_the_batch_stamp() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    // The ledger stamps the expiry: batch stamp 1 000 + ttl 1 000.
    h.ok(reserve(1, "0.80", 1_000));
    h.stamp_ms = 1_999;
    assert!(h.run(reserve(2, "0.50", 10_000)).is_err(), "hold 1 still live");
    h.stamp_ms = 2_000;
    h.ok(reserve(3, "0.50", 10_000));
    // Settling the expired hold charges what the balance holds, the rest is written off.
    let settled = h.ok(h.settle(1, "0.70"));
    let expected =
        Reply::Settled { charged: usd("0.50"), released: PicoUsd::ZERO, written_off: usd("0.20") };
    assert_eq!(settled, expected);
    assert_eq!(h.account().available(), 0);
    // A hold the ledger never had (its settle within the window of the reserve stamp it
    // claims) is settled by the same rule.
    assert_eq!(
        h.ok(h.settle(9, "0.01")),
        Reply::Settled {
            charged: PicoUsd::ZERO,
            released: PicoUsd::ZERO,
            written_off: usd("0.01")
        }
    );
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
    assert_eq!(h.run(again), Ok(Reply::Released { amount: usd("0.30") }), "a retry");
    assert_eq!(h.account().available(), usd("1.00").0 as i128);
    let never = Op::Release { account: ACCOUNT, hold: HoldId(2) };
    assert_eq!(h.run(never), Err(Rejection::UnknownHold));
}

#[test]
fn keys_are_found_by_hash_and_revoked() {
    let mut h = Harness::new();
    let hash = [3u8; 32];
    let create = create_key(ACCOUNT, KeyId(5), hash, KeyLimits::default());
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
    for ttl_ms in [0, HOLD_TTL_MS_MAX + 1] {
        assert!(matches!(h.run(reserve(1, "0", ttl_ms)), Err(Rejection::Invalid(_))), "{ttl_ms}");
    }
    h.ok(reserve(1, "0", HOLD_TTL_MS_MAX));
}

#[test]
fn reserve_refuses_revoked_unknown_and_foreign_keys() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    let other = AccountId(8);
    h.ok(Op::CreateAccount { account: other, name: "other".into() });
    h.ok(create_key(other, KeyId(80), [8; 32], KeyLimits::default()));
    let with_key = |hold: u128, key: KeyId| Op::Reserve {
        account: ACCOUNT,
        key,
        hold: HoldId(hold),
        amount: usd("0.10"),
        ttl_ms: 60_000,
    };
    assert_eq!(h.run(with_key(1, KeyId(999))), Err(Rejection::UnknownKey));
    assert_eq!(h.run(with_key(2, KeyId(80))), Err(Rejection::UnknownKey), "another's key");
    h.ok(with_key(3, KEY));
    h.ok(Op::RevokeKey { account: ACCOUNT, key: KEY });
    assert_eq!(h.run(with_key(4, KEY)), Err(Rejection::KeyRevoked));
    // A hold made before the revocation still settles.
    assert!(matches!(h.ok(h.settle(3, "0.05")), Reply::Settled { .. }));
    assert_eq!(h.account().n_holds, 0);
}

/// One step of a random workload over a few accounts and holds.
#[derive(Debug, Clone)]
enum Step {
    Credit {
        account: u8,
        cents: u32,
    },
    Reserve {
        account: u8,
        key: u8,
        hold: u8,
        cents: u32,
        ttl_ms: u16,
    },
    Revoke {
        account: u8,
        key: u8,
    },
    /// Disables or enables a key and sets or lifts its spend limit.
    Update {
        account: u8,
        key: u8,
        disabled: bool,
        limit_cents: Option<u16>,
    },
    Settle {
        account: u8,
        hold: u8,
        cents: u32,
    },
    Release {
        account: u8,
        hold: u8,
    },
    Tick {
        ms: u16,
    },
    /// Minutes of quiet, past the op-id window.
    Wait {
        minutes: u8,
    },
    Replay {
        back: u8,
    },
    /// Retries an acknowledged top-up under its op id.
    RetryTopUp {
        pick: u8,
    },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..3u8, 1..10_000u32).prop_map(|(account, cents)| Step::Credit { account, cents }),
        (0..3u8, 0..4u8, 0..16u8, 0..5_000u32, 0..2_000u16).prop_map(
            |(account, key, hold, cents, ttl_ms)| Step::Reserve {
                account,
                key,
                hold,
                cents,
                ttl_ms
            }
        ),
        (0..3u8, 0..4u8).prop_map(|(account, key)| Step::Revoke { account, key }),
        (0..3u8, 0..4u8, any::<bool>(), prop::option::of(0..1_000u16)).prop_map(
            |(account, key, disabled, limit_cents)| Step::Update {
                account,
                key,
                disabled,
                limit_cents
            }
        ),
        // Up to 4× the largest hold: providers over-reporting, settles after expiry.
        (0..3u8, 0..16u8, 0..20_000u32).prop_map(|(account, hold, cents)| Step::Settle {
            account,
            hold,
            cents
        }),
        (0..3u8, 0..16u8).prop_map(|(account, hold)| Step::Release { account, hold }),
        (0..1_500u16).prop_map(|ms| Step::Tick { ms }),
        (1..12u8).prop_map(|minutes| Step::Wait { minutes }),
        (0..8u8).prop_map(|back| Step::Replay { back }),
        any::<u8>().prop_map(|pick| Step::RetryTopUp { pick }),
    ]
}

fn cents(n: u32) -> PicoUsd {
    PicoUsd(u128::from(n) * PICO_PER_USD / 100)
}

/// The limits of key `key` of each account in the random workload: the third has a daily
/// spend limit of $5 and 3 requests per minute.
fn workload_limits(key: u8) -> KeyLimits {
    if key < 2 {
        return KeyLimits::default();
    }
    KeyLimits {
        spend_limit: Some(PicoUsd(5 * PICO_PER_USD)),
        limit_reset: LimitReset::Daily,
        requests_per_minute: Some(3),
        tokens_per_minute: None,
    }
}

/// Key `key` of `account` in the random workload: three per account, the fourth index
/// names a key that does not exist.
fn key_of(account: u8, key: u8) -> KeyId {
    KeyId(u64::from(account) * 10 + u64::from(key))
}

/// What the random workload's gateway knows of each hold, and each hold's first settle.
#[derive(Default)]
struct Holds {
    /// The stamp each hold's reserve was answered with; for a hold never reserved, the
    /// stamp its first settle claimed (its retries claim the same).
    reserved_at: std::collections::BTreeMap<HoldId, u64>,
    /// Each hold's first settle: its reply and actual.
    settled: std::collections::BTreeMap<HoldId, (Reply, PicoUsd)>,
}

impl Holds {
    fn settle(&mut self, account: AccountId, hold: HoldId, actual: PicoUsd, stamp_ms: u64) -> Op {
        let reserved_at_ms = *self.reserved_at.entry(hold).or_insert(stamp_ms);
        Op::Settle { account, hold, actual, record: RequestRecord::default(), reserved_at_ms }
    }

    /// The first settle of a hold decides, for good: a later one answers the same or, once
    /// the ledger has forgotten the hold, is refused; it is never charged again. A
    /// settle's charge and write-off add up to the first one's actual. Only a hold made
    /// afresh (its id reserved again once forgotten) is settled afresh.
    fn check(&mut self, stamp_ms: u64, op: &Op, outcome: &Outcome) -> Result<(), TestCaseError> {
        match (op, outcome) {
            // Made afresh now: not a retry answered with the reservation already seen
            // (which, with no stamp passed since, also carries this stamp).
            (Op::Reserve { hold, .. }, Ok(Reply::Reserved { reserved_at_ms, .. }))
                if *reserved_at_ms == stamp_ms
                    && self.reserved_at.get(hold) != Some(reserved_at_ms) =>
            {
                self.reserved_at.insert(*hold, *reserved_at_ms);
                self.settled.remove(hold);
            }
            (
                Op::Settle { hold, actual, .. },
                Ok(reply @ Reply::Settled { charged, written_off, .. }),
            ) => {
                let first = self.settled.entry(*hold).or_insert_with(|| (reply.clone(), *actual));
                prop_assert_eq!(&first.0, reply);
                prop_assert_eq!(charged.0 + written_off.0, first.1 .0);
            }
            (Op::Settle { hold, .. }, Err(Rejection::HoldForgotten)) => {
                prop_assert!(self.reserved_at.contains_key(hold));
            }
            _ => {}
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The bank invariant (write-offs included) holds and no balance is below zero after
    /// every batch of any workload (settles above the hold and the funds, settles after
    /// expiry, reserves with revoked keys), a replica replaying the same batches (even
    /// re-delivered ones) ends identical, the sum of acknowledged top-ups equals the sum of
    /// credits, each settle's charge and write-off add up to its actual, and no reserve
    /// with a key is admitted after that key's revocation.
    #[test]
    fn bank_invariant_holds_under_random_workloads(steps in prop::collection::vec(step(), 1..200)) {
        let mut ledger = Ledger::new();
        let mut batches: Vec<Batch> = Vec::new();
        let mut stamp_ms = 1_000u64;
        let mut acknowledged_credits = 0u128;
        let mut top_ups: Vec<(Command, Outcome)> = Vec::new();
        let mut revoked = std::collections::BTreeSet::new();
        let mut disabled = std::collections::BTreeSet::new();
        // The stamp each key update's op id was last applied afresh at: a replay within
        // `OPS_REMEMBERED_FOR_MS` of it is answered from memory and changes nothing.
        let mut key_updated_at = std::collections::HashMap::new();
        let mut holds = Holds::default();
        let mut commands = Vec::new();
        for account in 0..3u8 {
            let id = AccountId(account.into());
            let op = Op::CreateAccount { account: id, name: format!("a{account}") };
            commands.push(Command { id: OpId(u128::from(account) + 1_000_000), op });
            for key in 0..3u8 {
                let hash = [account * 10 + key; 32];
                let op = create_key(id, key_of(account, key), hash, workload_limits(key));
                commands.push(Command { id: OpId(u128::from(account * 10 + key) + 2_000_000), op });
            }
        }
        batches.push(Batch { stamp_ms, commands });
        ledger.apply(&batches[0]);
        for (index, step) in steps.into_iter().enumerate() {
            let id = OpId(index as u128 + 1);
            let op = match step {
                Step::Credit { account, cents: n } => Op::Credit { account: AccountId(account.into()), amount: cents(n) },
                Step::Reserve { account, key, hold, cents: n, ttl_ms } => Op::Reserve {
                    account: AccountId(account.into()), key: key_of(account, key),
                    hold: HoldId(hold.into()), amount: cents(n), ttl_ms: u64::from(ttl_ms),
                },
                Step::Revoke { account, key } => {
                    Op::RevokeKey { account: AccountId(account.into()), key: key_of(account, key) }
                }
                Step::Update { account, key, disabled, limit_cents } => Op::UpdateKey {
                    account: AccountId(account.into()),
                    key: key_of(account, key),
                    update: KeyUpdate {
                        disabled: Some(disabled),
                        spend_limit: Some(limit_cents.map(|n| cents(n.into()))),
                        ..KeyUpdate::default()
                    },
                },
                Step::Settle { account, hold, cents: n } => {
                    holds.settle(AccountId(account.into()), HoldId(hold.into()), cents(n), stamp_ms)
                }
                Step::Release { account, hold } => Op::Release { account: AccountId(account.into()), hold: HoldId(hold.into()) },
                Step::Tick { ms } => { stamp_ms += u64::from(ms); continue; }
                Step::Wait { minutes } => { stamp_ms += u64::from(minutes) * 60_000; continue; }
                Step::RetryTopUp { pick } => {
                    let Some((command, first)) = top_ups.get(pick as usize % top_ups.len().max(1)).cloned() else {
                        continue;
                    };
                    let credits = ledger.audit().credits;
                    let batch = Batch { stamp_ms, commands: vec![command] };
                    prop_assert_eq!(ledger.apply(&batch).pop().unwrap(), first);
                    prop_assert_eq!(ledger.audit().credits, credits);
                    batches.push(batch);
                    continue;
                }
                Step::Replay { back } => {
                    // Re-deliver an earlier batch: idempotency must make it a no-op.
                    let earlier = batches[batches.len().saturating_sub(1 + back as usize)].clone();
                    let before = ledger.clone();
                    let mut replay = earlier.clone();
                    replay.stamp_ms = stamp_ms;
                    let first = ledger.apply(&replay);
                    // A replayed reserve first refused, or replayed past the ended-hold
                    // window, may make its hold afresh, and a replayed settle may then be
                    // that hold's first.
                    for (command, outcome) in replay.commands.iter().zip(&first) {
                        holds.check(stamp_ms, &command.op, outcome)?;
                        // Past the op-id window a replayed key update applies again; within
                        // it the replay is answered from memory and changes nothing.
                        if let Op::UpdateKey { key, update, .. } = &command.op {
                            let at: &mut u64 = key_updated_at.get_mut(&command.id).expect("applied before");
                            if stamp_ms >= *at + OPS_REMEMBERED_FOR_MS {
                                *at = stamp_ms;
                                if outcome.is_ok() {
                                    disable(&mut disabled, *key, update.disabled == Some(true));
                                }
                            }
                        }
                    }
                    let again = ledger.apply(&replay);
                    prop_assert_eq!(first, again);
                    prop_assert_eq!(before.audit().credits, ledger.audit().credits);
                    batches.push(replay);
                    continue;
                }
            };
            let batch = Batch { stamp_ms, commands: vec![Command { id, op: op.clone() }] };
            let holds_of = |ledger: &Ledger, op: &Op| match op {
                Op::Reserve { key, .. } => ledger.key(*key).map(|key| key.n_holds),
                _ => None,
            };
            let holds_before = holds_of(&ledger, &op);
            let outcome = ledger.apply(&batch).pop().unwrap();
            // A reserve that made a new hold (not a retry answered by its hold).
            let admitted = holds_of(&ledger, &op) > holds_before;
            if let (Op::Credit { amount, .. }, Ok(_)) = (&op, &outcome) {
                acknowledged_credits += amount.0;
                top_ups.push((Command { id, op: op.clone() }, outcome.clone()));
            }
            match (&op, &outcome) {
                (Op::Reserve { key, .. }, Ok(Reply::Reserved { available, .. })) if admitted => {
                    prop_assert!(*available >= 0);
                    prop_assert!(!revoked.contains(key), "reserved with revoked {key:?}");
                    prop_assert!(!disabled.contains(key), "reserved with disabled {key:?}");
                    let entry = ledger.key(*key).unwrap();
                    if let Some(limit) = entry.limits.spend() {
                        let used = entry.spent(limit.reset, stamp_ms).0 + entry.held.0;
                        prop_assert!(used <= limit.amount.0, "{key:?} past its spend limit");
                    }
                    let window = entry.minute.at(stamp_ms);
                    let rpm = entry.limits.requests_per_minute.unwrap_or(u32::MAX);
                    prop_assert!(window.requests <= rpm, "{key:?} past its rate limit");
                }
                (Op::Reserve { key, .. }, Err(Rejection::KeyRevoked)) => {
                    prop_assert!(revoked.contains(key));
                }
                (Op::RevokeKey { key, .. }, Ok(_)) => {
                    revoked.insert(*key);
                }
                (Op::UpdateKey { key, update, .. }, Ok(_)) => {
                    disable(&mut disabled, *key, update.disabled == Some(true));
                }
                _ => {}
            }
            if matches!(op, Op::UpdateKey { .. }) {
                key_updated_at.insert(id, stamp_ms);
            }
            holds.check(stamp_ms, &op, &outcome)?;
            batches.push(batch);
            let audit = ledger.audit();
            prop_assert!(audit.ok, "{:?}", audit.problems);
            for account in 0..3u64 {
                prop_assert!(ledger.account(AccountId(account)).unwrap().available() >= 0);
            }
        }
        prop_assert_eq!(ledger.audit().credits.0, acknowledged_credits);
        let mut replica = Ledger::new();
        for batch in &batches {
            replica.apply(batch);
        }
        prop_assert_eq!(&replica, &ledger);
    }
}

fn user_op(user: u64, account: AccountId, email: &str, role: Role) -> Op {
    let password_hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA".to_string();
    Op::CreateUser { user: UserId(user), account, email: email.into(), password_hash, role }
}

/// Users live in the directory, found by id, by email and by account; an email or id is
/// taken once; an account has at most `USERS_PER_ACCOUNT_MAX` users; emails are kept
/// lower-case only.
#[test]
fn users_are_unique_by_email_and_bounded_per_account() {
    let mut harness = Harness::new();
    assert_eq!(user_op(1, ACCOUNT, "a@x.io", Role::Owner).account(), USER_DIRECTORY);
    harness.ok(user_op(1, ACCOUNT, "a@x.io", Role::Owner));
    harness.ok(user_op(2, ACCOUNT, "b@x.io", Role::Member));
    let taken = harness.run(user_op(3, AccountId(8), "a@x.io", Role::Owner));
    assert_eq!(taken, Err(Rejection::UserExists));
    assert_eq!(
        harness.run(user_op(2, AccountId(8), "c@x.io", Role::Owner)),
        Err(Rejection::UserExists)
    );
    let upper = harness.run(user_op(4, AccountId(8), "C@x.io", Role::Owner));
    assert!(matches!(upper, Err(Rejection::Invalid(_))), "{upper:?}");
    let (id, found) = harness.ledger.user_by_email("b@x.io").unwrap();
    assert_eq!((id, found.account, found.role), (UserId(2), ACCOUNT, Role::Member));
    assert_eq!(harness.ledger.user(UserId(1)).unwrap().email, "a@x.io");
    let members: Vec<UserId> =
        harness.ledger.members(ACCOUNT).into_iter().map(|(id, _)| id).collect();
    assert_eq!(members, [UserId(1), UserId(2)]);
    assert!(harness.ledger.members(AccountId(8)).is_empty());
    for n in 2..USERS_PER_ACCOUNT_MAX as u64 {
        harness.ok(user_op(100 + n, ACCOUNT, &format!("{n}@x.io"), Role::Member));
    }
    let full = harness.run(user_op(99, ACCOUNT, "full@x.io", Role::Member));
    assert_eq!(full, Err(Rejection::TooManyUsers));
}

/// A revoked session is remembered until the stamp passes its end (at most
/// `SESSION_REMEMBERED_FOR_MS_MAX` past the revoking batch), then forgotten: the state
/// stays bounded.
#[test]
fn revoked_sessions_are_forgotten_after_their_end() {
    let mut harness = Harness::new();
    let until_ms = harness.stamp_ms + 5_000;
    let revoke = |session, until_ms| Op::RevokeSession {
        account: ACCOUNT,
        session: SessionId(session),
        until_ms,
    };
    assert_eq!(harness.run(revoke(1, until_ms)), Ok(Reply::SessionRevoked));
    assert_eq!(harness.run(revoke(2, u64::MAX)), Ok(Reply::SessionRevoked));
    // An already ended session needs no memory.
    assert_eq!(harness.run(revoke(3, harness.stamp_ms)), Ok(Reply::SessionRevoked));
    let unknown = Op::RevokeSession { account: AccountId(8), session: SessionId(4), until_ms };
    assert_eq!(harness.run(unknown), Err(Rejection::UnknownAccount));
    assert!(harness.ledger.session_revoked(SessionId(1)));
    assert!(harness.ledger.session_revoked(SessionId(2)));
    assert!(!harness.ledger.session_revoked(SessionId(3)));
    harness.stamp_ms = until_ms;
    harness.run(Op::Release { account: ACCOUNT, hold: HoldId(1) }).unwrap_err();
    assert!(!harness.ledger.session_revoked(SessionId(1)));
    assert!(harness.ledger.session_revoked(SessionId(2)));
    harness.stamp_ms += SESSION_REMEMBERED_FOR_MS_MAX;
    harness.run(Op::Release { account: ACCOUNT, hold: HoldId(1) }).unwrap_err();
    assert_eq!(harness.ledger.n_revoked_sessions_remembered(), 0);
}

#[test]
fn top_ups_are_listed_oldest_first_with_their_stamp() {
    let mut harness = Harness::new();
    harness.ok(Op::Credit { account: ACCOUNT, amount: usd("2") });
    harness.stamp_ms += 10;
    harness.ok(Op::Credit { account: ACCOUNT, amount: usd("1") });
    let listed = harness.ledger.top_ups(ACCOUNT);
    let seen: Vec<(PicoUsd, PicoUsd, u64)> =
        listed.iter().map(|t| (t.amount, t.credits, t.stamp_ms)).collect();
    assert_eq!(seen, [(usd("2"), usd("2"), 1_000), (usd("1"), usd("3"), 1_010)]);
    assert_eq!(harness.ledger.keys_of(ACCOUNT).count(), 1);
    assert_eq!(harness.ledger.keys_of(AccountId(8)).count(), 0);
}

/// A settle retried after its hold's ending was forgotten (`HOLDS_REMEMBERED_FOR_MS` past
/// the end: a caller outside the gateway's `SETTLE_DEADLINE`) is refused and charges
/// nothing: the hold was settled once. The reserve's stamp it carries tells it from a
/// hold the ledger never had, which is still charged within the funds.
#[test]
fn a_settle_retried_after_its_hold_was_forgotten_is_not_charged_again() {
    let mut h = Harness::new();
    h.ok(Op::Credit { account: ACCOUNT, amount: usd("1.00") });
    h.ok(reserve(1, "0.30", 600_000));
    h.stamp_ms += 5_000;
    let first = h.ok(h.settle(1, "0.20"));
    assert!(matches!(first, Reply::Settled { charged, .. } if charged == usd("0.20")));
    h.stamp_ms += HOLDS_REMEMBERED_FOR_MS - 1;
    assert_eq!(h.ok(h.settle(1, "0.20")), first, "remembered for the window past its end");
    h.stamp_ms += 1;
    assert_eq!(h.run(h.settle(1, "0.20")), Err(Rejection::HoldForgotten));
    assert_eq!(h.account().debits_posted, usd("0.20"), "charged once");
    assert_eq!(h.ledger.n_ended_holds_remembered(), 0);
    // A hold expired and forgotten before its (late) first settle is not charged either:
    // the ledger cannot tell that settle from a retry.
    h.ok(reserve(2, "0.30", 1_000));
    h.stamp_ms += 1_000;
    let expiring = Op::Release { account: ACCOUNT, hold: HoldId(99) };
    assert_eq!(h.run(expiring), Err(Rejection::UnknownHold), "a batch that voids hold 2");
    h.stamp_ms += HOLDS_REMEMBERED_FOR_MS;
    assert_eq!(h.run(h.settle(2, "0.20")), Err(Rejection::HoldForgotten));
    // A hold the ledger never had, settled within the window of its claimed reserve, is.
    let never = Op::Settle {
        account: ACCOUNT,
        hold: HoldId(3),
        actual: usd("0.10"),
        record: RequestRecord::default(),
        reserved_at_ms: h.stamp_ms - HOLDS_REMEMBERED_FOR_MS + 1,
    };
    assert!(
        matches!(h.ok(never.clone()), Reply::Settled { charged, .. } if charged == usd("0.10"))
    );
    assert!(matches!(h.ok(never), Reply::Settled { charged, .. } if charged == usd("0.10")));
    assert_eq!(h.account().debits_posted, usd("0.30"));
}

/// The property test's model of disabled keys: `key` is disabled or not.
fn disable(disabled: &mut std::collections::BTreeSet<KeyId>, key: KeyId, is_disabled: bool) {
    if is_disabled {
        disabled.insert(key);
    } else {
        disabled.remove(&key);
    }
}

/// Holds still pending after many later reserves (streams that run for minutes) move to
/// the ledger's persistent tier; settled, released or expired from there, they end as
/// holds that never moved do, and the bank check holds throughout, after a snapshot's
/// round trip (which reads every hold back into the persistent tier) too.
#[test]
fn long_lived_holds_end_as_short_lived_ones_do() {
    const ROUNDS: u128 = 20;
    const PER_ROUND: u128 = 2_048;
    const LONG_TTL_MS: u64 = 600_000;
    let mut ledger = Ledger::new();
    let mut n_ops = 0u128;
    let mut apply = |ledger: &mut Ledger, stamp_ms: u64, ops: Vec<Op>| {
        let commands = ops.into_iter().map(|op| {
            n_ops += 1;
            Command { id: OpId(n_ops), op }
        });
        ledger.apply(&Batch { stamp_ms, commands: commands.collect() })
    };
    let stamp_ms = 1_000;
    let setup = vec![
        Op::CreateAccount { account: ACCOUNT, name: "acme".into() },
        create_key(ACCOUNT, KEY, [7; 32], KeyLimits::default()),
        Op::Credit { account: ACCOUNT, amount: usd("1000.00") },
    ];
    assert!(apply(&mut ledger, stamp_ms, setup).iter().all(Result::is_ok));
    // One hold in a hundred stays pending while the others come and go.
    let long_lived = |hold: u128| hold.is_multiple_of(100);
    for round in 0..ROUNDS {
        let holds = round * PER_ROUND..(round + 1) * PER_ROUND;
        let ttl_ms = |hold| if long_lived(hold) { LONG_TTL_MS } else { 60_000 };
        let reserves = holds.clone().map(|hold| reserve(hold, "0.001", ttl_ms(hold))).collect();
        assert!(apply(&mut ledger, stamp_ms, reserves).iter().all(Result::is_ok));
        let settle = |hold| Op::Settle {
            account: ACCOUNT,
            hold: HoldId(hold),
            actual: usd("0.0005"),
            record: echo_record(),
            reserved_at_ms: stamp_ms,
        };
        let settles = holds.filter(|hold| !long_lived(*hold)).map(settle).collect();
        assert!(apply(&mut ledger, stamp_ms, settles).iter().all(Result::is_ok));
    }
    let kept: Vec<u128> = (0..ROUNDS * PER_ROUND).filter(|hold| long_lived(*hold)).collect();
    assert!(ledger.audit().ok, "{:?}", ledger.audit());
    assert_eq!(ledger.audit().n_holds, kept.len() as u64);
    let bytes = postcard::to_allocvec(&ledger).unwrap();
    let read: Ledger = postcard::from_bytes(&bytes).unwrap();
    assert_eq!(read, ledger);

    let n_short = ROUNDS * PER_ROUND - kept.len() as u128;
    for mut ledger in [ledger, read] {
        let (settled, rest) = kept.split_at(kept.len() / 3);
        let (released, expiring) = rest.split_at(rest.len() / 2);
        let settles = settled.iter().map(|&hold| Op::Settle {
            account: ACCOUNT,
            hold: HoldId(hold),
            actual: usd("0.0004"),
            record: echo_record(),
            reserved_at_ms: stamp_ms,
        });
        let releases =
            released.iter().map(|&hold| Op::Release { account: ACCOUNT, hold: HoldId(hold) });
        let outcomes = apply(&mut ledger, stamp_ms + 1, settles.chain(releases).collect());
        let (settled_outcomes, released_outcomes) = outcomes.split_at(settled.len());
        let settled_reply = Reply::Settled {
            charged: usd("0.0004"),
            released: usd("0.0006"),
            written_off: PicoUsd::ZERO,
        };
        assert!(settled_outcomes.iter().all(|outcome| *outcome == Ok(settled_reply.clone())));
        let released_reply = Reply::Released { amount: usd("0.001") };
        assert!(released_outcomes.iter().all(|outcome| *outcome == Ok(released_reply.clone())));
        assert_eq!(ledger.audit().n_holds, expiring.len() as u64);
        assert_eq!(ledger.next_expiry_ms(), Some(stamp_ms + LONG_TTL_MS));

        // The rest expire in their order once ledger time passes them.
        assert!(apply(&mut ledger, stamp_ms + LONG_TTL_MS, Vec::new()).is_empty());
        let audit = ledger.audit();
        assert!(audit.ok, "{audit:?}");
        assert_eq!((audit.n_holds, audit.debits_pending), (0, PicoUsd::ZERO));
        assert_eq!(ledger.next_expiry_ms(), None);
        let posted = usd("0.0005").0 * n_short + usd("0.0004").0 * settled.len() as u128;
        assert_eq!(audit.debits_posted, PicoUsd(posted));
    }
}
