//! The scheduling queue: which pending pod to try next, and when to try again.
//!
//! Three places a pending pod can wait, as in kube-scheduler:
//! - **active**: ready to try, highest `spec.priority` first, then oldest first;
//! - **backoff**: failed for a transient cause (an API error); retried after an
//!   exponential delay (1 s doubling to 10 s);
//! - **unschedulable**: no node fits. Retried when the cluster changes in a way that
//!   could help — a node added or changed, a RuntimeClass created, a placed pod gone
//!   (only for pods that some node refused for lack of room) — never by blind polling.
//!   As a safety net, a pod parked for 5 minutes is retried anyway.

use rustc_hash::FxHashMap;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// First retry delay after a transient failure.
pub const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A parked pod is retried after this long even if nothing relevant changed.
pub const MAX_PARKED: Duration = Duration::from_secs(300);

/// What could make a parked pod fit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitingFor {
    /// Node changes only (labels, taints, readiness, capacity, new nodes).
    Nodes,
    /// Node changes, or a placed pod going away (room, ports).
    NodesOrRoom,
    /// A RuntimeClass (or node changes).
    RuntimeClass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Active,
    Backoff,
    Parked(WaitingFor),
    InFlight,
}

#[derive(Debug)]
struct Entry {
    priority: i32,
    seq: u64,
    state: State,
    attempts: u32,
    /// Changed while in flight: try again if the binding fails.
    dirty: bool,
}

#[derive(PartialEq, Eq)]
struct Ready {
    priority: i32,
    seq: u64,
    uid: String,
}

impl Ord for Ready {
    fn cmp(&self, o: &Self) -> Ordering {
        self.priority
            .cmp(&o.priority)
            .then_with(|| o.seq.cmp(&self.seq))
    }
}

impl PartialOrd for Ready {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

/// The queue of pending pods, by uid.
#[derive(Default)]
pub struct Queue {
    entries: FxHashMap<String, Entry>,
    active: BinaryHeap<Ready>,
    /// Backoff expiries and parking deadlines; stale ones (the entry moved on since,
    /// so its `seq` differs) are skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, u64, String)>>,
    seq: u64,
}

impl Queue {
    /// An empty queue.
    pub fn new() -> Queue {
        Queue::default()
    }

    /// Pods known to the queue (any state).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no pod is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether a pod is known.
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn activate(&mut self, uid: &str) {
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(uid) {
            e.state = State::Active;
            e.seq = seq;
            self.active.push(Ready {
                priority: e.priority,
                seq,
                uid: uid.to_string(),
            });
        }
    }

    /// A pending pod appeared or changed. New pods become active; a parked pod that
    /// changed is tried again (its change may be what lets it fit).
    pub fn upsert(&mut self, uid: &str, priority: i32) {
        match self.entries.get_mut(uid) {
            None => {
                self.entries.insert(
                    uid.to_string(),
                    Entry {
                        priority,
                        seq: 0,
                        state: State::Active,
                        attempts: 0,
                        dirty: false,
                    },
                );
                self.activate(uid);
            }
            Some(e) => {
                e.priority = priority;
                match e.state {
                    State::Parked(_) => self.activate(uid),
                    State::InFlight => e.dirty = true,
                    State::Active | State::Backoff => {}
                }
            }
        }
    }

    /// A pod is no longer pending (deleted, or bound by someone).
    pub fn remove(&mut self, uid: &str) {
        // Heap entries of removed pods are skipped when popped.
        self.entries.remove(uid);
    }

    /// The next pod to try, marked in flight.
    pub fn pop(&mut self) -> Option<String> {
        while let Some(r) = self.active.pop() {
            if let Some(e) = self.entries.get_mut(&r.uid)
                && e.state == State::Active
                && e.seq == r.seq
            {
                e.state = State::InFlight;
                e.attempts += 1;
                e.dirty = false;
                return Some(r.uid);
            }
        }
        None
    }

    /// The pod was placed and bound: it leaves the queue.
    pub fn done(&mut self, uid: &str) {
        self.entries.remove(uid);
    }

    /// No node fits: park the pod until something it waits for changes.
    pub fn park(&mut self, uid: &str, waiting: WaitingFor, now: Instant) {
        let seq = self.next_seq();
        let changed = match self.entries.get_mut(uid) {
            Some(e) => {
                e.state = State::Parked(waiting);
                e.seq = seq;
                self.timers
                    .push(Reverse((now + MAX_PARKED, seq, uid.to_string())));
                e.dirty
            }
            None => false,
        };
        if changed {
            self.activate(uid);
        }
    }

    /// A transient failure: retry after a growing delay.
    pub fn back_off(&mut self, uid: &str, now: Instant) {
        let seq = self.next_seq();
        if let Some(e) = self.entries.get_mut(uid) {
            let shift = e.attempts.saturating_sub(1).min(4);
            let delay = (INITIAL_BACKOFF * (1 << shift)).min(MAX_BACKOFF);
            e.state = State::Backoff;
            e.seq = seq;
            self.timers
                .push(Reverse((now + delay, seq, uid.to_string())));
        }
    }

    /// When the next backed-off or long-parked pod is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Move backed-off pods whose delay is over, and pods parked too long, to active.
    pub fn tick(&mut self, now: Instant) {
        while let Some(Reverse((t, _, _))) = self.timers.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((_, seq, uid))) = self.timers.pop() else {
                break;
            };
            let due = self.entries.get(&uid).is_some_and(|e| {
                e.seq == seq && matches!(e.state, State::Backoff | State::Parked(_))
            });
            if due {
                self.activate(&uid);
            }
        }
    }

    fn wake(&mut self, wanted: impl Fn(WaitingFor) -> bool) -> usize {
        let woken: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, State::Parked(w) if wanted(w)))
            .map(|(u, _)| u.clone())
            .collect();
        for uid in &woken {
            self.activate(uid);
        }
        woken.len()
    }

    /// Nodes changed in a way that matters for placement: every parked pod may fit now.
    pub fn nodes_changed(&mut self) -> usize {
        self.wake(|_| true)
    }

    /// A placed pod went away: pods waiting for room may fit now.
    pub fn room_freed(&mut self) -> usize {
        self.wake(|w| w == WaitingFor::NodesOrRoom)
    }

    /// A RuntimeClass appeared or changed.
    pub fn classes_changed(&mut self) -> usize {
        self.wake(|_| true)
    }

    /// Number of pods ready to try.
    pub fn active_len(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.state == State::Active)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn higher_priority_first_then_oldest() {
        let mut q = Queue::new();
        q.upsert("low-1", 0);
        q.upsert("high", 100);
        q.upsert("low-2", 0);
        assert_eq!(q.pop().as_deref(), Some("high"));
        assert_eq!(q.pop().as_deref(), Some("low-1"));
        assert_eq!(q.pop().as_deref(), Some("low-2"));
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn parked_pods_wake_only_for_events_that_can_help() {
        let now = Instant::now();
        let mut q = Queue::new();
        for (uid, w) in [
            ("room", WaitingFor::NodesOrRoom),
            ("label", WaitingFor::Nodes),
            ("class", WaitingFor::RuntimeClass),
        ] {
            q.upsert(uid, 0);
            assert_eq!(q.pop().as_deref(), Some(uid));
            q.park(uid, w, now);
        }
        assert_eq!(q.pop(), None, "parked pods are not retried blindly");
        assert_eq!(q.room_freed(), 1);
        assert_eq!(q.pop().as_deref(), Some("room"));
        assert_eq!(q.classes_changed(), 2);
        assert_eq!(q.active_len(), 2);
        q.pop();
        q.pop();
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn backoff_grows_and_expires() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.upsert("p", 0);
        q.pop();
        q.back_off("p", now);
        assert_eq!(q.next_due(), Some(now + INITIAL_BACKOFF));
        q.tick(now);
        assert_eq!(q.pop(), None);
        q.tick(now + INITIAL_BACKOFF);
        assert_eq!(q.pop().as_deref(), Some("p"));
        q.back_off("p", now);
        q.tick(now + INITIAL_BACKOFF);
        assert_eq!(q.pop(), None, "the second delay is longer");
        assert_eq!(q.next_due(), Some(now + INITIAL_BACKOFF * 2));
    }

    #[test]
    fn a_pod_changed_while_in_flight_is_retried_when_parked() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.upsert("p", 0);
        q.pop();
        q.upsert("p", 0);
        q.park("p", WaitingFor::Nodes, now);
        assert_eq!(q.pop().as_deref(), Some("p"));
        q.remove("p");
        assert!(q.is_empty());
    }

    #[test]
    fn parked_too_long_is_retried() {
        let now = Instant::now();
        let mut q = Queue::new();
        q.upsert("p", 0);
        q.pop();
        q.park("p", WaitingFor::Nodes, now);
        assert_eq!(q.next_due(), Some(now + MAX_PARKED));
        q.tick(now + MAX_PARKED);
        assert_eq!(q.pop().as_deref(), Some("p"));
    }
}
