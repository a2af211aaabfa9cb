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
//!
//! Commit points are handed to the consumer in batches
//! ([`OffsetLedger::unstored`]), not one store per finished record.
//!
//! A partition whose commit point has not moved for a while with records in
//! flight is *stalled* ([`OffsetLedger::stalled`]): some record's work never
//! ends, and nothing after it will be committed. `/healthz` reports it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A partition's commit point: (topic, partition, offset).
pub type CommitPoint = (Arc<str>, i32, i64);

/// Offsets in flight of one partition.
#[derive(Debug)]
struct PartitionOffsets {
    generation: u64,
    in_flight: BTreeSet<i64>,
    /// One past the highest offset begun.
    next: i64,
    /// The commit point last returned by [`OffsetLedger::unstored`].
    stored: i64,
    /// When the commit point last moved, or work began on an idle partition.
    moved_at: Instant,
}

impl PartitionOffsets {
    fn committable(&self) -> i64 {
        self.in_flight.first().copied().unwrap_or(self.next)
    }
}

/// Proof that a record was begun; hand it back to [`OffsetLedger::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub topic: Arc<str>,
    pub partition: i32,
    pub offset: i64,
    generation: u64,
}

/// Offsets of every assigned partition, by topic and partition.
#[derive(Debug, Default)]
pub struct OffsetLedger {
    topics: Mutex<HashMap<Arc<str>, HashMap<i32, PartitionOffsets>>>,
    generations: AtomicU64,
}

impl OffsetLedger {
    pub fn begin(&self, topic: &str, partition: i32, offset: i64) -> Ticket {
        let mut topics = self.topics.lock().expect("ledger lock is never poisoned");
        // The topic's name is allocated once, not per record.
        let name = match topics.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => {
                let name: Arc<str> = topic.into();
                topics.insert(name.clone(), HashMap::new());
                name
            }
        };
        let entry = topics
            .get_mut(topic)
            .expect("inserted above")
            .entry(partition)
            .or_insert_with(|| PartitionOffsets {
                generation: self.generations.fetch_add(1, Ordering::Relaxed),
                in_flight: BTreeSet::new(),
                next: offset,
                stored: offset,
                moved_at: Instant::now(),
            });
        if entry.in_flight.is_empty() {
            entry.moved_at = Instant::now();
        }
        entry.in_flight.insert(offset);
        entry.next = entry.next.max(offset + 1);
        Ticket {
            topic: name,
            partition,
            offset,
            generation: entry.generation,
        }
    }

    /// Marks `ticket`'s record done. Returns the partition's new commit point
    /// when it moved, else `None` (an older record is still in flight, or the
    /// partition was revoked meanwhile).
    pub fn finish(&self, ticket: &Ticket) -> Option<i64> {
        let mut topics = self.topics.lock().expect("ledger lock is never poisoned");
        let entry = topics.get_mut(&*ticket.topic)?.get_mut(&ticket.partition)?;
        if entry.generation != ticket.generation {
            return None;
        }
        let before = entry.committable();
        entry.in_flight.remove(&ticket.offset);
        let after = entry.committable();
        if after != before {
            entry.moved_at = Instant::now();
        }
        (after != before).then_some(after)
    }

    /// Whether `ticket` is of the partition's current assignment (its
    /// partition was not revoked since it was begun).
    pub fn is_current(&self, ticket: &Ticket) -> bool {
        let topics = self.topics.lock().expect("ledger lock is never poisoned");
        topics
            .get(&*ticket.topic)
            .and_then(|t| t.get(&ticket.partition))
            .is_some_and(|o| o.generation == ticket.generation)
    }

    /// `ticket`'s record waits on purpose until `until` (a retry not yet
    /// due): its partition is not stalled before then.
    pub fn waiting_until(&self, ticket: &Ticket, until: Instant) {
        let mut topics = self.topics.lock().expect("ledger lock is never poisoned");
        if let Some(o) = topics
            .get_mut(&*ticket.topic)
            .and_then(|t| t.get_mut(&ticket.partition))
            .filter(|o| o.generation == ticket.generation)
        {
            o.moved_at = o.moved_at.max(until);
        }
    }

    /// The commit points that moved since the last call, to store with the
    /// consumer in one batch.
    pub fn unstored(&self) -> Vec<CommitPoint> {
        let mut topics = self.topics.lock().expect("ledger lock is never poisoned");
        let mut moved = Vec::new();
        for (topic, partitions) in topics.iter_mut() {
            for (partition, o) in partitions.iter_mut() {
                let point = o.committable();
                if point != o.stored {
                    o.stored = point;
                    moved.push((topic.clone(), *partition, point));
                }
            }
        }
        moved
    }

    /// Forgets partitions taken away by a rebalance; returns their commit
    /// points not yet stored, for the consumer to store before it lets go.
    pub fn revoke<'a>(
        &self,
        partitions: impl IntoIterator<Item = (&'a str, i32)>,
    ) -> Vec<CommitPoint> {
        let mut topics = self.topics.lock().expect("ledger lock is never poisoned");
        let mut unstored = Vec::new();
        for (topic, partition) in partitions {
            let Some(name) = topics.get_key_value(topic).map(|(name, _)| name.clone()) else {
                continue;
            };
            let removed = topics.get_mut(topic).and_then(|t| t.remove(&partition));
            if let Some(o) = removed.filter(|o| o.committable() != o.stored) {
                unstored.push((name, partition, o.committable()));
            }
        }
        unstored
    }

    /// The commit point of every partition, for the final commit at shutdown.
    pub fn committable(&self) -> Vec<CommitPoint> {
        let topics = self.topics.lock().expect("ledger lock is never poisoned");
        topics
            .iter()
            .flat_map(|(t, partitions)| {
                partitions
                    .iter()
                    .map(|(p, o)| (t.clone(), *p, o.committable()))
            })
            .collect()
    }

    /// Partitions with records in flight whose commit point has not moved
    /// for `after` or longer: (topic, partition, stuck offset, for how long).
    pub fn stalled(&self, after: Duration) -> Vec<(Arc<str>, i32, i64, Duration)> {
        let topics = self.topics.lock().expect("ledger lock is never poisoned");
        let now = Instant::now();
        let mut stalled = Vec::new();
        for (topic, partitions) in topics.iter() {
            for (partition, o) in partitions {
                let still = now.saturating_duration_since(o.moved_at);
                // `moved_at` ahead of now: waiting on purpose until then.
                if !o.in_flight.is_empty() && o.moved_at <= now && still >= after {
                    stalled.push((topic.clone(), *partition, o.committable(), still));
                }
            }
        }
        stalled
    }

    /// Records begun and not yet finished, across partitions.
    pub fn in_flight(&self) -> usize {
        let topics = self.topics.lock().expect("ledger lock is never poisoned");
        topics
            .values()
            .flat_map(HashMap::values)
            .map(|o| o.in_flight.len())
            .sum()
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
        assert_eq!(l.committable(), vec![("t".into(), 0, 13)]);
    }

    #[test]
    fn commit_points_are_stored_once_per_move() {
        let l = OffsetLedger::default();
        let a = l.begin("t", 0, 10);
        let b = l.begin("t", 1, 20);
        assert_eq!(l.unstored(), vec![], "nothing finished");
        l.finish(&a);
        assert_eq!(l.unstored(), vec![("t".into(), 0, 11)]);
        assert_eq!(l.unstored(), vec![], "already handed out");
        let c = l.begin("t", 0, 11);
        l.finish(&c);
        l.finish(&b);
        let mut moved = l.unstored();
        moved.sort();
        assert_eq!(moved, vec![("t".into(), 0, 12), ("t".into(), 1, 21)]);
    }

    #[test]
    fn a_revoked_partition_hands_back_what_was_not_stored() {
        let l = OffsetLedger::default();
        let a = l.begin("t", 0, 5);
        let b = l.begin("t", 1, 7);
        l.finish(&a);
        l.finish(&b);
        assert_eq!(l.revoke([("t", 0), ("other", 3)]), vec![("t".into(), 0, 6)]);
        assert_eq!(
            l.unstored(),
            vec![("t".into(), 1, 8)],
            "partition 0 forgotten"
        );
        assert_eq!(l.revoke([("t", 1)]), vec![], "stored already");
        assert_eq!(l.in_flight(), 0);
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
        l.revoke([("t", 0)]);
        let new = l.begin("t", 0, 40);
        assert_eq!(l.finish(&old), None, "old generation");
        assert_eq!(l.committable(), vec![("t".into(), 0, 40)]);
        assert_eq!(l.finish(&new), Some(41));
    }

    #[test]
    fn a_partition_whose_oldest_record_never_finishes_is_stalled() {
        let l = OffsetLedger::default();
        let stuck = l.begin("t", 0, 5);
        let later = l.begin("t", 0, 6);
        let idle = l.begin("t", 1, 9);
        l.finish(&idle);
        l.finish(&later);
        std::thread::sleep(Duration::from_millis(30));
        let stalled = l.stalled(Duration::from_millis(20));
        assert_eq!(stalled.len(), 1, "{stalled:?}");
        assert_eq!((&*stalled[0].0, stalled[0].1, stalled[0].2), ("t", 0, 5));
        assert!(
            l.stalled(Duration::from_secs(60)).is_empty(),
            "not yet that long"
        );
        l.finish(&stuck);
        assert!(l.stalled(Duration::ZERO).is_empty(), "nothing in flight");
        // New work on an idle partition starts its own clock.
        let _fresh = l.begin("t", 1, 10);
        assert!(l.stalled(Duration::from_millis(20)).is_empty());
        // A record waiting on purpose (a retry not yet due) stalls nothing
        // until it is due.
        let waiting = l.begin("t", 2, 0);
        l.waiting_until(&waiting, Instant::now() + Duration::from_secs(3600));
        assert!(l.stalled(Duration::ZERO).iter().all(|s| s.1 != 2));
        assert!(l.is_current(&waiting));
        l.revoke([("t", 2)]);
        assert!(!l.is_current(&waiting), "revoked");
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
