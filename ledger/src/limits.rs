//! A key's own limits, enforced by the ledger at `Reserve` (so they hold across every
//! gateway, linearizably): a spend limit that starts over each UTC day, week or month (or
//! never), requests per minute and tokens per minute. Time is the batch stamp, like every
//! other time of the state machine; the periods are OpenRouter's: a day starts at 00:00
//! UTC, a week on Monday 00:00 UTC, a month on the 1st at 00:00 UTC.
//!
//! State is bounded per key: one spend counter per period kind and one minute window,
//! never a record per request.

use crate::money::{PicoUsd, AMOUNT_MAX};
use serde::{Deserialize, Serialize};

pub const MINUTE_MS: u64 = 60_000;
pub const DAY_MS: u64 = 24 * 60 * MINUTE_MS;

/// When a key's spend limit starts over.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LimitReset {
    /// The limit bounds the key's spend over its whole life.
    #[default]
    Never,
    Daily,
    Weekly,
    Monthly,
}

impl LimitReset {
    /// OpenRouter's name of the period (`limit_reset`); `None` for [`LimitReset::Never`].
    pub fn name(self) -> Option<&'static str> {
        match self {
            LimitReset::Never => None,
            LimitReset::Daily => Some("daily"),
            LimitReset::Weekly => Some("weekly"),
            LimitReset::Monthly => Some("monthly"),
        }
    }

    /// The period named `name` (`daily`, `weekly`, `monthly`); `None` for anything else.
    pub fn parse(name: &str) -> Option<LimitReset> {
        [LimitReset::Daily, LimitReset::Weekly, LimitReset::Monthly]
            .into_iter()
            .find(|reset| reset.name() == Some(name))
    }

    /// The start (ms since the Unix epoch) of the period that contains `at_ms`; 0 for
    /// [`LimitReset::Never`], whose one period is the key's life.
    pub fn period_start_ms(self, at_ms: u64) -> u64 {
        let day = at_ms / DAY_MS;
        let start_day = match self {
            LimitReset::Never => return 0,
            LimitReset::Daily => day,
            // 1970-01-01 was a Thursday (3 days after a Monday); the first days of 1970
            // belong to the week that started at the epoch, the earliest time there is.
            LimitReset::Weekly => day.saturating_sub((day + 3) % 7),
            LimitReset::Monthly => {
                let (year, month, _) = civil_from_days(day);
                days_from_civil(year, month, 1)
            }
        };
        start_day * DAY_MS
    }

    /// When the period that contains `at_ms` ends and the limit starts over; `None` for
    /// [`LimitReset::Never`].
    pub fn next_reset_ms(self, at_ms: u64) -> Option<u64> {
        let start = self.period_start_ms(at_ms);
        let next = match self {
            LimitReset::Never => return None,
            LimitReset::Daily => start + DAY_MS,
            LimitReset::Weekly => {
                let day = at_ms / DAY_MS;
                (day + 7 - (day + 3) % 7) * DAY_MS
            }
            LimitReset::Monthly => {
                let (year, month, _) = civil_from_days(start / DAY_MS);
                let (year, month) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
                days_from_civil(year, month, 1) * DAY_MS
            }
        };
        debug_assert!(next > at_ms, "a period ends after every time inside it");
        Some(next)
    }
}

/// The `(year, month, day)` of day `days` since 1970-01-01 (Howard Hinnant's algorithm,
/// exact for every day a `u64` of milliseconds can name).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Days since 1970-01-01 of a date at or after it.
fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let yoe = year - era * 400;
    let doy = (153 * if month > 2 { month - 3 } else { month + 9 } + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A spend limit: what the key may spend (charged and held) per period; what a refusal
/// names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SpendLimit {
    pub amount: PicoUsd,
    pub reset: LimitReset,
}

/// Everything that bounds one key's use; each bound is optional.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyLimits {
    /// What the key may spend (charged plus held) per `limit_reset` period.
    pub spend_limit: Option<PicoUsd>,
    /// When the spend limit starts over (kept, as OpenRouter does, without a limit).
    pub limit_reset: LimitReset,
    /// Requests admitted (reserves) per UTC minute of batch stamps; at least 1.
    pub requests_per_minute: Option<u32>,
    /// Tokens (prompt plus completion) settled per UTC minute of batch stamps; at least 1.
    pub tokens_per_minute: Option<u64>,
}

impl KeyLimits {
    pub fn spend(&self) -> Option<SpendLimit> {
        self.spend_limit.map(|amount| SpendLimit { amount, reset: self.limit_reset })
    }

    pub fn is_valid(&self) -> bool {
        self.spend_limit.is_none_or(|amount| amount <= AMOUNT_MAX)
            && self.requests_per_minute != Some(0)
            && self.tokens_per_minute != Some(0)
    }
}

/// Which per-minute limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RateLimit {
    RequestsPerMinute(u32),
    TokensPerMinute(u64),
}

/// A change to a key: each field that is `Some` replaces the key's (`Some(None)` lifts a
/// limit); the rest stay.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct KeyUpdate {
    pub name: Option<String>,
    /// Refuses (`true`) or admits again (`false`) the key's requests; unlike revocation,
    /// reversible.
    pub disabled: Option<bool>,
    pub spend_limit: Option<Option<PicoUsd>>,
    pub limit_reset: Option<LimitReset>,
    pub requests_per_minute: Option<Option<u32>>,
    pub tokens_per_minute: Option<Option<u64>>,
}

impl KeyUpdate {
    /// `limits` with this update's limits applied.
    pub fn limits(&self, limits: KeyLimits) -> KeyLimits {
        KeyLimits {
            spend_limit: self.spend_limit.unwrap_or(limits.spend_limit),
            limit_reset: self.limit_reset.unwrap_or(limits.limit_reset),
            requests_per_minute: self.requests_per_minute.unwrap_or(limits.requests_per_minute),
            tokens_per_minute: self.tokens_per_minute.unwrap_or(limits.tokens_per_minute),
        }
    }
}

/// What a key was charged in one period of one kind: `amount` since `start_ms`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeriodSpend {
    pub start_ms: u64,
    pub amount: PicoUsd,
}

/// A key's charges per day, week and month, each counting from the start of the period
/// of the last charge: read through [`KeySpend::in_period`], which knows when a counter
/// belongs to a period that has ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeySpend {
    pub daily: PeriodSpend,
    pub weekly: PeriodSpend,
    pub monthly: PeriodSpend,
}

impl KeySpend {
    /// What was charged in the `reset` period containing `at_ms` (zero for a period with
    /// no charge yet). `total` is the key's lifetime usage, the answer for `Never`.
    pub fn in_period(&self, reset: LimitReset, at_ms: u64, total: PicoUsd) -> PicoUsd {
        let counter = match reset {
            LimitReset::Never => return total,
            LimitReset::Daily => self.daily,
            LimitReset::Weekly => self.weekly,
            LimitReset::Monthly => self.monthly,
        };
        if counter.start_ms == reset.period_start_ms(at_ms) {
            counter.amount
        } else {
            PicoUsd::ZERO
        }
    }

    /// Adds a charge made at `at_ms`, which is never before an earlier charge's.
    pub(crate) fn add(&mut self, at_ms: u64, amount: PicoUsd) {
        for (reset, counter) in [
            (LimitReset::Daily, &mut self.daily),
            (LimitReset::Weekly, &mut self.weekly),
            (LimitReset::Monthly, &mut self.monthly),
        ] {
            let start_ms = reset.period_start_ms(at_ms);
            assert!(start_ms >= counter.start_ms, "batch stamps never go backwards");
            if start_ms != counter.start_ms {
                *counter = PeriodSpend { start_ms, amount: PicoUsd::ZERO };
            }
            counter.amount = counter.amount.checked_add(amount).expect("period spend overflow");
        }
    }
}

/// Requests admitted and tokens settled in the UTC minute (of batch stamps) that starts
/// at `start_ms`: a fixed window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MinuteWindow {
    pub start_ms: u64,
    pub requests: u32,
    pub tokens: u64,
}

impl MinuteWindow {
    /// The window of the minute containing `at_ms`: this one, or an empty one if this
    /// one's minute has ended.
    pub fn at(self, at_ms: u64) -> MinuteWindow {
        let start_ms = at_ms - at_ms % MINUTE_MS;
        if self.start_ms == start_ms {
            self
        } else {
            MinuteWindow { start_ms, requests: 0, tokens: 0 }
        }
    }

    /// Milliseconds from `at_ms` until this window's minute ends.
    pub fn remaining_ms(self, at_ms: u64) -> u64 {
        (self.start_ms + MINUTE_MS).saturating_sub(at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of an RFC 3339 UTC time, by the same civil calendar.
    fn at(year: u64, month: u64, day: u64, hour: u64, minute: u64) -> u64 {
        days_from_civil(year, month, day) * DAY_MS + (hour * 60 + minute) * MINUTE_MS
    }

    fn check(reset: LimitReset, now: u64, start: u64, next: Option<u64>) {
        assert_eq!(reset.period_start_ms(now), start, "{reset:?} start at {now}");
        assert_eq!(reset.next_reset_ms(now), next, "{reset:?} next at {now}");
    }

    #[test]
    fn periods_start_at_utc_midnight_monday_and_the_first() {
        // Monday 2026-11-30, 12:34 UTC.
        let now = at(2026, 11, 30, 12, 34);
        check(LimitReset::Never, now, 0, None);
        check(LimitReset::Daily, now, at(2026, 11, 30, 0, 0), Some(at(2026, 12, 1, 0, 0)));
        check(LimitReset::Weekly, now, at(2026, 11, 30, 0, 0), Some(at(2026, 12, 7, 0, 0)));
        check(LimitReset::Monthly, now, at(2026, 11, 1, 0, 0), Some(at(2026, 12, 1, 0, 0)));
        // Sunday 23:59 belongs to the week that began the Monday before.
        let sunday = at(2026, 11, 29, 23, 59);
        check(LimitReset::Weekly, sunday, at(2026, 11, 23, 0, 0), Some(at(2026, 11, 30, 0, 0)));
        // Month ends: December into January, a leap February, a century non-leap year.
        let december = at(2026, 12, 31, 23, 59);
        check(LimitReset::Monthly, december, at(2026, 12, 1, 0, 0), Some(at(2027, 1, 1, 0, 0)));
        let leap = at(2028, 2, 29, 10, 0);
        check(LimitReset::Monthly, leap, at(2028, 2, 1, 0, 0), Some(at(2028, 3, 1, 0, 0)));
        check(LimitReset::Daily, leap, at(2028, 2, 29, 0, 0), Some(at(2028, 3, 1, 0, 0)));
        let not_leap = at(2100, 2, 28, 0, 0);
        check(LimitReset::Monthly, not_leap, at(2100, 2, 1, 0, 0), Some(at(2100, 3, 1, 0, 0)));
        // The first instant of a period is in it.
        let midnight = at(2027, 1, 1, 0, 0);
        check(LimitReset::Daily, midnight, midnight, Some(at(2027, 1, 2, 0, 0)));
        // The epoch (a Thursday) and its first days belong to a week starting at it.
        check(LimitReset::Weekly, 0, 0, Some(at(1970, 1, 5, 0, 0)));
        let monday = at(1970, 1, 5, 0, 0);
        check(LimitReset::Weekly, monday, monday, Some(at(1970, 1, 12, 0, 0)));
    }

    /// 2026-11-30 is day 20,787 since the epoch (Python's `datetime.date` agrees).
    #[test]
    fn civil_dates_agree_with_the_calendar() {
        assert_eq!(days_from_civil(2026, 11, 30), 20_787);
        assert_eq!(civil_from_days(20_787), (2026, 11, 30));
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        for day in (0..200_000).step_by(7) {
            let (year, month, date) = civil_from_days(day);
            assert_eq!(days_from_civil(year, month, date), day);
        }
    }

    #[test]
    fn spend_counts_per_period_and_starts_over() {
        let mut spend = KeySpend::default();
        let total = PicoUsd(10);
        let monday = at(2026, 11, 30, 12, 0);
        spend.add(monday, PicoUsd(3));
        spend.add(monday + 1, PicoUsd(4));
        assert_eq!(spend.in_period(LimitReset::Daily, monday, total), PicoUsd(7));
        let tuesday = at(2026, 12, 1, 0, 0);
        assert_eq!(spend.in_period(LimitReset::Daily, tuesday, total), PicoUsd::ZERO);
        assert_eq!(spend.in_period(LimitReset::Weekly, tuesday, total), PicoUsd(7));
        assert_eq!(spend.in_period(LimitReset::Monthly, tuesday, total), PicoUsd::ZERO);
        assert_eq!(spend.in_period(LimitReset::Never, tuesday, total), total);
        spend.add(tuesday, PicoUsd(1));
        assert_eq!(spend.in_period(LimitReset::Daily, tuesday, total), PicoUsd(1));
        assert_eq!(spend.in_period(LimitReset::Weekly, tuesday, total), PicoUsd(8));
        assert_eq!(spend.in_period(LimitReset::Monthly, tuesday, total), PicoUsd(1));
    }

    #[test]
    fn minute_windows_are_fixed_utc_minutes() {
        let window = MinuteWindow { start_ms: 120_000, requests: 5, tokens: 9 };
        assert_eq!(window.at(179_999), window);
        assert_eq!(window.at(180_000), MinuteWindow { start_ms: 180_000, requests: 0, tokens: 0 });
        assert_eq!(window.remaining_ms(170_000), 10_000);
    }

    #[test]
    fn limit_reset_names_round_trip() {
        for reset in [LimitReset::Daily, LimitReset::Weekly, LimitReset::Monthly] {
            assert_eq!(LimitReset::parse(reset.name().unwrap()), Some(reset));
        }
        assert_eq!(LimitReset::parse("never"), None);
        assert_eq!(LimitReset::Never.name(), None);
    }
}
