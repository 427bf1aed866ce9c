//! [`HoldGuard`]: the money one request holds, ended exactly once — settled with the
//! request's record or released — and what a charge is counted as.

use crate::app::App;
use crate::bank::Caller;
use crate::tokens::Billed;
use solrouter_ledger::{HoldId, PicoUsd, RequestRecord};
use tokio::time::Duration;

/// How long a response waits for its settle before it is sent anyway; the settle task
/// goes on retrying. One ledger commit takes milliseconds; this only matters while the
/// ledger is failing.
pub const SETTLE_WAIT_MAX: Duration = Duration::from_secs(2);

/// Whether an answer is not charged (issue 11, item 5): it produced no output — the
/// client received no text, reasoning or tool call (`empty`) — and it ended in an error
/// (`failed`; the provider's placeholder output count, such as the one token of
/// Anthropic's `message_start`, then counts for nothing) or as an empty answer of no
/// output tokens; and the configuration waives such answers (`waive_empty_answers`, on
/// by default). The provider's bill for it is then written off. A client that hung up is
/// charged as usual: it ended the answer.
pub fn waives(app: &'static App, billed: &Billed, failed: bool, empty: bool) -> bool {
    let no_output = empty && (failed || billed.usage.completion_tokens == 0);
    app.config.waive_empty_answers() && no_output
}

/// Ends a hold exactly once: by a settle or a release, or — if the task holding it
/// unwinds — by a release when dropped, so a bug cannot leave money held until expiry.
pub struct HoldGuard {
    app: &'static App,
    caller: Caller,
    hold: HoldId,
    /// The ledger stamp of the hold's reserve, which its settle carries.
    reserved_at_ms: u64,
    armed: bool,
}

impl HoldGuard {
    /// Guards the hold `hold`, reserved for `caller` at ledger stamp `reserved_at_ms`.
    pub(crate) fn new(
        app: &'static App,
        caller: Caller,
        hold: HoldId,
        reserved_at_ms: u64,
    ) -> HoldGuard {
        HoldGuard { app, caller, hold, reserved_at_ms, armed: true }
    }

    /// Settles with the record and waits (bounded) for the ledger to apply it. Returns
    /// the cost to show the client: what the ledger charged (less than `actual` when the
    /// balance ran out and the rest was written off). Only if the ledger has not answered
    /// within [`SETTLE_WAIT_MAX`] is it `actual`, which the ledger then charges in full
    /// unless the balance runs out first: the settle goes on in a task of its own. Until
    /// then it runs in the caller's task ([`detached`](crate::pipeline::detached) work, which a client that hangs up
    /// cannot cut short), so the common case spawns nothing.
    pub async fn settle(mut self, actual: PicoUsd, record: RequestRecord) -> PicoUsd {
        self.armed = false;
        let (account, hold) = (self.caller.account, self.hold);
        let mut settling =
            Box::pin(self.app.bank.settle(account, hold, self.reserved_at_ms, actual, record));
        let settled = match tokio::time::timeout(SETTLE_WAIT_MAX, &mut settling).await {
            Ok(settled) => settled,
            Err(_elapsed) => {
                tracing::warn!(hold = self.hold.0, "settle still pending; answering anyway");
                tokio::spawn(settling);
                None
            }
        };
        settled.map_or(actual, |settled| settled.charged)
    }

    /// Voids the hold: nothing was produced, so nothing is charged. Waits for the
    /// release, so a client reading its balance right after the error finds no hold.
    pub async fn release(mut self) {
        self.armed = false;
        // A JoinError is a panic in the release task, which that task has reported.
        let _ = self.app.bank.release(self.caller.account, self.hold).await;
    }
}

impl Drop for HoldGuard {
    fn drop(&mut self) {
        // Without a runtime (the process is exiting) nothing can be sent; the hold then
        // expires on its own.
        if self.armed && tokio::runtime::Handle::try_current().is_ok() {
            self.app.bank.release(self.caller.account, self.hold);
        }
    }
}
