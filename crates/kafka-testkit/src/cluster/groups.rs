//! Kafka's classic group coordinator, played by the fake cluster in tansu's place
//! ([`super::Cluster::start_with_kafka_groups`]).
//!
//! tansu 0.6 keeps consumer groups its own way, and some of its ways are not Kafka's:
//!
//! - **No join barrier.** tansu answers a JoinGroup at once, the leader's too, with the
//!   members' metadata as they last sent it; Kafka holds every JoinGroup of a rebalance
//!   until each member has rejoined (or the rebalance timeout passed), so the leader plans
//!   with what every member says now. A cooperative leader must see which partitions each
//!   member owns now, or it may hand a partition to one member while another still works on it.
//! - **The protocol is chosen once.** tansu fixes the group's assignor to the first
//!   member's first choice for the group's life; Kafka chooses anew at every rebalance, by
//!   vote, among the assignors every member offers (so a rolling upgrade from range to
//!   cooperative-sticky switches when the last member offers it).
//! - **Static members.** tansu gives a restarted static member its old member id back and
//!   treats changed metadata (a restarted member owns nothing yet) as a reason to re-form
//!   the group, which then waits for a leader that never learns of it. Kafka gives the
//!   restarted member a new id, fences the old one (FENCED_INSTANCE_ID), and causes no
//!   rebalance while the group's protocol stays the same.
//!
//! This module answers JoinGroup, SyncGroup, Heartbeat, LeaveGroup and DescribeGroups by
//! Kafka's rules (the classic `GroupCoordinator` of Kafka 2.4-3.x), and checks OffsetCommit
//! against them before tansu stores the offsets (sent on as a commit from outside the
//! group, which tansu takes for a group it thinks empty; OffsetFetch goes to tansu as it
//! is). What
//! it emulates:
//!
//! - states Empty, PreparingRebalance, CompletingRebalance, Stable, and the generation;
//! - the join barrier: a rebalance completes when every member has rejoined, or at the
//!   longest rebalance timeout, when members that did not rejoin are removed; an Empty
//!   group's first rebalance waits `group.initial.rebalance.delay.ms` (3 s, Kafka's
//!   default) for more members;
//! - KIP-394 (MEMBER_ID_REQUIRED from JoinGroup v4), KIP-345 (static members: a restart
//!   takes the old place under a new member id, the old id is fenced, no rebalance while
//!   the group is Stable and its protocol does not change; the leader id answered to the
//!   restarted member is the old one, so it does not plan), protocol selection by vote,
//!   INCONSISTENT_GROUP_PROTOCOL;
//! - SyncGroup waits for the leader's plan; heartbeats answer REBALANCE_IN_PROGRESS while
//!   preparing, ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID and FENCED_INSTANCE_ID as Kafka does;
//!   a member with no request pending and no heartbeat (or commit) for its session timeout
//!   is removed;
//! - commits from members are accepted in Stable and PreparingRebalance (KIP-429 relies on
//!   the latter), refused with REBALANCE_IN_PROGRESS in CompletingRebalance.
//!
//! Not emulated: KIP-814's `skip_assignment` (JoinGroup v9), KIP-848, transactional offset
//! commits, group deletion, the `__consumer_offsets` log (offsets live in tansu).
use std::collections::{BTreeMap, HashMap};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, HeartbeatRequest, HeartbeatResponse,
    JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, SyncGroupRequest, SyncGroupResponse,
    offset_commit_response::{OffsetCommitResponsePartition, OffsetCommitResponseTopic},
};
use kafka_protocol::protocol::StrBytes;

use super::rewrite::{decode_request, encode_answer, encode_request};

const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

/// Kafka's `group.initial.rebalance.delay.ms` default.
pub const INITIAL_REBALANCE_DELAY: Duration = Duration::from_secs(3);

/// A group's state, by Kafka's names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// A rebalance that completed: the generation it made, its members and assignor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rebalance {
    pub at: Instant,
    pub generation: i32,
    /// The assignor chosen (`None`: the group became Empty).
    pub protocol: Option<String>,
    /// Member ids, with instance ids where static.
    pub members: Vec<(String, Option<String>)>,
    /// Why it started (the first reason given while preparing).
    pub reason: String,
}

/// What the coordinator does with a group request.
pub(super) enum Handled {
    /// The answer frame.
    Answer(Vec<u8>),
    /// Forward this frame to tansu in the request's place: an OffsetCommit that passed
    /// the checks, made anonymous (generation -1, no member), since tansu knows nothing of
    /// the members this coordinator keeps, and stores offsets from outside a group it
    /// thinks empty.
    Forward(Vec<u8>),
}

/// Every group of the cluster, by Kafka's rules. Shared by every broker port (the
/// coordinator can move; the groups stay).
pub(super) struct Coordinator {
    state: Mutex<Groups>,
    /// Signalled on every change; waiting joins and syncs re-check.
    changed: Condvar,
    initial_delay: Duration,
}

#[derive(Default)]
struct Groups {
    groups: HashMap<String, Group>,
    next_id: u64,
    rebalances: Vec<(String, Rebalance)>,
}

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: Option<String>,
    protocol: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// Static members: instance id → member id.
    statics: HashMap<String, String>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not joined yet, and when.
    pending: HashMap<String, Instant>,
    /// While preparing: when members that have not rejoined are removed.
    rebalance_deadline: Option<Instant>,
    /// While preparing an Empty group's first rebalance: not completed before this.
    not_before: Option<Instant>,
    /// Why the rebalance being prepared started.
    reason: String,
    /// Answers for held JoinGroups, by member id.
    join_results: HashMap<String, JoinAnswer>,
    /// Answers for held SyncGroups: the assignment, or an error code.
    sync_results: HashMap<String, Result<Bytes, i16>>,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    protocols: Vec<(String, Bytes)>,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    last_seen: Instant,
    /// Rejoined in the rebalance being prepared.
    awaiting_join: bool,
    /// A JoinGroup or SyncGroup of it is held: it is kept alive meanwhile.
    waiting: bool,
    assignment: Bytes,
}

/// A JoinGroup answer.
#[derive(Clone, Debug)]
struct JoinAnswer {
    error: i16,
    generation: i32,
    protocol: Option<String>,
    leader: String,
    member_id: String,
    /// For the leader: every member, its instance id and its metadata for the protocol.
    members: Vec<(String, Option<String>, Bytes)>,
}

impl JoinAnswer {
    fn error(code: i16) -> JoinAnswer {
        JoinAnswer {
            error: code,
            generation: -1,
            protocol: None,
            leader: String::new(),
            member_id: String::new(),
            members: Vec::new(),
        }
    }
}

impl Coordinator {
    pub(super) fn new(initial_delay: Duration) -> Coordinator {
        Coordinator {
            state: Mutex::new(Groups::default()),
            changed: Condvar::new(),
            initial_delay,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Groups> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The APIs this coordinator answers (or checks).
    pub(super) fn handles(key: i16) -> bool {
        matches!(
            ApiKey::try_from(key),
            Ok(ApiKey::JoinGroup
                | ApiKey::SyncGroup
                | ApiKey::Heartbeat
                | ApiKey::LeaveGroup
                | ApiKey::OffsetCommit
                | ApiKey::DescribeGroups)
        )
    }

    /// Answers (or, for a commit that may go on, passes) a group request. JoinGroup and
    /// SyncGroup may be held until their rebalance gets that far; `alive` says whether
    /// the client's connection is still open (false: stop waiting).
    pub(super) fn handle(
        &self,
        frame: &[u8],
        key: i16,
        version: i16,
        throttle_ms: i32,
        alive: &dyn Fn() -> bool,
    ) -> Result<Handled, String> {
        let answer = match ApiKey::try_from(key) {
            Ok(ApiKey::JoinGroup) => {
                let (header, r) = decode_request::<JoinGroupRequest>(frame, version)?;
                let client_id = header.client_id.as_deref().unwrap_or("").to_owned();
                let a = self.join(&r, version, &client_id, alive);
                encode_answer(
                    header.correlation_id,
                    &join_response(a, version, throttle_ms),
                    version,
                )?
            }
            Ok(ApiKey::SyncGroup) => {
                let (header, r) = decode_request::<SyncGroupRequest>(frame, version)?;
                let (code, assignment) = match self.sync(&r, version, alive) {
                    Ok(a) => (0, a),
                    Err(code) => (code, Bytes::new()),
                };
                let mut a = SyncGroupResponse::default()
                    .with_throttle_time_ms(throttle_ms)
                    .with_error_code(code)
                    .with_assignment(assignment);
                if version >= 5 {
                    a.protocol_type = r.protocol_type.clone();
                    a.protocol_name = r.protocol_name.clone();
                }
                encode_answer(header.correlation_id, &a, version)?
            }
            Ok(ApiKey::Heartbeat) => {
                let (header, r) = decode_request::<HeartbeatRequest>(frame, version)?;
                let a = HeartbeatResponse::default()
                    .with_throttle_time_ms(throttle_ms)
                    .with_error_code(self.heartbeat(&r));
                encode_answer(header.correlation_id, &a, version)?
            }
            Ok(ApiKey::LeaveGroup) => {
                let (header, r) = decode_request::<LeaveGroupRequest>(frame, version)?;
                let a = self.leave(&r, version).with_throttle_time_ms(throttle_ms);
                encode_answer(header.correlation_id, &a, version)?
            }
            Ok(ApiKey::OffsetCommit) => {
                let (header, r) = decode_request::<OffsetCommitRequest>(frame, version)?;
                let code = self.may_commit(&r);
                if code == 0 {
                    let mut anonymous = r.clone();
                    anonymous.generation_id_or_member_epoch = -1;
                    anonymous.member_id = StrBytes::default();
                    anonymous.group_instance_id = None;
                    return Ok(Handled::Forward(encode_request(
                        &header, &anonymous, version,
                    )?));
                }
                let topics = r
                    .topics
                    .iter()
                    .map(|t| {
                        OffsetCommitResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetCommitResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                let a = OffsetCommitResponse::default()
                    .with_throttle_time_ms(throttle_ms)
                    .with_topics(topics);
                encode_answer(header.correlation_id, &a, version)?
            }
            Ok(ApiKey::DescribeGroups) => {
                let (header, r) = decode_request::<DescribeGroupsRequest>(frame, version)?;
                let a = self
                    .describe(&r, version)
                    .with_throttle_time_ms(throttle_ms);
                encode_answer(header.correlation_id, &a, version)?
            }
            _ => {
                return Err(format!(
                    "the group coordinator does not answer API key {key}"
                ));
            }
        };
        Ok(Handled::Answer(answer))
    }

    /// Expires members whose session ran out and completes rebalances whose time came;
    /// called every few tens of milliseconds by the cluster's ticker thread.
    pub(super) fn tick(&self) {
        let mut groups = self.lock();
        let now = Instant::now();
        let Groups {
            groups: map,
            rebalances,
            ..
        } = &mut *groups;
        let mut changed = false;
        for (id, g) in map.iter_mut() {
            // A member id handed out and never used is forgotten (Kafka: after the
            // session timeout of the join that asked for it; five minutes is plenty here).
            g.pending
                .retain(|_, since| now < *since + Duration::from_secs(300));
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(_, m)| {
                    !m.waiting && !m.awaiting_join && now > m.last_seen + m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for member in expired {
                g.remove(&member, UNKNOWN_MEMBER_ID);
                g.prepare(
                    format!("member {member} sent no heartbeat within its session timeout"),
                    now,
                );
                changed = true;
            }
            changed |= g.try_complete(now, id, rebalances);
        }
        if changed {
            self.changed.notify_all();
        }
    }

    /// The generation and state of `group` (None: never seen).
    pub(super) fn group(&self, group: &str) -> Option<(i32, GroupState)> {
        self.lock()
            .groups
            .get(group)
            .map(|g| (g.generation, g.state))
    }

    /// Every rebalance of `group` that completed, oldest first.
    pub(super) fn rebalances(&self, group: &str) -> Vec<Rebalance> {
        self.lock()
            .rebalances
            .iter()
            .filter(|(g, _)| g == group)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// A new member id, as Kafka makes them: `prefix` (client id, or instance id for a
    /// static member), a dash, something unique.
    fn new_id(next_id: &mut u64, prefix: &str) -> String {
        *next_id += 1;
        let prefix = if prefix.is_empty() {
            "consumer"
        } else {
            prefix
        };
        format!("{prefix}-{:012x}", *next_id)
    }

    fn join(
        &self,
        r: &JoinGroupRequest,
        version: i16,
        client_id: &str,
        alive: &dyn Fn() -> bool,
    ) -> JoinAnswer {
        let group_id = r.group_id.0.to_string();
        let instance = r.group_instance_id.as_ref().map(|s| s.to_string());
        let protocols: Vec<(String, Bytes)> = r
            .protocols
            .iter()
            .map(|p| (p.name.to_string(), p.metadata.clone()))
            .collect();
        let protocol_type = r.protocol_type.to_string();
        let session = Duration::from_millis(r.session_timeout_ms.max(1) as u64);
        // Before JoinGroup v1 the rebalance timeout was the session timeout.
        let rebalance = if r.rebalance_timeout_ms > 0 {
            Duration::from_millis(r.rebalance_timeout_ms as u64)
        } else {
            session
        };
        let now = Instant::now();
        let initial_delay = self.initial_delay;
        let mut guard = self.lock();
        let Groups {
            groups,
            next_id,
            rebalances,
        } = &mut *guard;
        let g = groups.entry(group_id.clone()).or_insert_with(Group::new);
        if protocols.is_empty()
            || protocol_type.is_empty()
            || (!g.members.is_empty() && !g.supports(&protocol_type, &protocols))
        {
            return JoinAnswer::error(INCONSISTENT_GROUP_PROTOCOL);
        }
        let member = || Member {
            instance_id: instance.clone(),
            client_id: client_id.to_owned(),
            protocols: protocols.clone(),
            session_timeout: session,
            rebalance_timeout: rebalance,
            last_seen: now,
            awaiting_join: false,
            waiting: false,
            assignment: Bytes::new(),
        };
        let was_empty = g.state == GroupState::Empty;
        let member_id = if r.member_id.is_empty() {
            let id = Coordinator::new_id(next_id, instance.as_deref().unwrap_or(client_id));
            match &instance {
                Some(inst) if g.statics.contains_key(inst) => {
                    // KIP-345: a static member restarted. It takes its old place under a new
                    // id; the old id is fenced (a request of it, held or later, gets
                    // FENCED_INSTANCE_ID).
                    let old = g.statics[inst].clone();
                    let leader_before = g.leader.clone().unwrap_or_default();
                    let mut m = g.members.remove(&old).expect("a static member's entry");
                    if m.waiting {
                        g.join_results
                            .insert(old.clone(), JoinAnswer::error(FENCED_INSTANCE_ID));
                        g.sync_results.insert(old.clone(), Err(FENCED_INSTANCE_ID));
                    }
                    m.protocols = protocols.clone();
                    m.session_timeout = session;
                    m.rebalance_timeout = rebalance;
                    m.last_seen = now;
                    m.waiting = false;
                    m.client_id = client_id.to_owned();
                    g.members.insert(id.clone(), m);
                    g.statics.insert(inst.clone(), id.clone());
                    if g.leader.as_deref() == Some(old.as_str()) {
                        g.leader = Some(id.clone());
                    }
                    self.changed.notify_all();
                    if g.state == GroupState::Stable && g.select_protocol() == g.protocol {
                        // No rebalance: the last plan stands, and SyncGroup hands this
                        // member its part of it. The leader answered is the one before,
                        // so this member does not plan even if it leads.
                        return JoinAnswer {
                            error: 0,
                            generation: g.generation,
                            protocol: g.protocol.clone(),
                            leader: leader_before,
                            member_id: id,
                            members: Vec::new(),
                        };
                    }
                    g.prepare(format!("static member {inst} restarted"), now);
                    id
                }
                Some(inst) => {
                    g.members.insert(id.clone(), member());
                    g.statics.insert(inst.clone(), id.clone());
                    g.prepare(format!("static member {inst} joined"), now);
                    id
                }
                // KIP-394: a member without an id gets one to join with, and joins again.
                None if version >= 4 => {
                    g.pending.insert(id.clone(), now);
                    let mut a = JoinAnswer::error(MEMBER_ID_REQUIRED);
                    a.member_id = id;
                    return a;
                }
                None => {
                    g.members.insert(id.clone(), member());
                    g.prepare(format!("member {id} joined"), now);
                    id
                }
            }
        } else {
            let id = r.member_id.to_string();
            if let Some(inst) = &instance {
                match g.statics.get(inst) {
                    Some(current) if *current != id => {
                        return JoinAnswer::error(FENCED_INSTANCE_ID);
                    }
                    None if !g.pending.contains_key(&id) => {
                        return JoinAnswer::error(UNKNOWN_MEMBER_ID);
                    }
                    _ => {}
                }
            }
            if g.pending.remove(&id).is_some() {
                g.members.insert(id.clone(), member());
                if let Some(inst) = &instance {
                    g.statics.insert(inst.clone(), id.clone());
                }
                g.prepare(format!("member {id} joined"), now);
            } else {
                let Some(m) = g.members.get_mut(&id) else {
                    return JoinAnswer::error(UNKNOWN_MEMBER_ID);
                };
                let same = m.protocols == protocols;
                m.protocols = protocols.clone();
                m.session_timeout = session;
                m.rebalance_timeout = rebalance;
                m.last_seen = now;
                let leads = g.leader.as_deref() == Some(id.as_str());
                match g.state {
                    GroupState::PreparingRebalance => {}
                    // Its JoinGroup answer was lost: the same again.
                    GroupState::CompletingRebalance if same => return g.answer_for(&id),
                    // A follower rejoining with nothing changed causes no rebalance.
                    GroupState::Stable if same && !leads => {
                        return JoinAnswer {
                            error: 0,
                            generation: g.generation,
                            protocol: g.protocol.clone(),
                            leader: g.leader.clone().unwrap_or_default(),
                            member_id: id,
                            members: Vec::new(),
                        };
                    }
                    _ => g.prepare(format!("member {id} rejoined"), now),
                }
            }
            id
        };
        if was_empty {
            // Kafka's group.initial.rebalance.delay.ms: an empty group's first members wait
            // a moment for the others, so that they start in one rebalance.
            g.not_before = Some(now + initial_delay);
        }
        let m = g.members.get_mut(&member_id).expect("the joining member");
        m.awaiting_join = true;
        m.waiting = true;
        g.join_results.remove(&member_id);
        g.try_complete(now, &group_id, rebalances);
        self.changed.notify_all();
        drop(guard);
        self.wait_for(&group_id, &member_id, alive, |g| {
            g.join_results.remove(&member_id)
        })
        .unwrap_or_else(|| JoinAnswer::error(UNKNOWN_MEMBER_ID))
    }

    /// Holds a request of `member_id` until `take` finds its answer; `None` when the
    /// member is gone or the client's connection closed first.
    fn wait_for<T>(
        &self,
        group_id: &str,
        member_id: &str,
        alive: &dyn Fn() -> bool,
        mut take: impl FnMut(&mut Group) -> Option<T>,
    ) -> Option<T> {
        let mut guard = self.lock();
        loop {
            let g = guard.groups.get_mut(group_id)?;
            if let Some(answer) = take(g) {
                if let Some(m) = g.members.get_mut(member_id) {
                    m.waiting = false;
                    m.last_seen = Instant::now();
                }
                return Some(answer);
            }
            if !g.members.contains_key(member_id) {
                return None;
            }
            if !alive() {
                if let Some(m) = g.members.get_mut(member_id) {
                    m.waiting = false;
                }
                return None;
            }
            guard = self
                .changed
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    fn sync(
        &self,
        r: &SyncGroupRequest,
        version: i16,
        alive: &dyn Fn() -> bool,
    ) -> Result<Bytes, i16> {
        let group_id = r.group_id.0.to_string();
        let id = r.member_id.to_string();
        let mut guard = self.lock();
        let g = guard.groups.get_mut(&group_id).ok_or(UNKNOWN_MEMBER_ID)?;
        g.check_member(&id, r.group_instance_id.as_deref())?;
        if r.generation_id != g.generation {
            return Err(ILLEGAL_GENERATION);
        }
        if version >= 5
            && (r
                .protocol_type
                .as_deref()
                .is_some_and(|t| Some(t) != g.protocol_type.as_deref())
                || r.protocol_name
                    .as_deref()
                    .is_some_and(|n| Some(n) != g.protocol.as_deref()))
        {
            return Err(INCONSISTENT_GROUP_PROTOCOL);
        }
        let now = Instant::now();
        match g.state {
            GroupState::Empty => return Err(UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => return Err(REBALANCE_IN_PROGRESS),
            GroupState::Stable => {
                let m = g.members.get_mut(&id).ok_or(UNKNOWN_MEMBER_ID)?;
                m.last_seen = now;
                return Ok(m.assignment.clone());
            }
            GroupState::CompletingRebalance => {}
        }
        if g.leader.as_deref() == Some(id.as_str()) {
            // The leader's plan: every member gets its part (none for those it left out).
            let plan: HashMap<String, Bytes> = r
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                .collect();
            for (mid, m) in g.members.iter_mut() {
                m.assignment = plan.get(mid).cloned().unwrap_or_default();
                g.sync_results.insert(mid.clone(), Ok(m.assignment.clone()));
            }
            g.state = GroupState::Stable;
            self.changed.notify_all();
        }
        if let Some(m) = g.members.get_mut(&id) {
            m.waiting = true;
            m.last_seen = now;
        }
        drop(guard);
        self.wait_for(&group_id, &id, alive, |g| g.sync_results.remove(&id))
            .unwrap_or(Err(UNKNOWN_MEMBER_ID))
    }

    fn heartbeat(&self, r: &HeartbeatRequest) -> i16 {
        let mut guard = self.lock();
        let Some(g) = guard.groups.get_mut(r.group_id.0.as_str()) else {
            return UNKNOWN_MEMBER_ID;
        };
        let id = r.member_id.to_string();
        if let Err(code) = g.check_member(&id, r.group_instance_id.as_deref()) {
            return code;
        }
        if r.generation_id != g.generation {
            return ILLEGAL_GENERATION;
        }
        if let Some(m) = g.members.get_mut(&id) {
            m.last_seen = Instant::now();
        }
        match g.state {
            GroupState::PreparingRebalance => REBALANCE_IN_PROGRESS,
            GroupState::Empty => UNKNOWN_MEMBER_ID,
            // After its JoinGroup answer a member may heartbeat before it syncs.
            GroupState::CompletingRebalance | GroupState::Stable => 0,
        }
    }

    fn leave(&self, r: &LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        let mut guard = self.lock();
        let now = Instant::now();
        let Groups {
            groups, rebalances, ..
        } = &mut *guard;
        let group_id = r.group_id.0.to_string();
        let identities: Vec<(String, Option<String>)> = if version < 3 {
            vec![(r.member_id.to_string(), None)]
        } else {
            r.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        };
        let mut results = Vec::new();
        let Some(g) = groups.get_mut(&group_id) else {
            let mut a = LeaveGroupResponse::default();
            if version < 3 {
                a.error_code = UNKNOWN_MEMBER_ID;
            } else {
                a.members = identities
                    .iter()
                    .map(|(m, i)| {
                        MemberResponse::default()
                            .with_member_id(StrBytes::from_string(m.clone()))
                            .with_group_instance_id(i.clone().map(StrBytes::from_string))
                            .with_error_code(UNKNOWN_MEMBER_ID)
                    })
                    .collect();
            }
            return a;
        };
        for (member, instance) in &identities {
            // v4+: a static member may be named by its instance id alone.
            let id = match (member.is_empty(), instance) {
                (true, Some(i)) => g.statics.get(i).cloned().unwrap_or_default(),
                _ => member.clone(),
            };
            let code = match g.check_member(&id, instance.as_deref()) {
                Ok(()) => {
                    g.remove(&id, UNKNOWN_MEMBER_ID);
                    g.prepare(format!("member {id} left"), now);
                    0
                }
                Err(code) => code,
            };
            results.push((member.clone(), instance.clone(), code));
        }
        g.try_complete(now, &group_id, rebalances);
        self.changed.notify_all();
        let mut a = LeaveGroupResponse::default();
        if version < 3 {
            a.error_code = results.first().map_or(0, |r| r.2);
        } else {
            a.members = results
                .into_iter()
                .map(|(m, i, code)| {
                    MemberResponse::default()
                        .with_member_id(StrBytes::from_string(m))
                        .with_group_instance_id(i.map(StrBytes::from_string))
                        .with_error_code(code)
                })
                .collect();
        }
        a
    }

    /// Kafka's checks of a commit: from outside (generation -1, no member) only to an
    /// empty group; from a member with its current generation, and not while the group
    /// completes a rebalance. A commit counts as a heartbeat.
    fn may_commit(&self, r: &OffsetCommitRequest) -> i16 {
        let mut guard = self.lock();
        let id = r.member_id.to_string();
        let outside =
            r.generation_id_or_member_epoch < 0 && id.is_empty() && r.group_instance_id.is_none();
        let Some(g) = guard.groups.get_mut(r.group_id.0.as_str()) else {
            return if outside { 0 } else { UNKNOWN_MEMBER_ID };
        };
        if outside {
            return if g.members.is_empty() {
                0
            } else {
                UNKNOWN_MEMBER_ID
            };
        }
        if let Err(code) = g.check_member(&id, r.group_instance_id.as_deref()) {
            return code;
        }
        if r.generation_id_or_member_epoch != g.generation {
            return ILLEGAL_GENERATION;
        }
        if let Some(m) = g.members.get_mut(&id) {
            m.last_seen = Instant::now();
        }
        match g.state {
            GroupState::CompletingRebalance => REBALANCE_IN_PROGRESS,
            _ => 0,
        }
    }

    fn describe(&self, r: &DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse {
        let guard = self.lock();
        let groups = r
            .groups
            .iter()
            .map(|id| {
                let described = DescribedGroup::default().with_group_id(id.clone());
                let Some(g) = guard.groups.get(id.0.as_str()) else {
                    return described.with_group_state(StrBytes::from_static_str("Dead"));
                };
                let stable = g.state == GroupState::Stable;
                let members = g
                    .members
                    .iter()
                    .map(|(mid, m)| {
                        let metadata = if stable {
                            m.metadata_for(g.protocol.as_deref().unwrap_or_default())
                        } else {
                            Bytes::new()
                        };
                        let mut d = DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(mid.clone()))
                            .with_client_id(StrBytes::from_string(m.client_id.clone()))
                            .with_client_host(StrBytes::from_static_str("/127.0.0.1"))
                            .with_member_metadata(metadata)
                            .with_member_assignment(if stable {
                                m.assignment.clone()
                            } else {
                                Bytes::new()
                            });
                        if version >= 4 {
                            d.group_instance_id = m.instance_id.clone().map(StrBytes::from_string);
                        }
                        d
                    })
                    .collect();
                described
                    .with_group_state(StrBytes::from_static_str(g.state.name()))
                    .with_protocol_type(StrBytes::from_string(
                        g.protocol_type.clone().unwrap_or_default(),
                    ))
                    .with_protocol_data(StrBytes::from_string(if stable {
                        g.protocol.clone().unwrap_or_default()
                    } else {
                        String::new()
                    }))
                    .with_members(members)
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(groups)
    }
}

impl GroupState {
    fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

impl Member {
    fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            statics: HashMap::new(),
            pending: HashMap::new(),
            rebalance_deadline: None,
            not_before: None,
            reason: String::new(),
            join_results: HashMap::new(),
            sync_results: HashMap::new(),
        }
    }

    /// Kafka's `supportsProtocols`: the same protocol type, and at least one protocol
    /// every member (this one included) offers.
    fn supports(&self, protocol_type: &str, protocols: &[(String, Bytes)]) -> bool {
        self.protocol_type
            .as_deref()
            .is_none_or(|t| t == protocol_type)
            && protocols.iter().any(|(name, _)| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(n, _)| n == name))
            })
    }

    /// Kafka's `selectProtocol`: among the protocols every member offers, each member
    /// votes for the first of its own list; the most votes wins (ties: the first in the
    /// candidates' order of the first member).
    fn select_protocol(&self) -> Option<String> {
        let mut members = self.members.values();
        let first = members.next()?;
        let candidates: Vec<&String> = first
            .protocols
            .iter()
            .map(|(n, _)| n)
            .filter(|n| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|(x, _)| x == *n))
            })
            .collect();
        let mut votes: BTreeMap<usize, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(i) = m
                .protocols
                .iter()
                .find_map(|(n, _)| candidates.iter().position(|c| *c == n))
            {
                *votes.entry(i).or_default() += 1;
            }
        }
        let best = votes.values().copied().max()?;
        let (&i, _) = votes.iter().find(|(_, v)| **v == best)?;
        Some(candidates[i].clone())
    }

    /// Starts preparing a rebalance (if not already): every member must rejoin.
    fn prepare(&mut self, reason: String, now: Instant) {
        if self.state == GroupState::PreparingRebalance {
            return;
        }
        if self.state == GroupState::CompletingRebalance {
            // Members waiting for the plan learn that another rebalance came first.
            for id in self.members.keys() {
                self.sync_results
                    .insert(id.clone(), Err(REBALANCE_IN_PROGRESS));
            }
        }
        self.state = GroupState::PreparingRebalance;
        self.reason = reason;
        for m in self.members.values_mut() {
            m.awaiting_join = false;
        }
        let longest = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or_default();
        self.rebalance_deadline = Some(now + longest);
    }

    /// Removes a member (the waiting requests of it get `code`).
    fn remove(&mut self, id: &str, code: i16) {
        if let Some(m) = self.members.remove(id) {
            if let Some(inst) = &m.instance_id
                && self.statics.get(inst).map(String::as_str) == Some(id)
            {
                self.statics.remove(inst);
            }
            if m.waiting {
                self.join_results
                    .insert(id.to_owned(), JoinAnswer::error(code));
                self.sync_results.insert(id.to_owned(), Err(code));
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
    }

    /// Kafka's member checks: a static member named by the wrong id is fenced, an unknown
    /// id is unknown.
    fn check_member(&self, id: &str, instance: Option<&str>) -> Result<(), i16> {
        if let Some(inst) = instance
            && let Some(current) = self.statics.get(inst)
            && current != id
        {
            return Err(FENCED_INSTANCE_ID);
        }
        if !self.members.contains_key(id) {
            return Err(UNKNOWN_MEMBER_ID);
        }
        Ok(())
    }

    /// The JoinGroup answer of member `id` in the generation being completed.
    fn answer_for(&self, id: &str) -> JoinAnswer {
        let leader = self.leader.clone().unwrap_or_default();
        let protocol = self.protocol.clone().unwrap_or_default();
        let members = if leader == id {
            self.members
                .iter()
                .map(|(mid, m)| {
                    (
                        mid.clone(),
                        m.instance_id.clone(),
                        m.metadata_for(&protocol),
                    )
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinAnswer {
            error: 0,
            generation: self.generation,
            protocol: self.protocol.clone(),
            leader,
            member_id: id.to_owned(),
            members,
        }
    }

    /// Completes the rebalance being prepared when every member has rejoined (and an
    /// Empty group's first members have waited the initial delay), or when the rebalance
    /// timeout passed (members that did not rejoin are removed). True when it completed.
    fn try_complete(
        &mut self,
        now: Instant,
        group_id: &str,
        rebalances: &mut Vec<(String, Rebalance)>,
    ) -> bool {
        if self.state != GroupState::PreparingRebalance {
            return false;
        }
        let all = self.members.values().all(|m| m.awaiting_join);
        let timed_out = self.rebalance_deadline.is_some_and(|d| now >= d);
        let delayed = self.not_before.is_some_and(|t| now < t);
        if !(all && !delayed || timed_out) {
            return false;
        }
        let late: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.awaiting_join)
            .map(|(id, _)| id.clone())
            .collect();
        for id in late {
            self.remove(&id, UNKNOWN_MEMBER_ID);
        }
        self.generation += 1;
        self.not_before = None;
        self.rebalance_deadline = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol = None;
            self.leader = None;
            self.protocol_type = None;
        } else {
            self.protocol = self.select_protocol();
            if self.protocol_type.is_none() {
                // Every member's type is the same (checked at each join).
                self.protocol_type = Some("consumer".to_owned());
            }
            if self
                .leader
                .as_ref()
                .is_none_or(|l| !self.members.contains_key(l))
            {
                self.leader = self.members.keys().next().cloned();
            }
            self.state = GroupState::CompletingRebalance;
            let ids: Vec<String> = self.members.keys().cloned().collect();
            for id in ids {
                let answer = self.answer_for(&id);
                self.join_results.insert(id.clone(), answer);
                if let Some(m) = self.members.get_mut(&id) {
                    m.awaiting_join = false;
                    m.assignment = Bytes::new();
                }
                self.sync_results.remove(&id);
            }
        }
        rebalances.push((
            group_id.to_owned(),
            Rebalance {
                at: now,
                generation: self.generation,
                protocol: self.protocol.clone(),
                members: self
                    .members
                    .iter()
                    .map(|(id, m)| (id.clone(), m.instance_id.clone()))
                    .collect(),
                reason: std::mem::take(&mut self.reason),
            },
        ));
        true
    }
}

/// The JoinGroup answer at `version`: fields a version lacks are left at their defaults
/// (the protocol type exists from v7, the member's instance id from v5, and the protocol
/// name is nullable only from v7).
fn join_response(a: JoinAnswer, version: i16, throttle_ms: i32) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default()
        .with_throttle_time_ms(throttle_ms)
        .with_error_code(a.error)
        .with_generation_id(a.generation)
        .with_leader(StrBytes::from_string(a.leader))
        .with_member_id(StrBytes::from_string(a.member_id))
        .with_members(
            a.members
                .into_iter()
                .map(|(id, instance, metadata)| {
                    let mut m = JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(id))
                        .with_metadata(metadata);
                    if version >= 5 {
                        m.group_instance_id = instance.map(StrBytes::from_string);
                    }
                    m
                })
                .collect(),
        );
    r.protocol_name = match a.protocol {
        Some(p) => Some(StrBytes::from_string(p)),
        None if version < 7 => Some(StrBytes::default()),
        None => None,
    };
    if version >= 7 && a.error == 0 {
        r.protocol_type = Some(StrBytes::from_static_str("consumer"));
    }
    r
}
