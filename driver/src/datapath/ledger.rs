//! Totals of the endpoints' counters since the daemon started, kept monotonic for metrics:
//! what endpoints that went had counted is kept when their counters are deleted, and what the
//! pinned counters held before the daemon started is not counted again (no code here touches
//! the kernel; the datapath feeds it).
//!
//! A total is a sum over live counters read at one moment and removals recorded at another,
//! so a removal racing a read can make one reading low; the totals handed out never go down
//! (each value is at least the last one handed out), which Prometheus would take for a reset.

use std::collections::BTreeMap;

use super::{Counters, Traffic};

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CounterLedger {
    /// What each endpoint (by number) had counted when the daemon started.
    baseline: BTreeMap<u32, Counters>,
    /// What the endpoints removed since then counted while the daemon ran.
    removed: Counters,
    /// The totals last handed out.
    last: Counters,
}

impl CounterLedger {
    /// Starts counting from `current`: what the counters hold now counts as zero.
    pub fn start(current: BTreeMap<u32, Counters>) -> Self {
        CounterLedger { baseline: current, ..CounterLedger::default() }
    }

    /// Endpoint `number`'s counters were deleted; `last` is what they held just before.
    pub fn removed(&mut self, number: u32, last: Option<&Counters>) {
        let baseline = self.baseline.remove(&number).unwrap_or_default();
        if let Some(last) = last {
            self.removed.add(&last.since(&baseline));
        }
    }

    /// The state to combine with a later reading of the counters: take it *before* reading
    /// them, so an endpoint removed in between is missing from both (never counted twice).
    pub fn snapshot(&self) -> LedgerSnapshot {
        LedgerSnapshot { baseline: self.baseline.clone(), removed: self.removed.clone() }
    }

    /// The totals since the start, from `current` (read after `snapshot` was taken), never
    /// below what was handed out before.
    pub fn totals(&mut self, snapshot: &LedgerSnapshot, current: &BTreeMap<u32, Counters>) -> Counters {
        let mut totals = snapshot.removed.clone();
        for (number, counters) in current {
            match snapshot.baseline.get(number) {
                Some(baseline) => totals.add(&counters.since(baseline)),
                None => totals.add(counters),
            }
        }
        self.last.raise_to(&totals);
        self.last.clone()
    }
}

/// What [`CounterLedger::snapshot`] takes.
#[derive(Debug, Clone)]
pub struct LedgerSnapshot {
    baseline: BTreeMap<u32, Counters>,
    removed: Counters,
}

impl Traffic {
    fn add(&mut self, other: Traffic) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }

    fn since(self, earlier: Traffic) -> Traffic {
        Traffic {
            packets: self.packets.saturating_sub(earlier.packets),
            bytes: self.bytes.saturating_sub(earlier.bytes),
        }
    }

    fn raise_to(&mut self, other: Traffic) {
        self.packets = self.packets.max(other.packets);
        self.bytes = self.bytes.max(other.bytes);
    }
}

impl Counters {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counters) {
        self.egress.add(other.egress);
        self.ingress.add(other.ingress);
        for (key, traffic) in &other.drops {
            self.drops.entry(key.clone()).or_default().add(*traffic);
        }
    }

    /// What was counted after `earlier` (the same counters, read before).
    pub fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            egress: self.egress.since(earlier.egress),
            ingress: self.ingress.since(earlier.ingress),
            drops: self
                .drops
                .iter()
                .map(|(key, t)| (key.clone(), t.since(earlier.drops.get(key).copied().unwrap_or_default())))
                .filter(|(_, t)| t.packets > 0)
                .collect(),
        }
    }

    /// Each count becomes the larger of it and `other`'s.
    fn raise_to(&mut self, other: &Counters) {
        self.egress.raise_to(other.egress);
        self.ingress.raise_to(other.ingress);
        for (key, traffic) in &other.drops {
            self.drops.entry(key.clone()).or_default().raise_to(*traffic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(egress: u64, denied: u64) -> Counters {
        let mut c = Counters { egress: Traffic { packets: egress, bytes: egress * 100 }, ..Counters::default() };
        if denied > 0 {
            c.drops.insert("POLICY_DENIED/ingress".to_owned(), Traffic { packets: denied, bytes: denied * 60 });
        }
        c
    }

    fn totals(ledger: &mut CounterLedger, current: &BTreeMap<u32, Counters>) -> Counters {
        let snapshot = ledger.snapshot();
        ledger.totals(&snapshot, current)
    }

    #[test]
    fn totals_count_from_the_start_and_keep_what_removed_endpoints_counted() {
        // Endpoint 1 counted 10 packets before the daemon started.
        let mut ledger = CounterLedger::start(BTreeMap::from([(1, counters(10, 2))]));
        assert_eq!(totals(&mut ledger, &BTreeMap::from([(1, counters(10, 2))])), Counters::default());

        let now = BTreeMap::from([(1, counters(15, 3)), (2, counters(4, 0))]);
        let t = totals(&mut ledger, &now);
        assert_eq!(t.egress.packets, 5 + 4);
        assert_eq!(t.drops["POLICY_DENIED/ingress"].packets, 1);

        // Endpoint 1 goes: what it counted since the start stays in the totals.
        ledger.removed(1, Some(&counters(16, 3)));
        let t = totals(&mut ledger, &BTreeMap::from([(2, counters(6, 1))]));
        assert_eq!(t.egress.packets, 6 + 6);
        assert_eq!(t.drops["POLICY_DENIED/ingress"].packets, 1 + 1);

        // A new endpoint with the freed number starts from zero.
        ledger.removed(2, Some(&counters(6, 1)));
        let t = totals(&mut ledger, &BTreeMap::from([(1, counters(1, 0))]));
        assert_eq!(t.egress.packets, 6 + 6 + 1);
    }

    #[test]
    fn a_removal_racing_a_read_never_counts_twice_nor_makes_totals_go_down() {
        let mut ledger = CounterLedger::start(BTreeMap::new());
        let before = totals(&mut ledger, &BTreeMap::from([(1, counters(5, 0)), (2, counters(5, 0))]));
        assert_eq!(before.egress.packets, 10);
        // The snapshot is taken, endpoint 2 is removed, then the counters are read: it is in
        // neither, and the total handed out stays where it was.
        let snapshot = ledger.snapshot();
        ledger.removed(2, Some(&counters(5, 0)));
        let racing = ledger.totals(&snapshot, &BTreeMap::from([(1, counters(6, 0))]));
        assert_eq!(racing.egress.packets, 10, "never below what was handed out");
        let after = totals(&mut ledger, &BTreeMap::from([(1, counters(6, 0))]));
        assert_eq!(after.egress.packets, 11);
    }
}
