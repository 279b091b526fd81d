//! The per-field strategies of ARCHITECTURE.md §4. Each decision depends only on the two candidates
//! (value, source timestamp, system rank and name), never on which arrived first: that is what
//! makes resolution converge whatever the order of concurrent changes.

use std::cmp::Ordering;

use super::{Candidate, FieldRule, FieldValue, SystemInfo};
use crate::config::Strategy;
use crate::model::temporal::Timestamp;

/// What a change does to a field.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    Write(FieldValue),
    /// The current value stays.
    Keep,
}

/// A change whose system had seen the current value: it simply writes, except under `sum`,
/// where what counts is the system's movement from what it held.
pub fn plain(
    strategy: Strategy,
    current: Option<&FieldValue>,
    base: Option<&FieldValue>,
    incoming: &Candidate,
) -> Resolution {
    match (strategy, current, base) {
        (Strategy::Sum, Some(current), Some(base)) => {
            sum(current, base, &incoming.value).map_or(Resolution::Keep, Resolution::Write)
        }
        // A system's first report of a field the record already has: not a movement, so it
        // changes nothing (it only becomes the base of the system's next movement) — exactly
        // as when the same report arrives as a conflict.
        (Strategy::Sum, Some(_), None) => Resolution::Keep,
        _ => Resolution::Write(incoming.value.clone()),
    }
}

/// A concurrent write: the strategy decides. Returns the resolution and the winning candidate
/// (0 = current, 1 = incoming), `None` when no single candidate won (`sum`, `manual`).
pub fn resolve(
    rule: &FieldRule,
    systems: &[SystemInfo],
    current: &Candidate,
    incoming: &Candidate,
    base: Option<&FieldValue>,
) -> (Resolution, Option<usize>) {
    let pick = |incoming_wins: bool| {
        if incoming_wins {
            (Resolution::Write(incoming.value.clone()), Some(1))
        } else {
            (Resolution::Keep, Some(0))
        }
    };
    let later = || tie_break(systems, incoming, current) == Ordering::Greater;
    match rule.strategy {
        Strategy::Lww => pick(match incoming.ts_us.cmp(&current.ts_us) {
            Ordering::Equal => later(),
            order => order == Ordering::Greater,
        }),
        Strategy::Fww => pick(match incoming.ts_us.cmp(&current.ts_us) {
            Ordering::Equal => later(),
            order => order == Ordering::Less,
        }),
        Strategy::Priority => {
            let rank = |c: &Candidate| {
                rule.priority
                    .iter()
                    .position(|&s| s == c.system)
                    .unwrap_or(usize::MAX)
            };
            pick(match rank(incoming).cmp(&rank(current)) {
                Ordering::Equal => later(),
                order => order == Ordering::Less,
            })
        }
        Strategy::Max | Strategy::Min => match compare_values(&incoming.value, &current.value) {
            Some(Ordering::Equal) => pick(false),
            Some(order) => pick((order == Ordering::Greater) == (rule.strategy == Strategy::Max)),
            None => pick(later()),
        },
        Strategy::Sum => match base.and_then(|b| sum(&current.value, b, &incoming.value)) {
            Some(total) => (Resolution::Write(total), None),
            // No base to measure a movement from: the system's first report of the field. It
            // cannot be a movement, and counting it would add the whole stock twice.
            None => (Resolution::Keep, Some(0)),
        },
        // Sets merge before this (engine::orset); a value that is not a set is taken
        // like `lww`.
        Strategy::Merge => pick(match incoming.ts_us.cmp(&current.ts_us) {
            Ordering::Equal => later(),
            order => order == Ordering::Greater,
        }),
        Strategy::Manual => (Resolution::Keep, None),
    }
}

/// Higher rank wins, then the greater name: a total order on systems.
fn tie_break(systems: &[SystemInfo], a: &Candidate, b: &Candidate) -> Ordering {
    let info = |c: &Candidate| {
        systems
            .get(c.system.0 as usize)
            .map(|s| (s.rank, s.name.as_str()))
    };
    info(a).cmp(&info(b)).then(a.system.cmp(&b.system))
}

/// Numbers by value, text by its characters, dates, times and timestamps by time (a date as
/// its midnight beside a timestamp); other kinds are not comparable.
fn compare_values(a: &FieldValue, b: &FieldValue) -> Option<Ordering> {
    match (a.as_decimal(), b.as_decimal()) {
        (Some(x), Some(y)) => Some(x.cmp_value(&y)),
        _ if matches!(a, FieldValue::WideDecimal(_)) || matches!(b, FieldValue::WideDecimal(_)) => {
            let ((x, xs), (y, ys)) = (a.as_wide()?, b.as_wide()?);
            let (x, y, _) = aligned_wide(x, xs, y, ys);
            Some(x.cmp(&y))
        }
        _ => match (a, b) {
            (FieldValue::Text(x), FieldValue::Text(y)) => Some(x.cmp(y)),
            (FieldValue::Float(x), FieldValue::Float(y)) => x.partial_cmp(y),
            (FieldValue::Date(x), FieldValue::Date(y)) => Some(x.cmp(y)),
            (FieldValue::Bytes(x), FieldValue::Bytes(y)) => Some(x.cmp(y)),
            (FieldValue::Time(x), FieldValue::Time(y)) => Some(x.cmp(y)),
            (FieldValue::Timestamp(x), FieldValue::Timestamp(y)) => Some(x.cmp(y)),
            (FieldValue::Date(x), FieldValue::Timestamp(y)) => {
                Some(Timestamp::from_date(*x).cmp(y))
            }
            (FieldValue::Timestamp(x), FieldValue::Date(y)) => {
                Some(x.cmp(&Timestamp::from_date(*y)))
            }
            _ => None,
        },
    }
}

/// `current + (new − base)`, in integers when all three are integers.
fn sum(current: &FieldValue, base: &FieldValue, new: &FieldValue) -> Option<FieldValue> {
    if let (FieldValue::Int(c), FieldValue::Int(b), FieldValue::Int(n)) = (current, base, new) {
        return c.checked_add(n.checked_sub(*b)?).map(FieldValue::Int);
    }
    let (c, b, n) = (current.as_decimal(), base.as_decimal(), new.as_decimal());
    if let (Some(c), Some(b), Some(n)) = (c, b, n) {
        if let Some(total) = n.checked_sub(&b).and_then(|m| c.checked_add(&m)) {
            return Some(FieldValue::Decimal(total.normalized()));
        }
    }
    // Beyond 38 digits, one of them or the total: in big integers, so no movement is dropped.
    let ((c, cs), (b, bs), (n, ns)) = (current.as_wide()?, base.as_wide()?, new.as_wide()?);
    let (n, b, movement_scale) = aligned_wide(n, ns, b, bs);
    let (c, movement, scale) = aligned_wide(c, cs, n - b, movement_scale);
    Some(FieldValue::from_wide(c + movement, scale))
}

/// Two exact numbers at the larger of their scales.
fn aligned_wide(
    a: num_bigint::BigInt,
    a_scale: u32,
    b: num_bigint::BigInt,
    b_scale: u32,
) -> (num_bigint::BigInt, num_bigint::BigInt, u32) {
    let scale = a_scale.max(b_scale);
    let up = |x: num_bigint::BigInt, s: u32| x * num_bigint::BigInt::from(10u8).pow(scale - s);
    (up(a, a_scale), up(b, b_scale), scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::value::Decimal;

    fn wide(text: &str) -> FieldValue {
        FieldValue::WideDecimal(text.into())
    }

    #[test]
    fn sum_counts_movements_beyond_38_digits() {
        let big = "100000000000000000000000000000000000000000";
        // A movement of 5 on a wide stock.
        let total = sum(&wide(big), &FieldValue::Int(10), &FieldValue::Int(15));
        assert_eq!(
            total,
            Some(wide("100000000000000000000000000000000000000005"))
        );
        // A total that grows past 38 digits from two that fit.
        let near = Decimal::parse("99999999999999999999999999999999999999").unwrap();
        let total = sum(
            &FieldValue::Decimal(near),
            &FieldValue::Int(0),
            &FieldValue::Decimal(Decimal::parse("1.5").unwrap()),
        );
        assert_eq!(
            total,
            Some(wide("100000000000000000000000000000000000000.5"))
        );
        // And back within 38 digits: a Decimal again.
        let total = sum(&wide(big), &wide(big), &FieldValue::Int(3));
        assert_eq!(
            total,
            Some(FieldValue::Decimal(Decimal::parse("3").unwrap()))
        );
    }

    #[test]
    fn wide_decimals_compare_by_value() {
        let big = wide("100000000000000000000000000000000000000000.5");
        assert_eq!(
            compare_values(&big, &FieldValue::Int(7)),
            Some(Ordering::Greater)
        );
        assert_eq!(
            compare_values(&wide("-1e0"), &FieldValue::Int(7)),
            None,
            "not a number harmony wrote"
        );
        assert_eq!(
            compare_values(&big, &wide("100000000000000000000000000000000000000000.50")),
            Some(Ordering::Equal)
        );
    }
}
