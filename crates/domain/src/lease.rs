//! One gateway process's account of one credit lease: what it may still admit in memory.
//!
//! Amounts are in units of 10^-8 ([`crate::Money::units`]). The lease row in Postgres reserves
//! `granted - taken by settled charges - given back`; this account keeps
//! `available = granted - reserved by calls in flight - cost of finished calls - given back`.
//! A finished call's cost is taken from the row only when its charge settles, so the row always
//! reserves at least `available + in flight`: whatever this process admits is covered.

/// See the module documentation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseAccount {
    available: i128,
    in_flight: i128,
    calls: u32,
}

impl LeaseAccount {
    /// A lease just granted `granted` units.
    pub fn new(granted: i128) -> LeaseAccount {
        LeaseAccount {
            available: granted.max(0),
            ..LeaseAccount::default()
        }
    }

    /// Admits a call that may cost up to `reserve` units, if the lease still covers it.
    pub fn admit(&mut self, reserve: i128) -> bool {
        if reserve < 0 || self.available < reserve {
            return false;
        }
        self.available -= reserve;
        self.in_flight += reserve;
        self.calls += 1;
        true
    }

    /// A call admitted with `reserved` ended and its charge, `cost`, will be taken from the
    /// lease when it settles (0 for a failed call). A cost above what was reserved (an overrun)
    /// leaves less available, possibly below zero: settlement takes only what the lease still
    /// has, and the rest from what is free.
    pub fn finish(&mut self, reserved: i128, cost: i128) {
        self.in_flight -= reserved;
        self.calls = self.calls.saturating_sub(1);
        self.available += reserved - cost.max(0);
    }

    /// More was granted (a top-up).
    pub fn top_up(&mut self, granted: i128) {
        self.available += granted.max(0);
    }

    /// Takes everything still available, to give it back; the account then admits nothing
    /// until topped up.
    pub fn take_unused(&mut self) -> i128 {
        let unused = self.available.max(0);
        self.available -= unused;
        unused
    }

    /// Units that new calls may still reserve.
    pub fn available(&self) -> i128 {
        self.available
    }

    /// Units reserved by calls in flight.
    pub fn in_flight(&self) -> i128 {
        self.in_flight
    }

    /// Calls in flight.
    pub fn calls(&self) -> u32 {
        self.calls
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn admits_while_covered_and_frees_the_unused_part_of_a_reservation() {
        let mut lease = LeaseAccount::new(100);
        assert!(lease.admit(60));
        assert!(!lease.admit(60), "only 40 left");
        assert!(lease.admit(40));
        assert_eq!(
            (lease.available(), lease.in_flight(), lease.calls()),
            (0, 100, 2)
        );
        lease.finish(60, 10); // cost 10 of 60 reserved: 50 free again
        assert_eq!(lease.available(), 50);
        lease.finish(40, 0); // failed: all of it back
        assert_eq!(
            (lease.available(), lease.in_flight(), lease.calls()),
            (90, 0, 0)
        );
        assert_eq!(lease.take_unused(), 90);
        assert!(!lease.admit(1));
        lease.top_up(5);
        assert!(lease.admit(5));
    }

    #[test]
    fn an_overrun_leaves_less_than_nothing_and_gives_nothing_back() {
        let mut lease = LeaseAccount::new(10);
        assert!(lease.admit(10));
        lease.finish(10, 15);
        assert_eq!(lease.available(), -5);
        assert!(!lease.admit(1), "nothing to admit against");
        assert_eq!(lease.take_unused(), 0);
    }

    proptest! {
        /// Whatever the order of admissions and endings, what the lease row would still reserve
        /// (granted - costs - given back) covers what the process may admit plus its calls in
        /// flight, and costs never exceed what was reserved unless a call overran.
        #[test]
        fn the_row_always_covers_the_account(
            granted in 0i128..1_000_000,
            ops in proptest::collection::vec((0u8..4, 0i128..50_000, 0i128..60_000), 0..200),
        ) {
            let mut lease = LeaseAccount::new(granted);
            let mut row = granted;
            let mut open: Vec<i128> = Vec::new();
            for (op, a, b) in ops {
                match op {
                    0 => if lease.admit(a) { open.push(a) },
                    1 => if let Some(reserved) = open.pop() {
                        let cost = b.min(reserved); // no overrun here
                        lease.finish(reserved, cost);
                        row -= cost;
                    },
                    2 => { lease.top_up(a); row += a; }
                    _ => { row -= lease.take_unused(); }
                }
                prop_assert!(lease.available() >= 0);
                prop_assert!(row >= lease.available() + lease.in_flight());
                prop_assert_eq!(lease.in_flight(), open.iter().sum::<i128>());
            }
        }
    }
}
