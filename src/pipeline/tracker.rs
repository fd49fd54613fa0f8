//! Which offset of each partition is safe to commit.
//!
//! Architecture Invariant: a partition's committable offset never passes a message whose DB
//! work is unfinished. It is the lowest offset still in flight (fetched but not finished),
//! or the next offset to fetch when nothing is in flight; offsets have gaps, so "next to
//! fetch" comes from the consumer's position, never from `last + 1`. A message dropped
//! without being done (revocation, shutdown) holds the committable offset at or below it
//! until the partition is let go.
//!
//! Pure bookkeeping, owned by the poller thread: no locks, no I/O.
use std::collections::{BTreeSet, HashMap};

use blocking_kafka::{Offset, Partition};

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<Partition, Track>,
}

#[derive(Debug)]
struct Track {
    /// Fetched and not yet finished.
    in_flight: BTreeSet<i64>,
    /// The lowest offset dropped unfinished, if any.
    dropped_floor: Option<i64>,
    /// The next offset the consumer will fetch; `None` until known (a partition without a
    /// committed offset, until its leader has reset it): nothing is committable before.
    next_fetch: Option<i64>,
    /// What the group has committed for us, as far as we know.
    committed: Option<i64>,
}

impl OffsetTracker {
    pub fn new() -> OffsetTracker {
        OffsetTracker::default()
    }

    /// Starts tracking a newly assigned partition whose first fetch is at `start` (`None`:
    /// not known yet; see `position`).
    pub fn assign(&mut self, partition: Partition, start: Option<Offset>) {
        self.partitions.insert(
            partition,
            Track {
                in_flight: BTreeSet::new(),
                dropped_floor: None,
                next_fetch: start.map(|o| o.0),
                committed: None,
            },
        );
    }

    /// Stops tracking every partition (after the revoke commit).
    pub fn clear(&mut self) {
        self.partitions.clear();
    }

    /// Stops tracking `partitions` (after the commit that ends their revocation).
    pub fn remove(&mut self, partitions: &[Partition]) {
        for p in partitions {
            self.partitions.remove(p);
        }
    }

    /// A message was fetched: it is in flight until finished or dropped.
    pub fn fetched(&mut self, partition: Partition, offset: Offset) {
        if let Some(t) = self.partitions.get_mut(&partition) {
            t.in_flight.insert(offset.0);
            t.next_fetch = Some(t.next_fetch.map_or(offset.0 + 1, |n| n.max(offset.0 + 1)));
        }
    }

    /// The consumer's position moved (possibly past a gap with no message).
    pub fn position(&mut self, partition: Partition, next: Offset) {
        if let Some(t) = self.partitions.get_mut(&partition) {
            t.next_fetch = Some(t.next_fetch.map_or(next.0, |n| n.max(next.0)));
        }
    }

    /// The message's work is done (completed, failed, or dead-lettered).
    pub fn finished(&mut self, partition: Partition, offset: Offset) {
        if let Some(t) = self.partitions.get_mut(&partition) {
            t.in_flight.remove(&offset.0);
        }
    }

    /// The message will not be done by us: its offset must stay uncommitted.
    pub fn dropped(&mut self, partition: Partition, offset: Offset) {
        if let Some(t) = self.partitions.get_mut(&partition)
            && t.in_flight.remove(&offset.0)
        {
            t.dropped_floor = Some(t.dropped_floor.map_or(offset.0, |f| f.min(offset.0)));
        }
    }

    /// The offset that is safe to commit for `partition` (the next one to read).
    pub fn committable(&self, partition: Partition) -> Option<Offset> {
        let t = self.partitions.get(&partition)?;
        let mut at = t.next_fetch?;
        if let Some(first) = t.in_flight.first() {
            at = at.min(*first);
        }
        if let Some(floor) = t.dropped_floor {
            at = at.min(floor);
        }
        Some(Offset(at))
    }

    /// Partitions whose committable offset moved past what is committed.
    pub fn to_commit(&self) -> Vec<(Partition, Offset)> {
        let mut out: Vec<(Partition, Offset)> = self
            .partitions
            .iter()
            .filter_map(|(p, t)| {
                let at = self.committable(*p)?;
                (t.committed != Some(at.0)).then_some((*p, at))
            })
            .collect();
        out.sort();
        out
    }

    /// The group accepted these offsets.
    pub fn committed(&mut self, offsets: &[(Partition, Offset)]) {
        for (p, o) in offsets {
            if let Some(t) = self.partitions.get_mut(p) {
                t.committed = Some(o.0);
            }
        }
    }

    /// How many messages are fetched and not finished or dropped, over all partitions.
    pub fn in_flight(&self) -> usize {
        self.partitions.values().map(|t| t.in_flight.len()).sum()
    }

    /// Messages of `partitions` fetched and not finished.
    pub fn in_flight_of(&self, partitions: &[Partition]) -> usize {
        partitions
            .iter()
            .filter_map(|p| self.partitions.get(p))
            .map(|t| t.in_flight.len())
            .sum()
    }

    /// Whether the partition is tracked (assigned) now.
    pub fn owns(&self, partition: Partition) -> bool {
        self.partitions.contains_key(&partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const P: Partition = Partition(0);

    #[test]
    fn nothing_in_flight_commits_the_next_fetch_position() {
        let mut t = OffsetTracker::new();
        t.assign(P, Some(Offset(10)));
        assert_eq!(t.committable(P), Some(Offset(10)));
        t.position(P, Offset(14)); // a gap: transaction markers, compaction
        assert_eq!(t.committable(P), Some(Offset(14)));
    }

    #[test]
    fn a_partition_whose_start_is_not_known_yet_is_not_committed() {
        let mut t = OffsetTracker::new();
        t.assign(P, None);
        assert_eq!(t.committable(P), None);
        assert!(t.to_commit().is_empty());
        t.position(P, Offset(42)); // its leader reset it (earliest or latest)
        assert_eq!(t.to_commit(), vec![(P, Offset(42))]);
    }

    #[test]
    fn the_lowest_unfinished_offset_holds_the_commit() {
        let mut t = OffsetTracker::new();
        t.assign(P, Some(Offset(0)));
        for o in 0..5 {
            t.fetched(P, Offset(o));
        }
        t.finished(P, Offset(1));
        t.finished(P, Offset(2));
        assert_eq!(t.committable(P), Some(Offset(0)));
        t.finished(P, Offset(0));
        assert_eq!(t.committable(P), Some(Offset(3)));
        t.finished(P, Offset(3));
        t.finished(P, Offset(4));
        assert_eq!(t.committable(P), Some(Offset(5)));
    }

    #[test]
    fn a_dropped_offset_is_never_committed_past() {
        let mut t = OffsetTracker::new();
        t.assign(P, Some(Offset(0)));
        for o in 0..3 {
            t.fetched(P, Offset(o));
        }
        t.finished(P, Offset(0));
        t.dropped(P, Offset(1));
        t.finished(P, Offset(2));
        assert_eq!(t.committable(P), Some(Offset(1)));
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn to_commit_lists_only_moved_partitions() {
        let mut t = OffsetTracker::new();
        t.assign(P, Some(Offset(0)));
        t.assign(Partition(1), Some(Offset(7)));
        assert_eq!(
            t.to_commit(),
            vec![(P, Offset(0)), (Partition(1), Offset(7))]
        );
        t.committed(&t.to_commit());
        assert!(t.to_commit().is_empty());
        t.fetched(P, Offset(0));
        t.finished(P, Offset(0));
        assert_eq!(t.to_commit(), vec![(P, Offset(1))]);
    }

    #[test]
    fn unknown_partitions_are_ignored() {
        let mut t = OffsetTracker::new();
        t.finished(Partition(9), Offset(1));
        t.fetched(Partition(9), Offset(1));
        assert_eq!(t.committable(Partition(9)), None);
        assert_eq!(t.in_flight(), 0);
    }

    proptest! {
        /// Whatever the order in which workers finish (or drop) messages, the committable
        /// offset never passes an offset that is not finished.
        #[test]
        fn committable_never_passes_an_unfinished_offset(
            gaps in proptest::collection::vec(1i64..4, 1..60),
            order in proptest::collection::vec(any::<proptest::sample::Index>(), 1..60),
            drops in proptest::collection::vec(any::<bool>(), 60),
        ) {
            let mut t = OffsetTracker::new();
            t.assign(P, Some(Offset(0)));
            let mut offsets = Vec::new();
            let mut o = 0;
            for g in gaps {
                o += g;
                offsets.push(o);
                t.fetched(P, Offset(o));
            }
            t.position(P, Offset(o + 1));
            let mut pending: Vec<i64> = offsets.clone();
            let mut dropped: Vec<i64> = Vec::new();
            for (i, idx) in order.iter().enumerate() {
                if pending.is_empty() { break; }
                let off = pending.remove(idx.index(pending.len()));
                if drops[i % drops.len()] && i % 3 == 0 {
                    t.dropped(P, Offset(off));
                    dropped.push(off);
                } else {
                    t.finished(P, Offset(off));
                }
                let c = t.committable(P).unwrap().0;
                for unfinished in pending.iter().chain(dropped.iter()) {
                    prop_assert!(c <= *unfinished, "committable {c} passes unfinished {unfinished}");
                }
            }
            if pending.is_empty() && dropped.is_empty() {
                prop_assert_eq!(t.committable(P), Some(Offset(o + 1)));
            }
        }
    }
}
