//! Version vectors and dots: how harmony tells a change that *saw* another from one that
//! happened *concurrently* with it (ARCHITECTURE.md §4).
//!
//! A version vector maps each system to the number of its changes harmony has accepted; an
//! absent system counts 0. A dot names one change: `(system, counter)`.
//!
//! ```text
//! a = {erp: 2, shop: 1}    b = {erp: 2, shop: 3}    c = {erp: 3, shop: 1}
//! a ≤ b (b saw everything a saw)      b ∥ c (each saw something the other did not)
//! a ∨ c = {erp: 3, shop: 1}           {erp: 2} covers the dot (erp, 2) but not (erp, 3)
//! ```
//!
//! Pure and small: systems are few, so the vector is a sorted list, not a map.

use std::cmp::Ordering;
use std::fmt;

/// The system manual resolutions come from, harmony's own name in version vectors. Reserved: no
/// configured system may take the name.
pub const OPERATOR: &str = "operator";

/// A system's index in the configuration. Stable while a configuration runs; what is stored
/// durably names systems, not indices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SystemId(pub u16);

/// One change: the `counter`-th change harmony accepted from `system`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dot {
    pub system: SystemId,
    pub counter: u64,
}

/// System → accepted changes. Entries are sorted by system and never 0.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    entries: Vec<(SystemId, u64)>,
}

impl VersionVector {
    pub fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
    }

    /// Bytes its entries take on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<(SystemId, u64)>()
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// Empty, with room for `systems` entries.
    pub fn with_capacity(systems: usize) -> Self {
        Self {
            entries: Vec::with_capacity(systems),
        }
    }

    /// The count for `system`; 0 when absent.
    pub fn get(&self, system: SystemId) -> u64 {
        self.entries
            .binary_search_by_key(&system, |&(s, _)| s)
            .map_or(0, |i| self.entries[i].1)
    }

    /// Sets `system`'s count (0 removes it).
    pub fn set(&mut self, system: SystemId, counter: u64) {
        match self.entries.binary_search_by_key(&system, |&(s, _)| s) {
            Ok(i) if counter == 0 => {
                self.entries.remove(i);
            }
            Ok(i) => self.entries[i].1 = counter,
            Err(_) if counter == 0 => {}
            Err(i) => self.entries.insert(i, (system, counter)),
        }
    }

    /// The vector that has seen exactly the changes of `dot`'s system up to it.
    pub fn from_dot(dot: Dot) -> Self {
        let mut v = Self::new();
        v.set(dot.system, dot.counter);
        v
    }

    /// Counts one more change from `system` and returns its dot.
    pub fn increment(&mut self, system: SystemId) -> Dot {
        let counter = self.get(system) + 1;
        self.set(system, counter);
        Dot { system, counter }
    }

    /// Whether the change `dot` is part of what this vector has seen.
    pub fn covers(&self, dot: Dot) -> bool {
        self.get(dot.system) >= dot.counter
    }

    /// Pointwise maximum: everything either side has seen.
    pub fn merge(&mut self, other: &VersionVector) {
        for &(system, counter) in &other.entries {
            if counter > self.get(system) {
                self.set(system, counter);
            }
        }
    }

    /// Whether each side saw something the other did not.
    pub fn concurrent_with(&self, other: &VersionVector) -> bool {
        self.partial_cmp(other).is_none()
    }

    pub fn iter(&self) -> impl Iterator<Item = (SystemId, u64)> + '_ {
        self.entries.iter().copied()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The causal order: `Less` when `other` saw everything `self` did and more; `None` when the
/// two are concurrent.
impl PartialOrd for VersionVector {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        let (mut less, mut greater) = (false, false);
        let (mut a, mut b) = (
            self.entries.iter().peekable(),
            other.entries.iter().peekable(),
        );
        loop {
            let (x, y) = match (a.peek(), b.peek()) {
                (None, None) => break,
                (Some(&&(_, x)), None) => {
                    a.next();
                    (x, 0)
                }
                (None, Some(&&(_, y))) => {
                    b.next();
                    (0, y)
                }
                (Some(&&(sa, x)), Some(&&(sb, y))) => match sa.cmp(&sb) {
                    Ordering::Less => {
                        a.next();
                        (x, 0)
                    }
                    Ordering::Greater => {
                        b.next();
                        (0, y)
                    }
                    Ordering::Equal => {
                        a.next();
                        b.next();
                        (x, y)
                    }
                },
            };
            less |= x < y;
            greater |= x > y;
            if less && greater {
                return None;
            }
        }
        Some(match (less, greater) {
            (false, false) => Ordering::Equal,
            (true, false) => Ordering::Less,
            _ => Ordering::Greater,
        })
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(s, c)| (s.0, c)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u16, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(s, c) in pairs {
            v.set(SystemId(s), c);
        }
        v
    }

    #[test]
    fn the_example_of_the_module_doc() {
        let (a, b, c) = (
            vv(&[(0, 2), (1, 1)]),
            vv(&[(0, 2), (1, 3)]),
            vv(&[(0, 3), (1, 1)]),
        );
        assert!(a < b);
        assert!(b.concurrent_with(&c));
        let mut ac = a.clone();
        ac.merge(&c);
        assert_eq!(ac, c);
        let erp2 = vv(&[(0, 2)]);
        assert!(erp2.covers(Dot {
            system: SystemId(0),
            counter: 2
        }));
        assert!(!erp2.covers(Dot {
            system: SystemId(0),
            counter: 3
        }));
    }

    #[test]
    fn absent_is_zero_and_zero_is_absent() {
        let mut v = vv(&[(3, 1)]);
        assert_eq!(v.get(SystemId(7)), 0);
        v.set(SystemId(3), 0);
        assert!(v.is_empty());
        assert_eq!(v, VersionVector::new());
        assert_eq!(
            vv(&[(1, 0)]).partial_cmp(&VersionVector::new()),
            Some(Ordering::Equal)
        );
    }

    #[test]
    fn increment_yields_consecutive_dots() {
        let mut v = VersionVector::new();
        assert_eq!(
            v.increment(SystemId(2)),
            Dot {
                system: SystemId(2),
                counter: 1
            }
        );
        assert_eq!(
            v.increment(SystemId(2)),
            Dot {
                system: SystemId(2),
                counter: 2
            }
        );
        assert_eq!(v.get(SystemId(2)), 2);
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u16..5, 0u64..6), 0..6).prop_map(|pairs| vv(&pairs))
    }

    fn merged(a: &VersionVector, b: &VersionVector) -> VersionVector {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative_associative_idempotent(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let m = merged(&a, &b);
            prop_assert!(a <= m && b <= m);
            // Least: whatever is above both is above the merge.
            if a <= c && b <= c {
                prop_assert!(m <= c);
            }
        }

        #[test]
        fn order_agrees_with_pointwise_comparison(a in arb_vv(), b in arb_vv()) {
            let le = (0u16..6).all(|s| a.get(SystemId(s)) <= b.get(SystemId(s)));
            let ge = (0u16..6).all(|s| a.get(SystemId(s)) >= b.get(SystemId(s)));
            let expected = match (le, ge) {
                (true, true) => Some(Ordering::Equal),
                (true, false) => Some(Ordering::Less),
                (false, true) => Some(Ordering::Greater),
                (false, false) => None,
            };
            prop_assert_eq!(a.partial_cmp(&b), expected);
            prop_assert_eq!(b.partial_cmp(&a), expected.map(Ordering::reverse));
        }

        #[test]
        fn a_vector_covers_exactly_the_dots_below_it(a in arb_vv(), s in 0u16..5, counter in 1u64..8) {
            let dot = Dot { system: SystemId(s), counter };
            prop_assert_eq!(a.covers(dot), counter <= a.get(SystemId(s)));
            let mut b = a.clone();
            let fresh = b.increment(SystemId(s));
            prop_assert!(!a.covers(fresh) && b.covers(fresh));
            prop_assert!(a < b);
        }
    }
}
