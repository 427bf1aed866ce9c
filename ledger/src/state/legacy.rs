//! The state as format versions 7 and 8 laid it out, read only to carry over a snapshot an
//! older build wrote. Version 7's ended holds and op-id window were `imbl` maps, each with
//! an order beside it, where they are now [`Window`]s. Version 8's holds did not keep their
//! reserve's reply, nor its ended holds their reserve: reserves and releases were
//! deduplicated by op id, and a carried-over state's op-id window still answers their
//! retries (every command's op id is looked up first) for as long as a retry can come.

use super::*;

/// A [`Ledger`] in format version 8's layout (field for field, since the encoding is
/// positional), decoded only to become a `Ledger` (`Ledger::try_from`).
#[derive(Deserialize)]
pub struct LedgerV8 {
    head: HeadV8,
    ended: Window<EndingV8>,
    applied: Window<(u64, Outcome)>,
    tail: TailV8,
}

/// The fields versions 7 and 8 both lay out before their time-bounded sets. postcard
/// encodes a struct as its fields in order, nothing around them, so grouping them into
/// this struct changes no byte of either layout.
#[derive(Deserialize)]
struct HeadV8 {
    accounts: HashMap<AccountId, Account>,
    keys: HashMap<KeyId, Key>,
    keys_by_hash: HashMap<KeyHash, KeyId>,
    keys_by_account: HashMap<AccountId, OrdSet<KeyId>>,
    holds: HashMap<HoldId, HoldV8>,
    expiry: OrdSet<(u64, HoldId)>,
}

/// The fields versions 7 and 8 both lay out after their time-bounded sets.
#[derive(Deserialize)]
struct TailV8 {
    top_ups: HashMap<AccountId, HashMap<OpId, TopUp>>,
    stamp_ms: u64,
    credited: PicoUsd,
    written_off: PicoUsd,
    users: HashMap<UserId, User>,
    users_by_email: imbl::HashMap<String, UserId>,
    members: HashMap<AccountId, OrdSet<UserId>>,
    revoked_sessions: HashMap<SessionId, u64>,
    revoked_order: OrdSet<(u64, SessionId)>,
}

#[derive(Clone, Deserialize)]
struct HoldV8 {
    account: AccountId,
    key: KeyId,
    amount: PicoUsd,
    reserved_at_ms: u64,
    expires_at_ms: u64,
}

#[derive(Clone, Deserialize)]
enum EndingV8 {
    Settled { charged: PicoUsd, released: PicoUsd, written_off: PicoUsd },
    Released,
    Expired,
}

impl TryFrom<LedgerV8> for Ledger {
    type Error = String;

    /// A hold keeps its reserve's `available`, which version 8 did not: the account's
    /// balance at the carry-over stands in for it. A retry of that reserve is answered by
    /// the op-id window while it remembers the reserve, as long as the deadlines let a
    /// retry come; an ended hold keeps only its settle's reply, and a reserve of it past
    /// the window is refused (`HoldExists`), never made again.
    fn try_from(old: LedgerV8) -> Result<Ledger, String> {
        let LedgerV8 { head, ended, applied, tail } = old;
        let mut holds = HashMap::new();
        for (id, hold) in head.holds {
            let account = head.accounts.get(&hold.account);
            let available = account.ok_or(format!("hold {:x} of no account", id.0))?.available();
            let HoldV8 { account, key, amount, reserved_at_ms, expires_at_ms } = hold;
            let lived = expires_at_ms.checked_sub(reserved_at_ms);
            if lived.is_none_or(|ttl_ms| ttl_ms > HOLD_TTL_MS_MAX) {
                return Err(format!("hold {:x} lives out of range", id.0));
            }
            holds.insert(
                id,
                Hold { account, key, amount, reserved_at_ms, expires_at_ms, available },
            );
        }
        let ended = ended.iter().map(|(hold, forget_at_ms, ending)| {
            let settled = match *ending {
                EndingV8::Settled { charged, released, written_off } => {
                    Some(Settlement { charged, released, written_off })
                }
                EndingV8::Released | EndingV8::Expired => None,
            };
            (hold, forget_at_ms, PackedEnded::from(Ended { reservation: None, settled }))
        });
        Ok(Ledger {
            accounts: head.accounts,
            keys: head.keys,
            keys_by_hash: head.keys_by_hash,
            keys_by_account: head.keys_by_account,
            holds: Holds::from_persistent(holds, head.expiry),
            ended: Window::try_from_entries(ended)?,
            applied,
            top_ups: tail.top_ups,
            stamp_ms: tail.stamp_ms,
            credited: tail.credited,
            written_off: tail.written_off,
            users: tail.users,
            users_by_email: tail.users_by_email,
            members: tail.members,
            revoked_sessions: tail.revoked_sessions,
            revoked_order: tail.revoked_order,
        })
    }
}

/// A [`Ledger`] in format version 7's layout (field for field, since the encoding is
/// positional), decoded only to become a `Ledger` (`Ledger::try_from`).
#[derive(Deserialize)]
pub struct LedgerV7 {
    head: HeadV8,
    ended: HashMap<HoldId, EndedHoldV7>,
    ended_order: OrdSet<(u64, HoldId)>,
    applied: HashMap<OpId, (u64, Outcome)>,
    applied_order: imbl::Vector<(u64, OpId)>,
    tail: TailV8,
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

    /// Through version 8's layout.
    fn try_from(old: LedgerV7) -> Result<Ledger, String> {
        Ledger::try_from(LedgerV8::try_from(old)?)
    }
}

impl TryFrom<LedgerV7> for LedgerV8 {
    type Error = String;

    /// Refuses a state whose time-bounded sets disagree with their orders, which version
    /// 7 never wrote.
    fn try_from(old: LedgerV7) -> Result<LedgerV8, String> {
        let ended = old.ended_order.iter().map(|&(forget_at_ms, hold)| {
            let found = old.ended.get(&hold).filter(|ended| ended.forget_at_ms == forget_at_ms);
            let ending = match found.map(|ended| &ended.ending) {
                Some(EndingV7::Settled(Reply::Settled { charged, released, written_off })) => {
                    let (charged, released, written_off) = (*charged, *released, *written_off);
                    EndingV8::Settled { charged, released, written_off }
                }
                Some(EndingV7::Released) => EndingV8::Released,
                Some(EndingV7::Expired) => EndingV8::Expired,
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
        Ok(LedgerV8 { head: old.head, ended, applied, tail: old.tail })
    }
}
