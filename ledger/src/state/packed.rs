//! [`PackedEnded`]: an ended hold as the ledger's window keeps it in memory. The window
//! holds one per request of the last [`HOLDS_REMEMBERED_FOR_MS`](super::HOLDS_REMEMBERED_FOR_MS)
//! (4.5 M entries in a node serving 75,000 lifecycles/s), so its size is most of a loaded
//! node's memory and of the pages it touches. [`Ended`] keeps its five amounts as 128-bit
//! integers (128 bytes, an entry of 160 with its id); a request's amounts fit 64 bits
//! unless it moves more than $18 million, and the balance it left fits 80 bits unless the
//! account holds more than $604 billion, so the window keeps them so (72 bytes, an entry
//! of 96) and the rare hold that does not fit whole behind a pointer. Its serialized form
//! is [`Ended`]'s, so snapshots read and write as before.

use super::{AccountId, Ended, KeyId, PicoUsd, Reservation, Settlement};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An [`Ended`] in the fewest bytes its amounts allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum PackedEnded {
    /// Every amount fits 64 bits and the balance left 80: all but holds of more than $18
    /// million and of accounts holding more than $604 billion.
    Narrow(Narrow),
    Wide(Box<Ended>),
}

/// An [`Ended`] whose amounts fit 64 bits and whose balance left fits 80. The parts it
/// does not have are zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Narrow {
    account: AccountId,
    key: KeyId,
    reserved_at_ms: u64,
    amount: u64,
    /// The balance the reserve left: its low 64 bits, then the rest.
    available_low: u64,
    available_high: i16,
    charged: u64,
    released: u64,
    written_off: u64,
    ttl_ms: u32,
    /// Whether, and how, the hold's reserve is known ([`Ended::reservation`]); its unused
    /// values are where [`PackedEnded`] tells its two forms apart.
    reserve: Reserve,
    /// Whether a settle came ([`Ended::settled`]).
    settled: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reserve {
    Unknown,
    Made,
    /// Made, and a release ended it.
    Released,
}

/// An entry of the window: its id, its `forget_at_ms` and this, with no padding.
const _: () = assert!(std::mem::size_of::<PackedEnded>() == 72, "the narrow form's size");

impl PackedEnded {
    pub(super) fn unpack(&self) -> Ended {
        let narrow = match self {
            PackedEnded::Narrow(narrow) => narrow,
            PackedEnded::Wide(ended) => return **ended,
        };
        let reservation = (narrow.reserve != Reserve::Unknown).then(|| Reservation {
            account: narrow.account,
            key: narrow.key,
            amount: PicoUsd(u128::from(narrow.amount)),
            available: i128::from(narrow.available_high) << 64 | i128::from(narrow.available_low),
            reserved_at_ms: narrow.reserved_at_ms,
            ttl_ms: narrow.ttl_ms,
            released: narrow.reserve == Reserve::Released,
        });
        let settled = narrow.settled.then(|| Settlement {
            charged: PicoUsd(u128::from(narrow.charged)),
            released: PicoUsd(u128::from(narrow.released)),
            written_off: PicoUsd(u128::from(narrow.written_off)),
        });
        Ended { reservation, settled }
    }

    /// The narrow form, if every figure fits it.
    fn narrow(ended: &Ended) -> Option<Narrow> {
        let narrow_amount = |amount: PicoUsd| u64::try_from(amount.0).ok();
        let zero = Reservation {
            account: AccountId(0),
            key: KeyId(0),
            amount: PicoUsd::ZERO,
            available: 0,
            reserved_at_ms: 0,
            ttl_ms: 0,
            released: false,
        };
        let made = ended.reservation.unwrap_or(zero);
        let settled = ended.settled.unwrap_or(Settlement {
            charged: PicoUsd::ZERO,
            released: PicoUsd::ZERO,
            written_off: PicoUsd::ZERO,
        });
        let reserve = match ended.reservation {
            None => Reserve::Unknown,
            Some(made) if made.released => Reserve::Released,
            Some(_) => Reserve::Made,
        };
        Some(Narrow {
            account: made.account,
            key: made.key,
            reserved_at_ms: made.reserved_at_ms,
            amount: narrow_amount(made.amount)?,
            available_low: made.available as u64,
            available_high: i16::try_from(made.available >> 64).ok()?,
            charged: narrow_amount(settled.charged)?,
            released: narrow_amount(settled.released)?,
            written_off: narrow_amount(settled.written_off)?,
            ttl_ms: made.ttl_ms,
            reserve,
            settled: ended.settled.is_some(),
        })
    }
}

impl From<Ended> for PackedEnded {
    fn from(ended: Ended) -> PackedEnded {
        match PackedEnded::narrow(&ended) {
            Some(narrow) => PackedEnded::Narrow(narrow),
            None => PackedEnded::Wide(Box::new(ended)),
        }
    }
}

impl Serialize for PackedEnded {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.unpack().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for PackedEnded {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<PackedEnded, D::Error> {
        Ended::deserialize(deserializer).map(PackedEnded::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn amount() -> impl Strategy<Value = PicoUsd> {
        prop_oneof![
            (0..=u128::from(u64::MAX)).prop_map(PicoUsd),
            (u128::from(u64::MAX)..=u128::MAX).prop_map(PicoUsd),
        ]
    }

    fn ended() -> impl Strategy<Value = Ended> {
        let reservation = (
            (any::<u64>(), any::<u64>(), amount()),
            (
                prop_oneof![
                    any::<i64>().prop_map(i128::from),
                    -(1i128 << 80)..(1i128 << 80),
                    any::<i128>()
                ],
                any::<u64>(),
            ),
            (any::<u32>(), any::<bool>()),
        )
            .prop_map(
                |((account, key, amount), (available, reserved_at_ms), (ttl_ms, released))| {
                    Reservation {
                        account: AccountId(account),
                        key: KeyId(key),
                        amount,
                        available,
                        reserved_at_ms,
                        ttl_ms,
                        released,
                    }
                },
            );
        let settled =
            (amount(), amount(), amount()).prop_map(|(charged, released, written_off)| {
                Settlement { charged, released, written_off }
            });
        (proptest::option::of(reservation), proptest::option::of(settled))
            .prop_map(|(reservation, settled)| Ended { reservation, settled })
    }

    proptest! {
        #[test]
        fn an_ended_hold_unpacks_as_it_was_packed_and_serializes_alike(ended in ended()) {
            let packed = PackedEnded::from(ended);
            prop_assert_eq!(packed.unpack(), ended);
            let fits = |amount: PicoUsd| amount.0 <= u128::from(u64::MAX);
            let narrow = ended.reservation.is_none_or(|made| {
                fits(made.amount) && (-(1i128 << 79)..1i128 << 79).contains(&made.available)
            }) && ended.settled.is_none_or(|settled| {
                fits(settled.charged) && fits(settled.released) && fits(settled.written_off)
            });
            prop_assert_eq!(matches!(packed, PackedEnded::Narrow(_)), narrow);
            let json = serde_json::to_string(&packed).unwrap();
            prop_assert_eq!(&json, &serde_json::to_string(&ended).unwrap());
            prop_assert_eq!(serde_json::from_str::<PackedEnded>(&json).unwrap(), packed);
        }
    }
}
