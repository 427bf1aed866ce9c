//! A key's own limits, enforced at `Reserve` by the ledger: spend per UTC period (charged
//! plus held), requests and tokens per UTC minute, the disabled flag and management keys.

use solrouter_ledger::*;

const ACCOUNT: AccountId = AccountId(7);
const KEY: KeyId = KeyId(70);
/// Monday 2026-11-30 12:00:00 UTC.
const MONDAY_NOON_MS: u64 = 1_796_040_000_000;
const TTL_MS: u64 = 600_000;

struct Harness {
    ledger: Ledger,
    next_op: u128,
    stamp_ms: u64,
}

impl Harness {
    /// An account with $100 and one key with `limits`.
    fn new(limits: KeyLimits) -> Harness {
        let mut harness = Harness { ledger: Ledger::new(), next_op: 0, stamp_ms: MONDAY_NOON_MS };
        harness.ok(Op::CreateAccount { account: ACCOUNT, name: "acme".into() });
        harness.ok(Op::Credit { account: ACCOUNT, amount: usd("100") });
        let (name, kind) = ("k".to_string(), KeyKind::Inference);
        harness.ok(Op::CreateKey { account: ACCOUNT, key: KEY, name, hash: [7; 32], kind, limits });
        harness
    }

    fn run(&mut self, op: Op) -> Outcome {
        self.next_op += 1;
        let command = Command { id: OpId(self.next_op), op };
        let outcome =
            self.ledger.apply(&Batch { stamp_ms: self.stamp_ms, commands: vec![command] });
        let audit = self.ledger.audit();
        assert!(audit.ok, "{:?}", audit.problems);
        outcome.into_iter().next().unwrap()
    }

    fn ok(&mut self, op: Op) -> Reply {
        self.run(op).expect("operation should succeed")
    }

    fn key(&self) -> Key {
        self.ledger.key(KEY).unwrap().clone()
    }

    /// A settle of `hold`, which was reserved (if ever) within the ended-hold window: it
    /// claims the current stamp as its reserve's.
    fn settle(&self, hold: u128, actual: &str, tokens: u64) -> Op {
        let record =
            RequestRecord { key: Some(KEY), prompt_tokens: tokens, ..RequestRecord::default() };
        let (hold, actual, reserved_at_ms) = (HoldId(hold), usd(actual), self.stamp_ms);
        Op::Settle { account: ACCOUNT, hold, actual, record, reserved_at_ms }
    }
}

fn usd(text: &str) -> PicoUsd {
    PicoUsd::parse_usd(text).unwrap()
}

fn reserve(hold: u128, amount: &str) -> Op {
    Op::Reserve {
        account: ACCOUNT,
        key: KEY,
        hold: HoldId(hold),
        amount: usd(amount),
        ttl_ms: TTL_MS,
    }
}

fn spend_limit(amount: &str, reset: LimitReset) -> KeyLimits {
    KeyLimits { spend_limit: Some(usd(amount)), limit_reset: reset, ..KeyLimits::default() }
}

fn update(update: KeyUpdate) -> Op {
    Op::UpdateKey { account: ACCOUNT, key: KEY, update }
}

/// Spent plus held plus the new hold may not pass the limit, although the account has
/// plenty; the refusal names the limit, what is used and when the period ends; the next
/// day (by batch stamp) the key spends again.
#[test]
fn a_daily_spend_limit_counts_charges_and_holds_and_resets_at_midnight_utc() {
    let mut h = Harness::new(spend_limit("1.00", LimitReset::Daily));
    h.ok(reserve(1, "0.60"));
    h.ok(h.settle(1, "0.50", 10));
    h.ok(reserve(2, "0.30"));
    assert_eq!(h.key().limit_remaining(h.stamp_ms), Some(usd("0.20")));
    let midnight = LimitReset::Daily.next_reset_ms(h.stamp_ms);
    assert_eq!(midnight, Some(MONDAY_NOON_MS + 12 * 60 * 60 * 1000));
    let expected = Rejection::KeySpendLimit {
        limit: SpendLimit { amount: usd("1.00"), reset: LimitReset::Daily },
        spent: usd("0.80"),
        resets_at_ms: midnight,
    };
    assert_eq!(h.run(reserve(3, "0.21")), Err(expected));
    h.ok(reserve(4, "0.20"));
    assert_eq!(h.key().limit_remaining(h.stamp_ms), Some(PicoUsd::ZERO));
    // Releasing a hold gives its room back.
    h.ok(Op::Release { account: ACCOUNT, hold: HoldId(4) });
    h.ok(reserve(5, "0.20"));
    h.ok(h.settle(2, "0.30", 10));
    h.ok(h.settle(5, "0.20", 10));
    assert!(matches!(h.run(reserve(6, "0.01")), Err(Rejection::KeySpendLimit { .. })));

    h.stamp_ms = midnight.unwrap() - 1;
    assert!(matches!(h.run(reserve(7, "0.01")), Err(Rejection::KeySpendLimit { .. })));
    h.stamp_ms = midnight.unwrap();
    assert_eq!(h.key().limit_remaining(h.stamp_ms), Some(usd("1.00")));
    h.ok(reserve(8, "1.00"));
    assert_eq!(h.key().usage, usd("1.00"), "the lifetime usage does not reset");
    assert_eq!(h.key().spent(LimitReset::Weekly, h.stamp_ms), usd("1.00"));
}

/// A weekly limit starts over on Monday 00:00 UTC, a monthly one on the 1st, one without
/// reset never; changing the period counts what was spent in the new period.
#[test]
fn weekly_monthly_and_lifetime_limits() {
    let mut h = Harness::new(spend_limit("1.00", LimitReset::Weekly));
    h.ok(reserve(1, "1.00"));
    h.ok(h.settle(1, "1.00", 10));
    h.stamp_ms += 6 * DAY_MS; // Sunday noon: the same week.
    assert!(matches!(h.run(reserve(2, "0.01")), Err(Rejection::KeySpendLimit { .. })));
    // Monthly: Sunday 6 December is in the month that began on 1 December, after the
    // charge.
    h.ok(update(KeyUpdate { limit_reset: Some(LimitReset::Monthly), ..KeyUpdate::default() }));
    h.ok(reserve(3, "1.00"));
    h.ok(h.settle(3, "1.00", 10));
    // Lifetime: $2 spent in all.
    let lifetime = SpendLimit { amount: usd("2.50"), reset: LimitReset::Never };
    let (spend_limit, limit_reset) = (Some(Some(lifetime.amount)), Some(lifetime.reset));
    h.ok(update(KeyUpdate { spend_limit, limit_reset, ..KeyUpdate::default() }));
    let refused = h.run(reserve(4, "0.51"));
    let expected =
        Rejection::KeySpendLimit { limit: lifetime, spent: usd("2.00"), resets_at_ms: None };
    assert_eq!(refused, Err(expected));
    h.stamp_ms += 400 * DAY_MS;
    assert!(matches!(h.run(reserve(5, "0.51")), Err(Rejection::KeySpendLimit { .. })));
    h.ok(update(KeyUpdate { spend_limit: Some(None), ..KeyUpdate::default() }));
    h.ok(reserve(6, "50"));
}

/// Requests per minute count admitted reserves in the UTC minute of the stamp; a refusal
/// says how long until the minute ends; refused reserves do not count.
#[test]
fn requests_per_minute_refuse_until_the_minute_ends() {
    let limits = KeyLimits { requests_per_minute: Some(2), ..KeyLimits::default() };
    let mut h = Harness::new(limits);
    h.stamp_ms += 45_000; // 12:00:45
    h.ok(reserve(1, "0.01"));
    h.ok(reserve(2, "0.01"));
    let limit = RateLimit::RequestsPerMinute(2);
    assert_eq!(
        h.run(reserve(3, "0.01")),
        Err(Rejection::KeyRateLimited { limit, retry_after_ms: 15_000 })
    );
    h.stamp_ms += 14_999;
    assert!(matches!(h.run(reserve(4, "0.01")), Err(Rejection::KeyRateLimited { .. })));
    h.stamp_ms += 1; // 12:01:00
    h.ok(reserve(5, "0.01"));
    h.ok(reserve(6, "0.01"));
    assert!(matches!(h.run(reserve(7, "0.01")), Err(Rejection::KeyRateLimited { .. })));
    // A retried reserve of an admitted hold is answered, not counted again.
    assert!(matches!(h.run(reserve(6, "0.01")), Ok(Reply::Reserved { .. })));
}

/// Tokens per minute count the tokens settled in the minute; reserves are refused once
/// the count reaches the limit. The bound: the requests in flight when the count was
/// below the limit all settle, so a minute's tokens exceed the limit by at most the
/// tokens of those requests (here 3 in flight, the minute ends at 3 × 400 = 1,200 of
/// 1,000), whatever number of gateways admitted them: the ledger is one counter.
#[test]
fn tokens_per_minute_exceed_by_at_most_the_requests_in_flight() {
    let limits = KeyLimits { tokens_per_minute: Some(1_000), ..KeyLimits::default() };
    let mut h = Harness::new(limits);
    for hold in 1..=3 {
        h.ok(reserve(hold, "0.01"));
    }
    h.ok(h.settle(1, "0.01", 400));
    h.ok(reserve(4, "0.01")); // 400 < 1,000: admitted.
    h.ok(h.settle(2, "0.01", 400));
    h.ok(h.settle(3, "0.01", 400)); // 1,200: past the limit by the in-flight requests.
    let key = h.key();
    assert_eq!(key.minute.at(h.stamp_ms).tokens, 1_200);
    let in_flight_bound = 1_000 - 1 + 3 * 400;
    assert!(key.minute.at(h.stamp_ms).tokens <= in_flight_bound);
    let limit = RateLimit::TokensPerMinute(1_000);
    assert_eq!(
        h.run(reserve(5, "0.01")),
        Err(Rejection::KeyRateLimited { limit, retry_after_ms: 60_000 })
    );
    h.stamp_ms += 60_000;
    h.ok(reserve(6, "0.01"));
}

/// Disabling is reversible; revoking is not, and a revoked key cannot be updated. A
/// management key never pays for requests. Another account's key is unknown.
#[test]
fn disabled_revoked_and_management_keys() {
    let mut h = Harness::new(KeyLimits::default());
    h.ok(update(KeyUpdate { disabled: Some(true), ..KeyUpdate::default() }));
    assert_eq!(h.run(reserve(1, "0.01")), Err(Rejection::KeyDisabled));
    h.ok(update(KeyUpdate {
        disabled: Some(false),
        name: Some("renamed".into()),
        ..KeyUpdate::default()
    }));
    h.ok(reserve(2, "0.01"));
    assert_eq!(h.key().name, "renamed");
    let other = Op::UpdateKey { account: AccountId(8), key: KEY, update: KeyUpdate::default() };
    assert_eq!(h.run(other), Err(Rejection::UnknownKey));
    h.ok(Op::RevokeKey { account: ACCOUNT, key: KEY });
    assert_eq!(
        h.run(update(KeyUpdate { disabled: Some(false), ..KeyUpdate::default() })),
        Err(Rejection::KeyRevoked)
    );

    let manager = KeyId(71);
    let (name, kind) = ("m".to_string(), KeyKind::Management);
    let limits = KeyLimits::default();
    h.ok(Op::CreateKey { account: ACCOUNT, key: manager, name, hash: [8; 32], kind, limits });
    let op = Op::Reserve {
        account: ACCOUNT,
        key: manager,
        hold: HoldId(3),
        amount: PicoUsd::ZERO,
        ttl_ms: TTL_MS,
    };
    assert_eq!(h.run(op), Err(Rejection::ManagementKey));
    let listed: Vec<KeyId> = h.ledger.keys_of(ACCOUNT).map(|(id, _)| id).collect();
    assert_eq!(listed, [KEY, manager]);
    assert_eq!(h.ledger.keys_of(AccountId(8)).count(), 0);
}

/// Limits out of range are refused before they reach the state; an account's keys are
/// bounded.
#[test]
fn invalid_limits_and_too_many_keys_are_refused() {
    let mut h = Harness::new(KeyLimits::default());
    let zero_rpm = KeyUpdate { requests_per_minute: Some(Some(0)), ..KeyUpdate::default() };
    assert!(matches!(h.run(update(zero_rpm)), Err(Rejection::Invalid(_))));
    let huge = Some(Some(PicoUsd(AMOUNT_MAX.0 + 1)));
    let huge = KeyUpdate { spend_limit: huge, ..KeyUpdate::default() };
    assert!(matches!(h.run(update(huge)), Err(Rejection::Invalid(_))));
    let long = KeyUpdate { name: Some("x".repeat(NAME_BYTES_MAX + 1)), ..KeyUpdate::default() };
    assert!(matches!(h.run(update(long)), Err(Rejection::Invalid(_))));
    for n in 1..KEYS_PER_ACCOUNT_MAX as u64 {
        let mut hash = [0; 32];
        hash[..8].copy_from_slice(&n.to_be_bytes());
        let (name, kind, limits) = (String::new(), KeyKind::Inference, KeyLimits::default());
        h.ok(Op::CreateKey { account: ACCOUNT, key: KeyId(1_000 + n), name, hash, kind, limits });
    }
    let (name, kind, limits) = (String::new(), KeyKind::Inference, KeyLimits::default());
    let one_more =
        Op::CreateKey { account: ACCOUNT, key: KeyId(1), name, hash: [9; 32], kind, limits };
    assert_eq!(h.run(one_more), Err(Rejection::KeysExhausted));
}

/// A settle gives the hold's key back what it held and charges the key its record names:
/// the same key as a rule, but a record may name another key of the account, or none.
#[test]
fn a_settle_frees_its_holds_key_and_charges_its_records_key() {
    const OTHER: KeyId = KeyId(71);
    let mut h = Harness::new(KeyLimits::default());
    let (name, kind) = ("other".to_string(), KeyKind::Inference);
    let limits = KeyLimits::default();
    h.ok(Op::CreateKey { account: ACCOUNT, key: OTHER, name, hash: [8; 32], kind, limits });
    h.ok(reserve(1, "0.50"));
    h.ok(reserve(2, "0.40"));
    assert_eq!((h.key().held, h.key().n_holds), (usd("0.90"), 2));

    let Op::Settle { account, hold, actual, mut record, reserved_at_ms } = h.settle(1, "0.30", 9)
    else {
        unreachable!()
    };
    record.key = Some(OTHER);
    h.ok(Op::Settle { account, hold, actual, record, reserved_at_ms });
    let (key, other) = (h.key(), h.ledger.key(OTHER).unwrap().clone());
    assert_eq!((key.held, key.n_holds, key.usage), (usd("0.40"), 1, PicoUsd::ZERO));
    assert_eq!((other.held, other.n_holds, other.usage), (PicoUsd::ZERO, 0, usd("0.30")));
    assert_eq!(other.minute.at(h.stamp_ms).tokens, 9);

    let Op::Settle { account, hold, actual, mut record, reserved_at_ms } = h.settle(2, "0.20", 5)
    else {
        unreachable!()
    };
    record.key = None;
    h.ok(Op::Settle { account, hold, actual, record, reserved_at_ms });
    let key = h.key();
    assert_eq!((key.held, key.n_holds, key.usage), (PicoUsd::ZERO, 0, PicoUsd::ZERO));
    assert_eq!(key.minute.at(h.stamp_ms).tokens, 0);
    assert_eq!(h.ledger.account(ACCOUNT).unwrap().debits_posted, usd("0.50"));
}
