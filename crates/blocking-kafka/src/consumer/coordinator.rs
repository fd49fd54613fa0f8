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
//! The membership itself is `group::Group`; this thread drives it through rebalances:
//! with an eager assignor (range) it tells the facade to revoke everything and waits for
//! the caller's `Join`; with a cooperative one (KIP-429) it rejoins at once by itself,
//! keeping every partition, and tells the facade what the new plan adds and takes away
//! ([`Inner::Assigned`]); after the caller has revoked what was taken away
//! (`Command::Revoked`) it rejoins for the next round, in which those partitions reach
//! their new owners. The caller's other partitions are processed throughout.
//!
//! [`BrokerBook`]: crate::cluster::book::BrokerBook
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::cluster::{Cluster, TopicState};
use crate::consumer::events::{Event, Inner};
use crate::error::KafkaError;
use crate::group::{Group, Heartbeat};
use crate::types::{Assignor, Offset, Partition};

/// What the facade asks of the group thread. It stops when the sender is dropped.
#[derive(Debug)]
pub(crate) enum Command {
    /// Join (a first join, or after revoking everything) and fetch the committed offsets of
    /// our share.
    Join {
        partitions: Vec<Partition>,
        reply: Sender<Result<Joined, KafkaError>>,
    },
    /// The caller has finished revoking what a cooperative rebalance took away
    /// ([`Inner::Assigned`]): rejoin for the next round.
    Revoked { partitions: Vec<Partition> },
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
    /// The assignor of the generation joined.
    pub(crate) protocol: Assignor,
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

/// The cooperative side of our membership (KIP-429), between joins.
#[derive(Debug, Default)]
struct Rounds {
    /// What the last plan gave us: what we say we own when we rejoin.
    assigned: Vec<Partition>,
    /// Taken away by the last plan and not revoked by the caller yet: no rejoin until
    /// they are (the next round must not find them still ours).
    revoking: Vec<Partition>,
    /// Whether a rejoin is due once the revocation is done: after a cooperative round that
    /// took something away, or a rebalance announced meanwhile.
    rejoin_after_revoke: bool,
    /// The topic's partitions as last seen, for a leader's plan when metadata fails.
    partitions: Vec<Partition>,
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
    let mut rounds = Rounds::default();
    loop {
        let command = match queued.pop_front() {
            Some(c) => c,
            None if group.is_member() => match commands.recv_deadline(group.next_heartbeat()) {
                Ok(c) => c,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(since) = liveness.overdue() {
                        stall(&mut cluster, &mut group, since);
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
                        // Cooperative (KIP-429): a rebalance is joined at once, keeping every
                        // partition; only a partition the new plan takes away is revoked.
                        Ok(Heartbeat::Rejoin(_))
                            if group.is_member()
                                && group.protocol().is_some_and(Assignor::is_cooperative) =>
                        {
                            if rounds.revoking.is_empty() {
                                join += 1;
                                if !rejoin(&mut cluster, &mut group, &mut rounds, join, &send) {
                                    return;
                                }
                            } else {
                                rounds.rejoin_after_revoke = true;
                            }
                            continue;
                        }
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
                // Whatever the cooperative rounds were at, the caller revoked everything.
                rounds = Rounds {
                    partitions: partitions.clone(),
                    ..Rounds::default()
                };
                let result = group
                    .join(&mut cluster, &partitions, &[])
                    .and_then(|joined| {
                        let committed = if joined.assigned.is_empty() {
                            HashMap::new()
                        } else {
                            group.committed(&mut cluster, &joined.assigned)?
                        };
                        rounds.assigned = joined.assigned.clone();
                        Ok(Joined {
                            mine: joined.assigned,
                            committed,
                            protocol: joined.protocol,
                            join,
                        })
                    });
                let _ = reply.send(result);
                continue;
            }
            Command::Revoked { partitions } => {
                rounds.revoking.retain(|p| !partitions.contains(p));
                if rounds.revoking.is_empty()
                    && std::mem::take(&mut rounds.rejoin_after_revoke)
                    && group.is_member()
                {
                    join += 1;
                    if !rejoin(&mut cluster, &mut group, &mut rounds, join, &send) {
                        return;
                    }
                }
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
                rounds = Rounds::default();
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

/// A cooperative rebalance round, run by the group thread while the caller goes on with
/// every partition: rejoin saying what we own, and tell the facade what the new plan adds
/// and takes away ([`Inner::Assigned`]). A round that takes something away is followed by
/// another once the caller has revoked it (`Command::Revoked`). If the round fails, the
/// membership is given up as lost (the caller revokes everything and joins again). False
/// when the facade is gone.
fn rejoin(
    cluster: &mut Cluster,
    group: &mut Group,
    rounds: &mut Rounds,
    join: u64,
    send: &impl Fn(Inner) -> bool,
) -> bool {
    // The leader plans over the topic as it is now.
    let topic = group.topic().to_owned();
    if let Ok(TopicState::Partitions(p)) = cluster.refresh(&topic) {
        rounds.partitions = p;
    }
    let owned = rounds.assigned.clone();
    let joined = group
        .join(cluster, &rounds.partitions, &owned)
        .and_then(|joined| {
            let added: Vec<Partition> = joined
                .assigned
                .iter()
                .filter(|p| !owned.contains(p))
                .copied()
                .collect();
            let committed = if added.is_empty() {
                HashMap::new()
            } else {
                group.committed(cluster, &added)?
            };
            Ok((joined, added, committed))
        });
    match joined {
        Ok((joined, added, committed)) => {
            let revoked: Vec<Partition> = owned
                .iter()
                .filter(|p| !joined.assigned.contains(p))
                .copied()
                .collect();
            log::debug!(
                "group {}: generation {} ({}): adds {added:?}, takes away {revoked:?}",
                group.group_id(),
                joined.generation.0,
                joined.protocol
            );
            // Under an eager assignor (the group moved to one: a member that offers only
            // range joined) nothing more comes after the revocation.
            rounds.rejoin_after_revoke = !revoked.is_empty() && joined.protocol.is_cooperative();
            rounds.revoking = revoked.clone();
            rounds.assigned = joined.assigned;
            send(Inner::Assigned {
                join,
                added: added
                    .into_iter()
                    .map(|p| (p, committed.get(&p).copied().flatten()))
                    .collect(),
                revoked,
                protocol: joined.protocol,
                topic_partitions: rounds.partitions.len(),
            })
        }
        // News of the membership the facade knows (the one before this round: a round that
        // failed never became one), or it would take it for news of a later membership.
        Err(e) if e.is_fatal() => send(Inner::Heartbeat {
            join: join - 1,
            news: Err(e),
        }),
        Err(e) => {
            log::warn!(
                "Rejoining consumer group {} failed: {e}; giving up the membership and joining again",
                group.group_id()
            );
            group.forget();
            *rounds = Rounds::default();
            send(Inner::Heartbeat {
                join: join - 1,
                news: Ok(Heartbeat::Rejoin("rejoining the group failed")),
            })
        }
    }
}

/// The caller has not called for longer than the rebalance timeout: a dynamic member
/// leaves the group, so that the others take its partitions at once; a static member only
/// stops heartbeating (Kafka's clients send no LeaveGroup for one), and the coordinator
/// gives its partitions away when its session times out.
fn stall(cluster: &mut Cluster, group: &mut Group, since: Duration) {
    if group.is_static() {
        log::warn!(
            "The consumer of group {} was not polled for {:.1} s, longer than the rebalance timeout: as a static member it stops heartbeating, and the group gives its partitions to the others when its session times out",
            group.group_id(),
            since.as_secs_f64()
        );
        group.forget();
        return;
    }
    log::warn!(
        "The consumer of group {} was not polled for {:.1} s, longer than the rebalance timeout: leaving the group so that the others take its partitions",
        group.group_id(),
        since.as_secs_f64()
    );
    if let Err(e) = group.leave(cluster) {
        log::warn!("Could not leave the group: {e}");
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
