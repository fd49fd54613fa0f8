//! Group commit: a leader/follower queue in front of the one write connection.
//!
//! Every caller blocks in [`GroupCommit::submit`] until its own operation has run. The
//! caller at the front of the queue is the leader: it takes every operation queued behind it
//! at that moment (its own first), runs them as one batch, hands each follower its own
//! outcome, and wakes the next caller in line, which leads the next batch. So batches form
//! only from operations that were already waiting while the previous batch ran: a lone
//! operation is never delayed (no timer, no waiting for more), and under load one transaction
//! carries as many operations as there are callers waiting for the writer.
//!
//! The same shape as LevelDB's writer queue and the group commit of database logs. Pure
//! logic: what a batch does is the `run` function the callers pass (the SQLite backend runs
//! it as one SQLite transaction), so it is tested here with plain functions.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, Thread};

/// The queue. `Op` is what a caller asks for, `Out` what it gets back.
pub struct GroupCommit<Op, Out> {
    /// Callers in arrival order; the front one is the leader (running a batch or about to),
    /// the ones behind it wait parked. An entry leaves the queue only when its batch is
    /// done, so a caller arriving while a batch runs always finds the queue non-empty and
    /// waits.
    queue: Mutex<VecDeque<Arc<Waiter<Op, Out>>>>,
}

impl<Op, Out> GroupCommit<Op, Out> {
    pub fn new() -> GroupCommit<Op, Out> {
        GroupCommit {
            queue: Mutex::new(VecDeque::new()),
        }
    }

    /// Runs `op`, batched with the operations of any other callers waiting at the time, and
    /// returns its own outcome once its batch has run.
    ///
    /// `run` gets a batch in arrival order and must return one outcome per operation, in the
    /// same order. It is called by whichever caller leads, with the batch that caller takes,
    /// so every caller of one queue must pass the same `run` (the store passes one function).
    /// If `run` panics, the panic goes on in the leader's thread, and the followers of that
    /// batch queue their operations again rather than wait forever.
    // Only the tests submit single operations; the store passes vectors (`submit_all`).
    #[cfg(test)]
    pub fn submit(&self, op: Op, run: impl Fn(&[&Op]) -> Vec<Out>) -> Out {
        let mut outs = self.submit_all(vec![op], run);
        // One operation in, one outcome out (`lead` hands each caller as many as it gave).
        outs.pop().expect("group commit: one outcome per operation")
    }

    /// [`GroupCommit::submit`] for several operations of one caller: they run in the same
    /// batch, in this order, and each gets its own outcome.
    pub fn submit_all(&self, ops: Vec<Op>, run: impl Fn(&[&Op]) -> Vec<Out>) -> Vec<Out> {
        let me = Arc::new(Waiter {
            ops,
            slot: Mutex::new(Slot::Waiting),
            thread: thread::current(),
        });
        loop {
            let mut queue = self.lock();
            queue.push_back(me.clone());
            // Wait until our batch has run, or we are at the front and lead.
            loop {
                match me.take() {
                    Slot::Done(out) => return out,
                    Slot::Retry => break,
                    Slot::Waiting => {}
                }
                if queue.front().is_some_and(|first| Arc::ptr_eq(first, &me)) {
                    let batch: Vec<Arc<Waiter<Op, Out>>> = queue.iter().cloned().collect();
                    drop(queue);
                    return self.lead(&batch, &run);
                }
                drop(queue);
                // A stale wake-up (an unpark meant for an earlier call of this thread) only
                // costs one more turn of the loop.
                thread::park();
                queue = self.lock();
            }
            // Our batch's leader panicked before running us: queue again.
        }
    }

    /// Runs `batch` (whose first entry is the caller), hands out the outcomes, lets the next
    /// leader go, and returns the caller's own outcome.
    fn lead(&self, batch: &[Arc<Waiter<Op, Out>>], run: &impl Fn(&[&Op]) -> Vec<Out>) -> Vec<Out> {
        let mut leading = Leading {
            queue: self,
            batch,
            done: false,
        };
        let ops: Vec<&Op> = batch.iter().flat_map(|w| w.ops.iter()).collect();
        let mut outs = run(&ops).into_iter();
        // The runner's contract is one outcome per operation; a short answer would leave a
        // caller without one, so it counts as a panic of the leader (followers retry).
        let mut take = |n: usize| -> Vec<Out> {
            let taken: Vec<Out> = outs.by_ref().take(n).collect();
            assert_eq!(
                taken.len(),
                n,
                "group commit: `run` returned fewer outcomes than operations"
            );
            taken
        };
        let mine = take(batch[0].ops.len());
        for waiter in &batch[1..] {
            waiter.set(Slot::Done(take(waiter.ops.len())));
        }
        leading.done = true;
        drop(leading);
        mine
    }

    /// Callers in the queue now: the leader and its followers.
    pub fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Waiter<Op, Out>>>> {
        // Nothing runs user code while holding this lock, so a poisoned lock still guards a
        // consistent queue.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<Op, Out> std::fmt::Debug for GroupCommit<Op, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("waiting", &self.waiting())
            .finish()
    }
}

impl<Op, Out> Default for GroupCommit<Op, Out> {
    fn default() -> Self {
        GroupCommit::new()
    }
}

/// One caller's entry: its operations, where their outcomes go, and whom to wake.
struct Waiter<Op, Out> {
    ops: Vec<Op>,
    slot: Mutex<Slot<Vec<Out>>>,
    thread: Thread,
}

enum Slot<Out> {
    Waiting,
    Done(Out),
    /// The batch's leader panicked: the operation did not run (its transaction was never
    /// committed), and the caller queues it again.
    Retry,
}

impl<Op, Out> Waiter<Op, Out> {
    fn take(&self) -> Slot<Vec<Out>> {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::replace(&mut *slot, Slot::Waiting)
    }

    fn set(&self, value: Slot<Vec<Out>>) {
        *self.slot.lock().unwrap_or_else(PoisonError::into_inner) = value;
    }

    /// Marks the operation to be queued again, unless it already has its outcome (a leader
    /// that panicked half-way through handing outcomes out must not run those twice).
    fn retry_unless_done(&self) {
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if matches!(*slot, Slot::Waiting) {
            *slot = Slot::Retry;
        }
    }
}

/// The end of a leader's turn, also when `run` panics: the batch leaves the queue, its
/// followers and the next leader are woken.
struct Leading<'a, Op, Out> {
    queue: &'a GroupCommit<Op, Out>,
    batch: &'a [Arc<Waiter<Op, Out>>],
    /// Set once every follower has its outcome; unset during a panic's unwinding.
    done: bool,
}

impl<Op, Out> Drop for Leading<'_, Op, Out> {
    fn drop(&mut self) {
        if !self.done {
            for waiter in &self.batch[1..] {
                waiter.retry_unless_done();
            }
        }
        let next = {
            let mut queue = self.queue.lock();
            // The batch is the front of the queue: only a leader removes entries.
            queue.drain(..self.batch.len());
            queue.front().map(|w| w.thread.clone())
        };
        for waiter in &self.batch[1..] {
            waiter.thread.unpark();
        }
        if let Some(next) = next {
            next.unpark();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// Doubles each number; records the size of every batch.
    fn doubling(sizes: &Mutex<Vec<usize>>) -> impl Fn(&[&u64]) -> Vec<u64> + '_ {
        move |ops| {
            sizes.lock().unwrap().push(ops.len());
            ops.iter().map(|n| **n * 2).collect()
        }
    }

    /// Holds the batch led by operation 0 at the writer until the test opens it, so that
    /// the callers the test starts meanwhile queue behind it.
    struct Gate {
        lock: Mutex<()>,
        entered: Barrier,
    }

    impl Gate {
        fn new() -> Gate {
            Gate {
                lock: Mutex::new(()),
                entered: Barrier::new(2),
            }
        }

        /// Closes the gate; dropping the guard opens it.
        fn close(&self) -> MutexGuard<'_, ()> {
            self.lock.lock().unwrap()
        }

        /// Called by a runner with its batch: the batch led by 0 waits here for the gate.
        fn pass(&self, ops: &[&u64]) {
            if *ops[0] == 0 {
                self.entered.wait();
                drop(self.lock.lock().unwrap());
            }
        }

        /// Returns once the batch led by 0 is at the gate.
        fn wait_for_leader(&self) {
            self.entered.wait();
        }
    }

    /// Waits until `n` callers are in the queue (the leader included), failing after 10 s.
    fn wait_for_queue<Op, Out>(group: &GroupCommit<Op, Out>, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while group.waiting() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{} of {n} callers queued",
                group.waiting()
            );
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_lone_operation_runs_at_once_in_a_batch_of_one() {
        let group = GroupCommit::new();
        let sizes = Mutex::new(Vec::new());
        assert_eq!(group.submit(21, doubling(&sizes)), 42);
        assert_eq!(group.submit(5, doubling(&sizes)), 10);
        assert_eq!(*sizes.lock().unwrap(), [1, 1]);
        assert!(group.lock().is_empty());
    }

    #[test]
    fn operations_waiting_behind_a_leader_run_as_one_batch_each_with_its_own_outcome() {
        let group = GroupCommit::new();
        let sizes = Mutex::new(Vec::new());
        // The first leader's batch is held up until every other caller is queued.
        let gate = Gate::new();
        let held = gate.close();
        let runner = |ops: &[&u64]| {
            gate.pass(ops);
            doubling(&sizes)(ops)
        };
        thread::scope(|s| {
            let first = s.spawn(|| group.submit(0, runner));
            gate.wait_for_leader();
            let followers: Vec<_> = (1..=9u64)
                .map(|n| {
                    let runner = &runner;
                    let group = &group;
                    s.spawn(move || (n, group.submit(n, runner)))
                })
                .collect();
            wait_for_queue(&group, 10);
            drop(held);
            assert_eq!(first.join().unwrap(), 0);
            for f in followers {
                let (n, out) = f.join().unwrap();
                assert_eq!(out, n * 2, "operation {n} got someone else's outcome");
            }
        });
        assert_eq!(*sizes.lock().unwrap(), [1, 9]);
        assert!(group.lock().is_empty());
    }

    #[test]
    fn several_operations_of_one_caller_run_in_one_batch_in_order_with_their_own_outcomes() {
        let group = GroupCommit::new();
        let sizes = Mutex::new(Vec::new());
        assert_eq!(group.submit_all(vec![1, 2, 3], doubling(&sizes)), [2, 4, 6]);
        let gate = Gate::new();
        let held = gate.close();
        let runner = |ops: &[&u64]| {
            gate.pass(ops);
            doubling(&sizes)(ops)
        };
        thread::scope(|s| {
            let first = s.spawn(|| group.submit(0, runner));
            gate.wait_for_leader();
            let pair = s.spawn(|| group.submit_all(vec![10, 11], runner));
            wait_for_queue(&group, 2);
            let one = s.spawn(|| group.submit(20, runner));
            wait_for_queue(&group, 3);
            drop(held);
            assert_eq!(first.join().unwrap(), 0);
            assert_eq!(pair.join().unwrap(), [20, 22]);
            assert_eq!(one.join().unwrap(), 40);
        });
        assert_eq!(*sizes.lock().unwrap(), [3, 1, 3]);
    }

    #[test]
    fn under_load_every_operation_runs_exactly_once_and_gets_its_own_outcome() {
        let group = GroupCommit::new();
        let runs = Mutex::new(Vec::new());
        let batches = AtomicUsize::new(0);
        let runner = |ops: &[&(usize, usize)]| {
            batches.fetch_add(1, Ordering::Relaxed);
            runs.lock().unwrap().extend(ops.iter().map(|op| **op));
            ops.iter()
                .map(|(t, i)| t * 1_000_000 + i)
                .collect::<Vec<_>>()
        };
        let (threads, each) = (16, 2_000);
        thread::scope(|s| {
            for t in 0..threads {
                let (group, runner) = (&group, &runner);
                s.spawn(move || {
                    for i in 0..each {
                        assert_eq!(group.submit((t, i), runner), t * 1_000_000 + i);
                    }
                });
            }
        });
        let mut runs = runs.into_inner().unwrap();
        assert_eq!(runs.len(), threads * each);
        runs.sort_unstable();
        runs.dedup();
        assert_eq!(runs.len(), threads * each, "an operation ran twice");
        // How many batches formed depends on scheduling, so it is shown, not asserted.
        eprintln!(
            "{} operations in {} batches",
            threads * each,
            batches.into_inner()
        );
    }

    #[test]
    fn a_follower_that_got_its_outcome_before_the_leader_panicked_is_not_run_again() {
        let group = GroupCommit::new();
        let gate = Gate::new();
        let held = gate.close();
        let ran = Mutex::new(Vec::new());
        // The batch [1, 2, 3] gets only two outcomes (a broken runner): 1 (the leader) and 2
        // have theirs, 3 has none and must queue again; 2 must not run a second time.
        let runner = |ops: &[&u64]| {
            gate.pass(ops);
            ran.lock().unwrap().extend(ops.iter().map(|n| **n));
            let outs: Vec<u64> = ops.iter().map(|n| **n + 100).collect();
            if ops.len() == 3 {
                outs[..2].to_vec()
            } else {
                outs
            }
        };
        thread::scope(|s| {
            let first = s.spawn(|| group.submit(0, runner));
            gate.wait_for_leader();
            let handles: Vec<_> = (1..=3u64)
                .map(|n| {
                    let (group, runner) = (&group, &runner);
                    let handle = s.spawn(move || group.submit(n, runner));
                    wait_for_queue(group, 1 + n as usize);
                    handle
                })
                .collect();
            drop(held);
            assert_eq!(first.join().unwrap(), 100);
            let outs: Vec<_> = handles.into_iter().map(|h| h.join()).collect();
            assert!(outs[0].is_err(), "the leader of the short batch panics");
            assert_eq!(*outs[1].as_ref().unwrap(), 102);
            assert_eq!(*outs[2].as_ref().unwrap(), 103);
        });
        let ran = ran.into_inner().unwrap();
        assert_eq!(ran.iter().filter(|n| **n == 2).count(), 1, "{ran:?}");
        assert_eq!(ran.iter().filter(|n| **n == 3).count(), 2, "{ran:?}");
        assert!(group.lock().is_empty());
    }

    #[test]
    fn followers_of_a_leader_that_panics_run_their_operations_again() {
        let group = GroupCommit::new();
        let gate = Gate::new();
        let held = gate.close();
        let ran = Mutex::new(Vec::new());
        let runner = |ops: &[&u64]| {
            gate.pass(ops);
            // The batch led by operation 1 (with the others behind it) panics once.
            if *ops[0] == 1 && ops.len() > 1 {
                panic!("leader of {ops:?} panics");
            }
            ran.lock().unwrap().extend(ops.iter().map(|n| **n));
            ops.iter().map(|n| **n + 100).collect()
        };
        thread::scope(|s| {
            let first = s.spawn(|| group.submit(0, runner));
            gate.wait_for_leader();
            let one = s.spawn(|| group.submit(1, runner));
            wait_for_queue(&group, 2);
            let rest: Vec<_> = (2..=4u64)
                .map(|n| {
                    let (group, runner) = (&group, &runner);
                    s.spawn(move || (n, group.submit(n, runner)))
                })
                .collect();
            wait_for_queue(&group, 5);
            drop(held);
            assert_eq!(first.join().unwrap(), 100);
            assert!(one.join().is_err(), "the leader's own panic goes on");
            for r in rest {
                let (n, out) = r.join().unwrap();
                assert_eq!(out, n + 100);
            }
        });
        let mut ran = ran.into_inner().unwrap();
        ran.sort_unstable();
        assert_eq!(ran, [0, 2, 3, 4], "each follower ran exactly once");
        assert!(group.lock().is_empty());
    }
}
