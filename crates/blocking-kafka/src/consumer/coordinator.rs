//! The group thread: the consumer's traffic with its group coordinator (joins, heartbeats,
//! commits, leaving), on connections no fetch ever uses. It heartbeats on its own clock,
//! so heartbeats never wait behind a fetch, a slow broker or the caller; and the caller
//! never waits behind the coordinator: commits are asked for and answered later
//! ([`Inner::Committed`]), except the last one before a revocation, which the caller
//! waits for.
//!
//! A coordinator that stops answering, or moves, is found again through any broker the
//! client knows (FindCoordinator, the [`BrokerBook`]'s best first), keeping the member id
//! and generation: when the new coordinator answers within the session, the membership
//! goes on without a rebalance, and commits go there.
//!
//! Shaped for what comes next (static membership, cooperative rebalancing): the
//! membership itself is `group::Group`; this thread only drives it.
//!
//! [`BrokerBook`]: crate::cluster::book::BrokerBook
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::Cluster;
use crate::consumer::events::{Event, Inner};
use crate::error::KafkaError;
use crate::group::{Group, Heartbeat};
use crate::types::{Offset, Partition};

/// What the facade asks of the group thread. It stops when the sender is dropped.
#[derive(Debug)]
pub(crate) enum Command {
    /// Join (or rejoin) and fetch the committed offsets of our share.
    Join {
        partitions: Vec<Partition>,
        reply: Sender<Result<Joined, KafkaError>>,
    },
    /// Commit, for join `epoch`. Without `reply` the outcome comes as an event, and
    /// commits that queued up meanwhile go as one.
    Commit {
        epoch: u64,
        offsets: Vec<(Partition, Offset)>,
        reply: Option<Sender<Result<(), KafkaError>>>,
    },
    /// The group's committed offsets.
    Committed {
        partitions: Vec<Partition>,
        reply: Sender<Result<HashMap<Partition, Option<Offset>>, KafkaError>>,
    },
    /// Leave the group (best effort).
    Leave {
        reply: Sender<Result<(), KafkaError>>,
    },
}

/// Our share after a join.
#[derive(Debug)]
pub(crate) struct Joined {
    pub(crate) mine: Vec<Partition>,
    pub(crate) committed: HashMap<Partition, Option<Offset>>,
    /// Which join this was (see [`Inner::Heartbeat`]).
    pub(crate) join: u64,
}

/// When the caller last called into the consumer. The group thread heartbeats on its own,
/// so a caller that hangs would keep its partitions forever; as the Java client's
/// `max.poll.interval.ms` (which is its rebalance timeout too), a member whose caller has
/// not come back within the rebalance timeout leaves the group, and its partitions go to
/// the others.
#[derive(Debug, Clone)]
pub(crate) struct Liveness {
    base: Instant,
    /// Milliseconds from `base` to the caller's last call.
    polled_ms: Arc<AtomicU64>,
    max_interval: Duration,
}

impl Liveness {
    pub(crate) fn new(max_interval: Duration) -> Liveness {
        Liveness {
            base: Instant::now(),
            polled_ms: Arc::new(AtomicU64::new(0)),
            max_interval,
        }
    }

    /// The caller called.
    pub(crate) fn polled(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.polled_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the caller last called, when longer than allowed.
    fn overdue(&self) -> Option<Duration> {
        let polled = self.base + Duration::from_millis(self.polled_ms.load(Ordering::Relaxed));
        let since = polled.elapsed();
        (since > self.max_interval).then_some(since)
    }
}

/// Runs the group thread until `commands` is dropped.
pub(crate) fn run(
    mut cluster: Cluster,
    mut group: Group,
    liveness: Liveness,
    commands: Receiver<Command>,
    events: Sender<Event>,
) {
    let send = |e: Inner| events.send(Event(e)).is_ok();
    let mut queued: VecDeque<Command> = VecDeque::new();
    // Joins so far: heartbeat news carries it, so news from before a join (a rebalance
    // the caller has just rejoined for) is not taken for news of the new membership.
    let mut join = 0u64;
    loop {
        let command = match queued.pop_front() {
            Some(c) => c,
            None if group.is_member() => match commands.recv_deadline(group.next_heartbeat()) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(since) = liveness.overdue() {
                        log::warn!(
                            "The consumer of group {} was not polled for {:.1} s, longer than the rebalance timeout: leaving the group so that the others take its partitions",
                            group.group_id(),
                            since.as_secs_f64()
                        );
                        if let Err(e) = group.leave(&mut cluster) {
                            log::warn!("Could not leave the group: {e}");
                        }
                        let news = Ok(Heartbeat::Rejoin(
                            "the consumer was not polled within the rebalance timeout",
                        ));
                        if !send(Inner::Heartbeat { join, news }) {
                            return;
                        }
                        continue;
                    }
                    let news = match group.heartbeat_if_due(&mut cluster) {
                        Ok(Heartbeat::NotDue) => continue,
                        other => other,
                    };
                    if !send(Inner::Heartbeat { join, news }) {
                        return;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => return,
            },
            None => match commands.recv() {
                Ok(c) => c,
                Err(_) => return,
            },
        };
        let was_member = group.is_member();
        match command {
            Command::Join { partitions, reply } => {
                join += 1;
                let result = group.join(&mut cluster, &partitions).and_then(|mine| {
                    let committed = if mine.is_empty() {
                        HashMap::new()
                    } else {
                        group.committed(&mut cluster, &mine)?
                    };
                    Ok(Joined {
                        mine,
                        committed,
                        join,
                    })
                });
                let _ = reply.send(result);
                continue;
            }
            Command::Commit {
                epoch,
                mut offsets,
                reply: None,
            } => {
                // Commits that queued up while the coordinator was slow go as one: the
                // latest offset of each partition.
                while let Ok(next) = commands.try_recv() {
                    match next {
                        Command::Commit {
                            epoch: e,
                            offsets: more,
                            reply: None,
                        } if e == epoch => merge(&mut offsets, more),
                        other => {
                            queued.push_back(other);
                            break;
                        }
                    }
                }
                let result = group.commit(&mut cluster, &offsets);
                if !send(Inner::Committed {
                    epoch,
                    offsets,
                    result,
                }) {
                    return;
                }
            }
            Command::Commit {
                offsets,
                reply: Some(reply),
                ..
            } => {
                let _ = reply.send(group.commit(&mut cluster, &offsets));
            }
            Command::Committed { partitions, reply } => {
                let _ = reply.send(group.committed(&mut cluster, &partitions));
            }
            Command::Leave { reply } => {
                let _ = reply.send(group.leave(&mut cluster));
                continue;
            }
        }
        // A commit refused for a stale generation or an unknown member ends the
        // membership: the caller must rejoin, and hears it as a heartbeat would say it.
        if was_member
            && !group.is_member()
            && !send(Inner::Heartbeat {
                join,
                news: Ok(Heartbeat::Rejoin(
                    "the coordinator no longer accepts our membership",
                )),
            })
        {
            return;
        }
    }
}

/// Adds `more` to `offsets`, the later offset of a partition replacing the earlier.
fn merge(offsets: &mut Vec<(Partition, Offset)>, more: Vec<(Partition, Offset)>) {
    for (p, o) in more {
        match offsets.iter_mut().find(|(q, _)| *q == p) {
            Some(entry) => entry.1 = o,
            None => offsets.push((p, o)),
        }
    }
    offsets.sort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_commits_merge_to_the_latest_offset_of_each_partition() {
        let mut offsets = vec![(Partition(1), Offset(5)), (Partition(0), Offset(3))];
        merge(
            &mut offsets,
            vec![(Partition(1), Offset(9)), (Partition(2), Offset(1))],
        );
        assert_eq!(
            offsets,
            vec![
                (Partition(0), Offset(3)),
                (Partition(1), Offset(9)),
                (Partition(2), Offset(1))
            ]
        );
    }
}
