//! Offsets: at-least-once bookkeeping of the events topic.
//!
//! In: every consumed record ([`OffsetLedger::begin`]) and, later, the end of
//! all its work ([`OffsetLedger::finish`]). Out: per partition, the offset it is
//! safe to commit: the lowest offset still in flight, or one past the highest
//! offset seen when nothing is in flight. Records finish in any order; the
//! committed point only ever covers records that are completely done, so a
//! crash at any moment redelivers, never skips.
//!
//! A partition revoked by a rebalance is forgotten; work of the old assignment
//! that finishes afterwards is ignored (its `generation` no longer matches), so
//! it can never move the commit point of a later assignment.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Offsets in flight of one partition.
#[derive(Debug, Default)]
struct PartitionOffsets {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: i64,
}

impl PartitionOffsets {
    fn committable(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// Proof that a record was begun; hand it back to [`OffsetLedger::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

/// Offsets of every assigned partition.
#[derive(Debug, Default)]
pub struct OffsetLedger {
    partitions: Mutex<HashMap<(String, i32), PartitionOffsets>>,
    generations: AtomicU64,
}

impl OffsetLedger {
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let mut map = self
            .partitions
            .lock()
            .expect("ledger lock is never poisoned");
        let entry = map
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| PartitionOffsets {
                generation: self.generations.fetch_add(1, Ordering::Relaxed),
                in_flight: BTreeSet::new(),
                next: offset,
            });
        entry.in_flight.insert(offset);
        entry.next = entry.next.max(offset + 1);
        Ticket {
            topic: topic.to_owned(),
            partition,
            offset,
            generation: entry.generation,
        }
    }

    /// Marks `ticket`'s record done. Returns the partition's new commit point
    /// when it moved, else `None` (an older record is still in flight, or the
    /// partition was revoked meanwhile).
    pub fn finish(&self, ticket: &Ticket) -> Option<i64> {
        let mut map = self
            .partitions
            .lock()
            .expect("ledger lock is never poisoned");
        let entry = map.get_mut(&(ticket.topic.clone(), ticket.partition))?;
        if entry.generation != ticket.generation {
            return None;
        }
        let before = entry.committable();
        entry.in_flight.remove(&ticket.offset);
        let after = entry.committable();
        (after != before).then_some(after)
    }

    /// Forgets partitions taken away by a rebalance.
    pub fn revoke(&self, partitions: impl IntoIterator<Item = (String, i32)>) {
        let mut map = self
            .partitions
            .lock()
            .expect("ledger lock is never poisoned");
        for key in partitions {
            map.remove(&key);
        }
    }

    /// The commit point of every partition, for the final commit at shutdown.
    pub fn committable(&self) -> Vec<(String, i32, i64)> {
        let map = self
            .partitions
            .lock()
            .expect("ledger lock is never poisoned");
        map.iter()
            .map(|((t, p), o)| (t.clone(), *p, o.committable()))
            .collect()
    }

    /// Records begun and not yet finished, across partitions.
    pub fn in_flight(&self) -> usize {
        let map = self
            .partitions
            .lock()
            .expect("ledger lock is never poisoned");
        map.values().map(|o| o.in_flight.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn commit_point_waits_for_the_oldest_record() {
        let l = OffsetLedger::default();
        let a = l.begin("t", 0, 10);
        let b = l.begin("t", 0, 11);
        let c = l.begin("t", 0, 12);
        assert_eq!(l.finish(&b), None, "10 is still in flight");
        assert_eq!(l.finish(&a), Some(12));
        assert_eq!(l.finish(&c), Some(13));
        assert_eq!(l.committable(), vec![("t".to_owned(), 0, 13)]);
    }

    #[test]
    fn partitions_are_independent() {
        let l = OffsetLedger::default();
        let a = l.begin("t", 0, 5);
        let b = l.begin("t", 1, 100);
        assert_eq!(l.finish(&b), Some(101));
        assert_eq!(l.in_flight(), 1);
        assert_eq!(l.finish(&a), Some(6));
    }

    #[test]
    fn work_of_a_revoked_assignment_is_ignored() {
        let l = OffsetLedger::default();
        let old = l.begin("t", 0, 50);
        l.revoke([("t".to_owned(), 0)]);
        let new = l.begin("t", 0, 40);
        assert_eq!(l.finish(&old), None, "old generation");
        assert_eq!(l.committable(), vec![("t".to_owned(), 0, 40)]);
        assert_eq!(l.finish(&new), Some(41));
    }

    proptest! {
        /// Whatever order records finish in, the commit point never passes a
        /// record still in flight, and ends one past the last record.
        #[test]
        fn never_commits_past_unfinished_work(order in Just((0..40i64).collect::<Vec<_>>()).prop_shuffle()) {
            let l = OffsetLedger::default();
            let tickets: Vec<_> = (0..40).map(|o| l.begin("t", 0, o)).collect();
            let mut done = std::collections::BTreeSet::new();
            for o in order {
                let moved = l.finish(&tickets[o as usize]);
                done.insert(o);
                let point = l.committable()[0].2;
                prop_assert!((0..point).all(|x| done.contains(&x)), "committed {point} with work pending");
                if let Some(p) = moved { prop_assert_eq!(p, point); }
            }
            prop_assert_eq!(l.committable()[0].2, 40);
        }
    }
}
