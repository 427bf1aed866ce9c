//! The state as format version 7 laid it out, read only to carry over a snapshot an older
//! build wrote: its ended holds and op-id window were `imbl` maps, each with an order
//! beside it, where they are now [`Window`]s.

use super::*;

/// A [`Ledger`] in format version 7's layout (field for field, since the encoding is
/// positional), decoded only to become a `Ledger` (`Ledger::try_from`).
#[derive(Deserialize)]
pub struct LedgerV7 {
    accounts: HashMap<AccountId, Account>,
    keys: HashMap<KeyId, Key>,
    keys_by_hash: HashMap<KeyHash, KeyId>,
    keys_by_account: HashMap<AccountId, OrdSet<KeyId>>,
    holds: HashMap<HoldId, Hold>,
    expiry: OrdSet<(u64, HoldId)>,
    ended: HashMap<HoldId, EndedHoldV7>,
    ended_order: OrdSet<(u64, HoldId)>,
    applied: HashMap<OpId, (u64, Outcome)>,
    applied_order: imbl::Vector<(u64, OpId)>,
    top_ups: HashMap<AccountId, HashMap<OpId, TopUp>>,
    stamp_ms: u64,
    credited: PicoUsd,
    written_off: PicoUsd,
    users: HashMap<UserId, User>,
    users_by_email: HashMap<String, UserId>,
    members: HashMap<AccountId, OrdSet<UserId>>,
    revoked_sessions: HashMap<SessionId, u64>,
    revoked_order: OrdSet<(u64, SessionId)>,
}

#[derive(Clone, Deserialize)]
struct EndedHoldV7 {
    /// Never read: a retry is answered by its hold alone.
    _account: AccountId,
    ending: EndingV7,
    forget_at_ms: u64,
}

#[derive(Clone, Deserialize)]
enum EndingV7 {
    Settled(Reply),
    Released,
    Expired,
}

impl TryFrom<LedgerV7> for Ledger {
    type Error = String;

    /// Refuses a state whose time-bounded sets disagree with their orders, which version
    /// 7 never wrote.
    fn try_from(old: LedgerV7) -> Result<Ledger, String> {
        let ended = old.ended_order.iter().map(|&(forget_at_ms, hold)| {
            let found = old.ended.get(&hold).filter(|ended| ended.forget_at_ms == forget_at_ms);
            let ending = match found.map(|ended| &ended.ending) {
                Some(EndingV7::Settled(Reply::Settled { charged, released, written_off })) => {
                    let (charged, released, written_off) = (*charged, *released, *written_off);
                    Ending::Settled { charged, released, written_off }
                }
                Some(EndingV7::Released) => Ending::Released,
                Some(EndingV7::Expired) => Ending::Expired,
                Some(EndingV7::Settled(_)) | None => {
                    return Err(format!("ended hold {:x} out of its order", hold.0))
                }
            };
            Ok((hold.0, forget_at_ms, ending))
        });
        let ended = Window::try_from_entries(ended.collect::<Result<Vec<_>, _>>()?)?;
        let applied = old.applied_order.iter().map(|&(applied_ms, id)| {
            let remembered = old.applied.get(&id).ok_or(format!("op id {:x} unknown", id.0))?;
            Ok((id.0, applied_ms.saturating_add(OPS_REMEMBERED_FOR_MS), remembered.clone()))
        });
        let applied = Window::try_from_entries(applied.collect::<Result<Vec<_>, String>>()?)?;
        if ended.len() != old.ended.len() || applied.len() != old.applied.len() {
            return Err("time-bounded sets and their orders differ in size".into());
        }
        Ok(Ledger {
            accounts: old.accounts,
            keys: old.keys,
            keys_by_hash: old.keys_by_hash,
            keys_by_account: old.keys_by_account,
            holds: old.holds,
            expiry: old.expiry,
            ended,
            applied,
            top_ups: old.top_ups,
            stamp_ms: old.stamp_ms,
            credited: old.credited,
            written_off: old.written_off,
            users: old.users,
            users_by_email: old.users_by_email,
            members: old.members,
            revoked_sessions: old.revoked_sessions,
            revoked_order: old.revoked_order,
        })
    }
}
