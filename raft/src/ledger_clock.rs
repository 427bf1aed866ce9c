//! Ledger time: the stamps a group's leader puts on its batches, the only clock holds and
//! the op-id window know (the ledger reads none).
//!
//! A wall clock can step: a VM resumes, an RTC is wrong until NTP fixes it, an operator
//! sets the date. Stamping batches with it directly let one leader whose clock stepped an
//! hour ahead void every live hold in its next batch, and one whose clock stepped back
//! freeze time (no hold expired, no op id aged out) until the wall clock caught up. So a
//! stamp advances by the leader's *monotonic* elapsed time since its previous stamp, and
//! converges on its wall clock by at most [`CLOCK_SLEW_DIVISOR`]-th of that elapsed time
//! (at most [`CLOCK_SLEW_STEP_MAX_MS`] per stamp), in either direction. A leader that has
//! not stamped since another node did continues from the applied stamp without advancing
//! (it cannot know how long ago that stamp was made), so a leader change never moves time
//! by more than the old leader's clock allowed. Ledger time may therefore lag the wall
//! clock (by the time no leader was stamping, until the slew catches up): holds then live
//! longer, never shorter, than their TTL. A leader's own earlier stamps count only within
//! the term they were made in: stamps of an earlier term may never have committed (a
//! leader cut off keeps proposing), and continuing from them let a leader back in a later
//! term jump ledger time forward by the lag other leaders had accrued meanwhile, so an op
//! id applied during the lag was forgotten seconds (in real time) after it was applied
//! (the simulation, seed 42 of `a_run_beyond_the_ledger_windows_…`). So ledger time runs
//! at most 1% faster than real time. A wall clock step is logged and counted.

use crate::group::Clock;
use tokio::time::Instant;

/// Ledger time converges on the leader's wall clock by at most 1/100 of the monotonic time
/// elapsed between two stamps: a hold's TTL, measured in ledger time, is at most 1% short
/// in real time (far inside the gateway's `HOLD_GRACE`), and a lag of a minute is gone in
/// under two hours.
pub const CLOCK_SLEW_DIVISOR: u64 = 100;
/// Most ledger time may gain or lose on the monotonic clock in one stamp, however long
/// since the previous one: after a long quiet spell a stepped clock still moves ledger
/// time only this much.
pub const CLOCK_SLEW_STEP_MAX_MS: u64 = 100;
/// A wall clock whose movement differs from the monotonic clock's by more than this
/// between two readings has stepped: logged and counted (`NodeStats::n_clock_jumps`).
pub const CLOCK_JUMP_MS: u64 = 1_000;

/// One group's ledger clock on one node.
pub struct LedgerClock {
    wall: Clock,
    /// The last stamp this node handed out and the term it led then.
    stamped: Option<Stamped>,
    /// The last wall clock reading and its monotonic instant, to notice a step.
    read: Option<(u64, Instant)>,
    n_jumps: u64,
}

/// A stamp handed out, with what the next one continues from.
#[derive(Clone, Copy)]
struct Stamped {
    stamp_ms: u64,
    /// The monotonic instant ledger time last moved to: the stamp's instant, less the part
    /// of a millisecond elapsed since that the stamp did not count. Stamps come far more
    /// often than once a millisecond under load, and restarting from each stamp's own
    /// instant dropped that part every time: ledger time ran at a third of real time in
    /// `solrouter dev` at 1,000 requests/s (so holds and op ids were remembered three
    /// times as long, and memory grew with them), and stood still at higher rates.
    at: Instant,
    /// Slew earned and not yet used, in microseconds (1/[`CLOCK_SLEW_DIVISOR`] of the time
    /// elapsed, at most [`CLOCK_SLEW_STEP_MAX_MS`]): kept across stamps for the same reason.
    slew_us: u64,
    term: u64,
}

impl LedgerClock {
    pub fn new(wall: Clock) -> LedgerClock {
        LedgerClock { wall, stamped: None, read: None, n_jumps: 0 }
    }

    /// Wall clock steps noticed so far.
    pub fn n_jumps(&self) -> u64 {
        self.n_jumps
    }

    /// The wall clock now, in milliseconds since the epoch.
    pub fn wall_ms(&self) -> u64 {
        (self.wall)()
    }

    /// The stamp for a batch this node proposes now as the leader of `term`, given the
    /// highest stamp the state has applied: never below it nor below this clock's previous
    /// stamp in the same term.
    pub fn next_stamp_ms(&mut self, applied_ms: u64, term: u64) -> u64 {
        let now = Instant::now();
        let wall_ms = self.read_wall(now);
        let this_term = self.stamped.filter(|stamped| stamped.term == term);
        let restart = |stamp_ms| Stamped { stamp_ms, at: now, slew_us: 0, term };
        let stamped = match this_term {
            // A ledger that has never been stamped starts at the wall clock.
            None if applied_ms == 0 => restart(wall_ms),
            // Another node stamped since, or this one in an earlier term: continue from
            // the applied stamp.
            None => restart(applied_ms),
            Some(last) if last.stamp_ms < applied_ms => restart(applied_ms),
            Some(last) => {
                let elapsed_ms = millis(now - last.at);
                let nominal_ms = last.stamp_ms.saturating_add(elapsed_ms);
                // Earned on the whole milliseconds counted, so each counts once.
                let earned_us = elapsed_ms.saturating_mul(1_000) / CLOCK_SLEW_DIVISOR;
                let slew_us =
                    last.slew_us.saturating_add(earned_us).min(CLOCK_SLEW_STEP_MAX_MS * 1_000);
                let slew_ms = slew_us / 1_000;
                // Never below the previous stamp, when slew saved up meets a wall clock
                // behind.
                let stamp_ms = wall_ms
                    .clamp(nominal_ms.saturating_sub(slew_ms), nominal_ms.saturating_add(slew_ms))
                    .max(last.stamp_ms);
                Stamped {
                    stamp_ms,
                    at: last.at + std::time::Duration::from_millis(elapsed_ms),
                    slew_us: slew_us - stamp_ms.abs_diff(nominal_ms) * 1_000,
                    term,
                }
            }
        };
        assert!(stamped.stamp_ms >= applied_ms, "ledger time never goes back");
        self.stamped = Some(stamped);
        stamped.stamp_ms
    }

    /// Reads the wall clock, noticing a step since the previous reading.
    fn read_wall(&mut self, now: Instant) -> u64 {
        let wall_ms = self.wall_ms();
        if let Some((previous_ms, at)) = self.read {
            let wall_moved_ms = i128::from(wall_ms) - i128::from(previous_ms);
            let jump_ms = wall_moved_ms - i128::from(millis(now - at));
            if jump_ms.unsigned_abs() > u128::from(CLOCK_JUMP_MS) {
                self.n_jumps += 1;
                tracing::warn!(
                    jump_ms = i64::try_from(jump_ms).unwrap_or(i64::MAX),
                    "the wall clock stepped; ledger time keeps the monotonic clock's pace"
                );
            }
        }
        self.read = Some((wall_ms, now));
        wall_ms
    }
}

fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    const START_MS: u64 = 1_700_000_000_000;
    const HOUR_MS: u64 = 3_600_000;

    fn clock() -> (LedgerClock, Arc<AtomicU64>) {
        let wall = Arc::new(AtomicU64::new(START_MS));
        let read = Arc::clone(&wall);
        (LedgerClock::new(Arc::new(move || read.load(Ordering::Relaxed))), wall)
    }

    async fn pass(wall: &AtomicU64, ms: u64) {
        tokio::time::advance(Duration::from_millis(ms)).await;
        wall.fetch_add(ms, Ordering::Relaxed);
    }

    #[tokio::test(start_paused = true)]
    async fn stamps_follow_the_wall_clock_while_it_is_steady() {
        let (mut clock, wall) = clock();
        assert_eq!(clock.next_stamp_ms(0, 1), START_MS);
        pass(&wall, 250).await;
        assert_eq!(clock.next_stamp_ms(START_MS, 1), START_MS + 250);
        assert_eq!(clock.n_jumps(), 0);
    }

    /// Stamps every 300 µs for ten seconds, the wall clock `ahead_ms` ahead: the last one.
    async fn stamp_every_300_us_for_10_s(ahead_ms: u64) -> u64 {
        const STEP_US: u64 = 300;
        let (mut clock, wall) = clock();
        let mut stamp_ms = clock.next_stamp_ms(0, 1);
        wall.fetch_add(ahead_ms, Ordering::Relaxed);
        for n in 1..=10_000_000 / STEP_US {
            tokio::time::advance(Duration::from_micros(STEP_US)).await;
            wall.store(START_MS + ahead_ms + n * STEP_US / 1_000, Ordering::Relaxed);
            stamp_ms = clock.next_stamp_ms(stamp_ms, 1);
        }
        stamp_ms
    }

    /// Under load a leader stamps many batches a millisecond: ledger time still keeps real
    /// time's pace (it dropped the part of a millisecond between two stamps, and stood
    /// still), and still converges on the wall clock by 1% of it, no more.
    #[tokio::test(start_paused = true)]
    async fn stamps_keep_pace_and_slew_when_many_come_a_millisecond() {
        const TEN_S_MS: u64 = 10_000;
        // 33,333 stamps over 9,999.9 ms.
        assert_eq!(stamp_every_300_us_for_10_s(0).await, START_MS + TEN_S_MS - 1);
        let slewed_ms = stamp_every_300_us_for_10_s(HOUR_MS).await - START_MS;
        assert_eq!(slewed_ms, TEN_S_MS - 1 + TEN_S_MS / CLOCK_SLEW_DIVISOR - 1, "1%, no more");
    }

    #[tokio::test(start_paused = true)]
    async fn a_step_either_way_moves_stamps_by_the_monotonic_time_and_is_counted() {
        let (mut clock, wall) = clock();
        clock.next_stamp_ms(0, 1);
        wall.fetch_add(HOUR_MS, Ordering::Relaxed);
        pass(&wall, 1_000).await;
        assert_eq!(clock.next_stamp_ms(START_MS, 1), START_MS + 1_000 + 10, "1% slew only");
        wall.fetch_sub(2 * HOUR_MS, Ordering::Relaxed);
        pass(&wall, 1_000).await;
        assert_eq!(clock.next_stamp_ms(START_MS, 1), START_MS + 2_000, "back: 1% slower");
        assert_eq!(clock.n_jumps(), 2);
        // However long the quiet, one stamp gains at most the step bound.
        pass(&wall, 2 * HOUR_MS).await;
        wall.fetch_add(3 * HOUR_MS, Ordering::Relaxed);
        let expected = START_MS + 2_000 + 2 * HOUR_MS + CLOCK_SLEW_STEP_MAX_MS;
        assert_eq!(clock.next_stamp_ms(START_MS, 1), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_leader_continues_from_the_applied_stamp() {
        let (mut clock, wall) = clock();
        wall.fetch_add(HOUR_MS, Ordering::Relaxed);
        assert_eq!(clock.next_stamp_ms(START_MS, 1), START_MS);
        // And after another node stamped past its last one.
        pass(&wall, 500).await;
        assert_eq!(clock.next_stamp_ms(START_MS + 5_000, 1), START_MS + 5_000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_back_in_a_later_term_continues_from_the_applied_stamp() {
        let (mut clock, wall) = clock();
        assert_eq!(clock.next_stamp_ms(0, 1), START_MS);
        // Cut off, it kept stamping proposals that never committed…
        pass(&wall, 60_000).await;
        assert_eq!(clock.next_stamp_ms(START_MS, 1), START_MS + 60_000);
        // …while the next leader continued from the applied stamp, 60 s behind.
        pass(&wall, 1_000).await;
        assert_eq!(clock.next_stamp_ms(START_MS + 1_000, 3), START_MS + 1_000);
    }
}
