//! Consumer-group membership and offset commits, on `kafka-protocol` messages.
//!
//! This is the classic group protocol that every Kafka since 0.9 speaks and that librdkafka
//! and the Java client use: find the coordinator, JoinGroup (a first join without a member
//! id is answered with MEMBER_ID_REQUIRED and the id to use), the leader runs the
//! assignor the coordinator picked, SyncGroup hands the plan out, Heartbeat keeps the
//! session, LeaveGroup ends it. Commits carry the current generation and member id, which
//! real brokers require.
//!
//! - **Assignors** (`assignor`): we offer the configured ones in order of preference
//!   (`partition.assignment.strategy`, default `cooperative-sticky,range`); the coordinator
//!   picks one every member offers. With `range` a rebalance is eager: every member revokes
//!   everything before it rejoins. With `cooperative-sticky` (KIP-429) it is incremental:
//!   members rejoin keeping their partitions, say in their subscription what they own, and
//!   revoke only what the new plan takes away; the driver of this type (the group thread)
//!   handles the rounds.
//! - **Static membership** (KIP-345): with a `group.instance.id` every JoinGroup,
//!   SyncGroup, Heartbeat, OffsetCommit and LeaveGroup names it, so a member that restarts
//!   within the session timeout takes its old place (and partitions) without a rebalance.
//!   Another process joining with the same id fences us: FENCED_INSTANCE_ID, which is
//!   fatal ([`KafkaError::FencedInstanceId`]).
pub(crate) mod assignor;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest,
    SyncGroupResponse, TopicName,
    consumer_protocol_assignment::{self, ConsumerProtocolAssignment},
    consumer_protocol_subscription::{self, ConsumerProtocolSubscription},
    join_group_request::JoinGroupRequestProtocol,
    leave_group_request::MemberIdentity,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
    offset_fetch_request::OffsetFetchRequestTopic,
    sync_group_request::SyncGroupRequestAssignment,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use crate::backoff::{Backoff, BackoffSettings};
use crate::cluster::Cluster;
use crate::error::{KafkaError, check_code};
use crate::group::assignor::Member;
use crate::net::conn::Connection;
use crate::net::throttle::Throttled;
use crate::types::{Assignor, Offset, Partition};

/// The generation of the group we were admitted to; commits must carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(pub i32);

const FIND_COORDINATOR_VERSIONS: (i16, i16) = (1, 3);
/// From 2: the first version with the rebalance timeout and throttle time that Kafka 2.1
/// (the oldest broker this client supports) answers; 4 and later add the member-id round
/// trip (KIP-394), which `join_once` handles when the broker uses it; 5 the group instance
/// id (KIP-345), which a static member needs.
const JOIN_GROUP_VERSIONS: (i16, i16) = (2, 7);
const STATIC_JOIN_GROUP_VERSIONS: (i16, i16) = (5, 7);
const SYNC_GROUP_VERSIONS: (i16, i16) = (1, 5);
const HEARTBEAT_VERSIONS: (i16, i16) = (1, 4);
const LEAVE_GROUP_VERSIONS: (i16, i16) = (1, 4);
const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 8);
const OFFSET_FETCH_VERSIONS: (i16, i16) = (1, 7);
const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (1, 5);
/// The consumer protocol's subscription version we write: 3, with the partitions we own
/// and their generation (what a cooperative-sticky leader needs) and the rack (none), as
/// librdkafka and the Java client (3.5+) write it. Readers of older versions read the
/// fields they know and ignore the rest.
const SUBSCRIPTION_VERSION: i16 = 3;

// Kafka error codes the group side reacts to.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub group_id: String,
    pub topic: String,
    /// `group.instance.id`: static membership when set.
    pub instance_id: Option<String>,
    /// The assignors we offer, in order of preference (never empty).
    pub assignors: Vec<Assignor>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    /// After a heartbeat that did not reach the coordinator, the next one comes after this
    /// backoff instead of a whole interval, so a moved coordinator is found within the
    /// session.
    pub retry_backoff: BackoffSettings,
}

/// What a heartbeat learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// The coordinator confirmed our membership just now.
    Fine,
    /// No heartbeat was due: nothing was asked, so nothing was learned.
    NotDue,
    /// The group is rebalancing (our membership stands: a cooperative member rejoins
    /// keeping its partitions), or it dropped us (`is_member` is false then: revoke
    /// everything and join again).
    Rejoin(&'static str),
}

/// What a join brought: our share, and the assignor of this generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    /// The partitions assigned to us, sorted.
    pub assigned: Vec<Partition>,
    /// The assignor the coordinator picked; cooperative ones rebalance incrementally.
    pub protocol: Assignor,
    pub generation: Generation,
}

pub struct Group {
    settings: GroupSettings,
    /// "host:port" of the coordinator, until an error says it moved.
    coordinator: Option<String>,
    /// Our member id: empty until the coordinator hands one out; kept across rejoins so the
    /// coordinator recognises us, cleared when it says it no longer knows it.
    member_id: String,
    /// Set while we are a member of a generation; commits and heartbeats need it.
    generation: Option<Generation>,
    /// The generation of our last assignment, kept across rejoins (-1: none yet): the
    /// subscription says in which generation we got the partitions we own.
    last_generation: i32,
    /// The assignor the coordinator picked in the last join.
    protocol: Option<Assignor>,
    next_heartbeat: Instant,
    /// Paces heartbeats that fail to reach the coordinator.
    retry: Backoff,
}

impl Group {
    pub fn new(settings: GroupSettings) -> Group {
        Group {
            retry: Backoff::new(settings.retry_backoff),
            settings,
            coordinator: None,
            member_id: String::new(),
            generation: None,
            last_generation: -1,
            protocol: None,
            next_heartbeat: Instant::now(),
        }
    }

    /// The group's id.
    pub fn group_id(&self) -> &str {
        &self.settings.group_id
    }

    /// Whether we are a member of a generation (joined, not dropped since).
    pub fn is_member(&self) -> bool {
        self.generation.is_some()
    }

    /// The topic we subscribe to.
    pub fn topic(&self) -> &str {
        &self.settings.topic
    }

    /// Whether we are a static member (a `group.instance.id` is set).
    pub fn is_static(&self) -> bool {
        self.settings.instance_id.is_some()
    }

    /// The assignor of our current generation, once joined: cooperative ones rebalance
    /// incrementally.
    pub fn protocol(&self) -> Option<Assignor> {
        self.protocol
    }

    /// Joins (or rejoins) the group and returns our share of `partitions`. Blocks for as long
    /// as the coordinator holds the join (up to the rebalance timeout, ~3 s on tansu).
    /// `partitions` is what the topic has now (only the leader uses it); `owned` is what we
    /// keep through this rebalance (cooperative; empty for an eager rejoin or a first join),
    /// said in our subscription so that the leader plans around it.
    pub fn join(
        &mut self,
        cluster: &mut Cluster,
        partitions: &[Partition],
        owned: &[Partition],
    ) -> Result<Joined, KafkaError> {
        self.generation = None;
        let started = Instant::now();
        // A join can be bounced a few times (member id round trip, a rebalance started by
        // another member mid-join, a coordinator move); keep going within a deadline.
        let deadline = self.settings.rebalance_timeout + self.settings.session_timeout;
        loop {
            match self.join_once(cluster, partitions, owned) {
                Ok(joined) => {
                    self.retry.reset();
                    self.next_heartbeat = Instant::now() + self.settings.heartbeat_interval;
                    return Ok(joined);
                }
                Err(e) if started.elapsed() < deadline && self.can_retry_join(cluster, &e) => {
                    log::debug!("retrying group join: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a heartbeat when one is due. Errors are connection problems the caller logs and
    /// retries (or, FENCED_INSTANCE_ID, fatal); membership problems come back as
    /// `Heartbeat::Rejoin`.
    pub fn heartbeat_if_due(&mut self, cluster: &mut Cluster) -> Result<Heartbeat, KafkaError> {
        let Some(generation) = self.generation else {
            return Ok(Heartbeat::Rejoin("not a member of the group"));
        };
        let now = Instant::now();
        if now < self.next_heartbeat {
            return Ok(Heartbeat::NotDue);
        }
        self.next_heartbeat = now + self.settings.heartbeat_interval;
        let (group_id, member_id, instance_id) = self.identity();
        let request = move |version: i16| {
            heartbeat_request(
                &group_id,
                generation,
                &member_id,
                instance_id.as_deref(),
                version,
            )
        };
        // Past the session the coordinator has dropped us anyway: a heartbeat waits for its
        // answer at most that long, then the coordinator is looked up again.
        let deadline = cluster.timeout().min(self.settings.session_timeout);
        let response: HeartbeatResponse = match self.coordinator_call(
            cluster,
            ApiKey::Heartbeat,
            HEARTBEAT_VERSIONS,
            request,
            Some(deadline),
        ) {
            Ok(r) => r,
            Err(e) => {
                // Not a whole interval: a coordinator that moved is found again (through any
                // broker) well within the session, paced so an outage is not a busy loop.
                self.next_heartbeat = Instant::now()
                    + self
                        .retry
                        .next_delay()
                        .min(self.settings.heartbeat_interval);
                return Err(e);
            }
        };
        self.retry.reset();
        match response.error_code {
            0 => Ok(Heartbeat::Fine),
            REBALANCE_IN_PROGRESS => Ok(Heartbeat::Rejoin("the group is rebalancing")),
            code => self.membership_error(cluster, "Heartbeat", code),
        }
    }

    /// When the next heartbeat is due (the caller never sleeps past it).
    pub fn next_heartbeat(&self) -> Instant {
        self.next_heartbeat
    }

    /// Commits `offsets` (each the next offset to read) with our generation and member id.
    pub fn commit(
        &mut self,
        cluster: &mut Cluster,
        offsets: &[(Partition, Offset)],
    ) -> Result<(), KafkaError> {
        let Some(generation) = self.generation else {
            return Err(KafkaError::Broker {
                what: "OffsetCommit",
                code: UNKNOWN_MEMBER_ID,
            });
        };
        let (group_id, member_id, instance_id) = self.identity();
        let topic = self.settings.topic.clone();
        let offsets = offsets.to_vec();
        let request = move |version: i16| {
            offset_commit_request(
                &group_id,
                generation,
                &member_id,
                instance_id.as_deref(),
                &topic,
                &offsets,
                version,
            )
        };
        let response: OffsetCommitResponse = self.coordinator_call(
            cluster,
            ApiKey::OffsetCommit,
            OFFSET_COMMIT_VERSIONS,
            request,
            None,
        )?;
        for topic in &response.topics {
            for p in &topic.partitions {
                if p.error_code != 0 {
                    return self
                        .membership_error(cluster, "OffsetCommit", p.error_code)
                        .and(Err(KafkaError::Broker {
                            what: "OffsetCommit",
                            code: p.error_code,
                        }));
                }
            }
        }
        Ok(())
    }

    /// The group's committed offsets for `partitions`; `None` where nothing is committed.
    pub fn committed(
        &mut self,
        cluster: &mut Cluster,
        partitions: &[Partition],
    ) -> Result<HashMap<Partition, Option<Offset>>, KafkaError> {
        let request =
            offset_fetch_request(&self.settings.group_id, &self.settings.topic, partitions);
        let response: OffsetFetchResponse = self.coordinator_call(
            cluster,
            ApiKey::OffsetFetch,
            OFFSET_FETCH_VERSIONS,
            |_| request.clone(),
            None,
        )?;
        self.check_coordinator_code(cluster, "OffsetFetch", response.error_code)?;
        let mut out: HashMap<Partition, Option<Offset>> =
            partitions.iter().map(|p| (*p, None)).collect();
        for topic in &response.topics {
            for p in &topic.partitions {
                self.check_coordinator_code(cluster, "OffsetFetch", p.error_code)?;
                if p.committed_offset >= 0 {
                    out.insert(
                        Partition(p.partition_index),
                        Some(Offset(p.committed_offset)),
                    );
                }
            }
        }
        Ok(out)
    }

    /// Leaves the group so the others take over our partitions at once instead of after the
    /// session timeout. Best effort: errors are returned for logging only. A static member
    /// leaving names its instance id (LeaveGroup v3+), which removes its static place, so
    /// a static member that means to come back does not call this (see `forget`).
    pub fn leave(&mut self, cluster: &mut Cluster) -> Result<(), KafkaError> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let (group_id, member_id, instance_id) = self.identity();
        let request = move |version: i16| {
            leave_request(&group_id, &member_id, instance_id.as_deref(), version)
        };
        let response: LeaveGroupResponse = self.coordinator_call(
            cluster,
            ApiKey::LeaveGroup,
            LEAVE_GROUP_VERSIONS,
            request,
            None,
        )?;
        self.generation = None;
        self.protocol = None;
        self.member_id.clear();
        self.last_generation = -1;
        check_code("LeaveGroup", response.error_code)?;
        for m in &response.members {
            if m.error_code == FENCED_INSTANCE_ID {
                return Err(self.fenced());
            }
            check_code("LeaveGroup", m.error_code)?;
        }
        Ok(())
    }

    /// Stops heartbeating without leaving: what a static member does when its caller
    /// stalls or stops (Kafka's clients send no LeaveGroup for a static member); the
    /// coordinator keeps its place for the session timeout, and its member id stays ours to
    /// rejoin with.
    pub fn forget(&mut self) {
        self.generation = None;
    }

    /// Our group, member and instance ids, for a request closure.
    fn identity(&self) -> (String, String, Option<String>) {
        (
            self.settings.group_id.clone(),
            self.member_id.clone(),
            self.settings.instance_id.clone(),
        )
    }

    fn fenced(&self) -> KafkaError {
        KafkaError::FencedInstanceId {
            group: self.settings.group_id.clone(),
            instance_id: self.settings.instance_id.clone().unwrap_or_default(),
        }
    }

    fn join_once(
        &mut self,
        cluster: &mut Cluster,
        partitions: &[Partition],
        owned: &[Partition],
    ) -> Result<Joined, KafkaError> {
        let versions = if self.is_static() {
            STATIC_JOIN_GROUP_VERSIONS
        } else {
            JOIN_GROUP_VERSIONS
        };
        let settings = self.settings.clone();
        let (member_id, generation) = (self.member_id.clone(), self.last_generation);
        let owned = owned.to_vec();
        let request =
            move |version: i16| join_request(&settings, &member_id, &owned, generation, version);
        // The coordinator holds a join until every member has rejoined, at most the
        // rebalance timeout; the read deadline must outlast that.
        let hold = self.settings.rebalance_timeout + Duration::from_secs(5);
        let result: Result<JoinGroupResponse, KafkaError> =
            self.coordinator_call(cluster, ApiKey::JoinGroup, versions, request, Some(hold));
        let response = match result {
            Err(KafkaError::UnsupportedVersion {
                broker,
                theirs: Some((_, hi)),
                ..
            }) if self.is_static() => {
                return Err(KafkaError::StaticMembershipUnsupported {
                    broker,
                    join_group: hi,
                });
            }
            other => other?,
        };
        match response.error_code {
            0 => {}
            MEMBER_ID_REQUIRED => {
                // KIP-394: the first join only hands out our member id; join again with it.
                self.member_id = response.member_id.to_string();
                return Err(KafkaError::Broker {
                    what: "JoinGroup",
                    code: MEMBER_ID_REQUIRED,
                });
            }
            INCONSISTENT_GROUP_PROTOCOL => {
                // Kafka names no protocol here; tansu names the group's. Either way the
                // coordinator is asked (DescribeGroups) first.
                let hint = response.protocol_name.as_ref().map(|p| p.to_string());
                return Err(self.inconsistent_protocol(cluster, hint));
            }
            code => {
                self.check_coordinator_code(cluster, "JoinGroup", code)?;
                return self.membership_error(cluster, "JoinGroup", code).and(Err(
                    KafkaError::Broker {
                        what: "JoinGroup",
                        code,
                    },
                ));
            }
        }
        self.member_id = response.member_id.to_string();
        let generation = Generation(response.generation_id);
        let name = response
            .protocol_name
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        let protocol = Assignor::from_name(&name)
            .filter(|a| self.settings.assignors.contains(a))
            .ok_or_else(|| KafkaError::Protocol {
                broker: self.coordinator.clone().unwrap_or_default(),
                detail: format!(
                    "the coordinator put group {} on assignor \"{name}\", which we did not offer",
                    self.settings.group_id
                ),
            })?;

        // Kafka names as leader the member it chose; a static member that took an old
        // place back is told the old leader's id, not its own, so it assigns nothing.
        let assignments = if response.leader == response.member_id {
            self.leader_assignments(&response, protocol, partitions)?
        } else {
            Vec::new()
        };
        let (group_id, member_id, instance_id) = self.identity();
        let request = move |version| {
            sync_request(
                &group_id,
                generation,
                &member_id,
                instance_id.as_deref(),
                protocol,
                assignments.clone(),
                version,
            )
        };
        let response: SyncGroupResponse = self.coordinator_call(
            cluster,
            ApiKey::SyncGroup,
            SYNC_GROUP_VERSIONS,
            request,
            Some(hold),
        )?;
        match response.error_code {
            0 => {}
            INCONSISTENT_GROUP_PROTOCOL => return Err(self.inconsistent_protocol(cluster, None)),
            code => {
                self.check_coordinator_code(cluster, "SyncGroup", code)?;
                return self.membership_error(cluster, "SyncGroup", code).and(Err(
                    KafkaError::Broker {
                        what: "SyncGroup",
                        code,
                    },
                ));
            }
        }
        self.generation = Some(generation);
        self.last_generation = generation.0;
        self.protocol = Some(protocol);
        let assigned = decode_assignment(&response.assignment, &self.settings.topic)?;
        Ok(Joined {
            assigned,
            protocol,
            generation,
        })
    }

    /// The leader's job: run the assignor the coordinator picked over the members that
    /// subscribe to the topic. The members' metadata is their subscription for that
    /// assignor.
    fn leader_assignments(
        &self,
        response: &JoinGroupResponse,
        protocol: Assignor,
        partitions: &[Partition],
    ) -> Result<Vec<SyncGroupRequestAssignment>, KafkaError> {
        let mut members = Vec::with_capacity(response.members.len());
        for m in &response.members {
            let sub = decode_subscription(&m.metadata, &self.settings.topic).map_err(|detail| {
                KafkaError::Protocol {
                    broker: self.coordinator.clone().unwrap_or_default(),
                    detail: format!(
                        "member {} sent a subscription we cannot read: {detail}",
                        m.member_id.as_str()
                    ),
                }
            })?;
            members.push(Member {
                id: m.member_id.to_string(),
                instance_id: m.group_instance_id.as_ref().map(|i| i.to_string()),
                subscribed: sub.subscribed,
                owned: sub.owned,
                generation: sub.generation,
            });
        }
        let plan = match protocol {
            Assignor::Range => assignor::range(&members, partitions),
            Assignor::CooperativeSticky => assignor::cooperative_sticky(&members, partitions),
        };
        members
            .iter()
            .map(|m| {
                let mine = plan.get(&m.id).cloned().unwrap_or_default();
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&m.id))
                    .with_assignment(encode_assignment(&self.settings.topic, &mine)?))
            })
            .collect()
    }

    /// INCONSISTENT_GROUP_PROTOCOL: the group uses something we do not offer. Asks the
    /// coordinator what (DescribeGroups: Kafka names the protocol of a stable group), so
    /// that the error names both sides.
    fn inconsistent_protocol(&mut self, cluster: &mut Cluster, hint: Option<String>) -> KafkaError {
        let request = DescribeGroupsRequest::default()
            .with_groups(vec![GroupId(str_bytes(&self.settings.group_id))]);
        let described: Result<DescribeGroupsResponse, KafkaError> = self.coordinator_call(
            cluster,
            ApiKey::DescribeGroups,
            DESCRIBE_GROUPS_VERSIONS,
            |_| request.clone(),
            None,
        );
        let group = described.ok().and_then(|r| r.groups.into_iter().next());
        let nonempty = |s: &StrBytes| (!s.is_empty()).then(|| s.to_string());
        let protocol_type = group
            .as_ref()
            .and_then(|g| nonempty(&g.protocol_type))
            .filter(|t| t != "consumer");
        let group_uses = group
            .as_ref()
            .and_then(|g| nonempty(&g.protocol_data))
            .or(hint.filter(|h| !h.is_empty()));
        KafkaError::GroupProtocol {
            group: self.settings.group_id.clone(),
            offered: self
                .settings
                .assignors
                .iter()
                .map(|a| a.name().to_owned())
                .collect(),
            group_uses,
            protocol_type,
        }
    }

    /// Sends one request to the coordinator, finding it first if needed; on a connection
    /// error forgets the coordinator so the next call looks it up again.
    fn coordinator_call<Req, Resp>(
        &mut self,
        cluster: &mut Cluster,
        key: ApiKey,
        versions: (i16, i16),
        request: impl Fn(i16) -> Req,
        hold: Option<Duration>,
    ) -> Result<Resp, KafkaError>
    where
        Req: Encodable + kafka_protocol::protocol::HeaderVersion,
        Resp: Decodable + kafka_protocol::protocol::HeaderVersion + Throttled,
    {
        let addr = self.find_coordinator(cluster)?;
        let result = cluster.to(&addr).and_then(|conn: &mut Connection| {
            let version = conn.version(key, versions)?;
            let request = request(version);
            match hold {
                Some(t) => conn.call_with_timeout(key, version, &request, t),
                None => conn.call(key, version, &request),
            }
        });
        if let Err(e) = &result
            && (e.is_connection() || matches!(e, KafkaError::Protocol { .. }))
        {
            cluster.failed(&addr, e);
            self.coordinator = None;
        }
        result
    }

    fn find_coordinator(&mut self, cluster: &mut Cluster) -> Result<String, KafkaError> {
        if let Some(addr) = &self.coordinator {
            return Ok(addr.clone());
        }
        let conn = cluster.any()?;
        let addr = conn.addr().to_owned();
        let result = (|| {
            let version = conn.version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)?;
            let request = find_coordinator_request(&self.settings.group_id);
            conn.call::<_, FindCoordinatorResponse>(ApiKey::FindCoordinator, version, &request)
        })();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                cluster.failed(&addr, &e);
                return Err(e);
            }
        };
        check_code("FindCoordinator", response.error_code)?;
        let coordinator = format!("{}:{}", response.host.as_str(), response.port);
        cluster.remember_broker(response.node_id.0, coordinator.clone());
        self.coordinator = Some(coordinator.clone());
        Ok(coordinator)
    }

    /// Coordinator moved or is loading: forget it and fail retriably.
    fn check_coordinator_code(
        &mut self,
        cluster: &mut Cluster,
        what: &'static str,
        code: i16,
    ) -> Result<(), KafkaError> {
        if matches!(
            code,
            COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR
        ) {
            if let Some(addr) = self.coordinator.take() {
                cluster.drop_conn(&addr);
            }
            return Err(KafkaError::Broker { what, code });
        }
        Ok(())
    }

    /// Turns membership errors into `Rejoin`, forgetting what the coordinator no longer
    /// accepts; other codes become errors.
    fn membership_error(
        &mut self,
        cluster: &mut Cluster,
        what: &'static str,
        code: i16,
    ) -> Result<Heartbeat, KafkaError> {
        self.check_coordinator_code(cluster, what, code)?;
        match code {
            REBALANCE_IN_PROGRESS => Ok(Heartbeat::Rejoin("the group is rebalancing")),
            ILLEGAL_GENERATION => {
                self.generation = None;
                Ok(Heartbeat::Rejoin("our generation is stale"))
            }
            UNKNOWN_MEMBER_ID => {
                self.generation = None;
                self.member_id.clear();
                Ok(Heartbeat::Rejoin(
                    "the coordinator no longer knows our member id",
                ))
            }
            FENCED_INSTANCE_ID => {
                self.generation = None;
                Err(self.fenced())
            }
            code => Err(KafkaError::Broker { what, code }),
        }
    }

    fn can_retry_join(&mut self, cluster: &mut Cluster, e: &KafkaError) -> bool {
        match e {
            KafkaError::Broker { code, .. } => {
                let retry = matches!(
                    *code,
                    MEMBER_ID_REQUIRED
                        | REBALANCE_IN_PROGRESS
                        | UNKNOWN_MEMBER_ID
                        | ILLEGAL_GENERATION
                        | COORDINATOR_LOAD_IN_PROGRESS
                        | COORDINATOR_NOT_AVAILABLE
                        | NOT_COORDINATOR
                );
                if retry && *code != MEMBER_ID_REQUIRED && *code != REBALANCE_IN_PROGRESS {
                    // Give a moving or loading coordinator a moment.
                    std::thread::sleep(self.retry.next_delay());
                }
                retry
            }
            KafkaError::Io { .. } | KafkaError::Timeout { .. } | KafkaError::Unreachable { .. } => {
                cluster.drop_all();
                std::thread::sleep(self.retry.next_delay());
                true
            }
            _ => false,
        }
    }
}

/// Splits `partitions` among `members` (member ids) the way Kafka's range assignor does
/// for dynamic members: sorted by id, each a contiguous run, the first `len % members` one
/// partition more.
pub fn assign_range(
    members: &[String],
    partitions: &[Partition],
) -> BTreeMap<String, Vec<Partition>> {
    let members: Vec<Member> = members
        .iter()
        .map(|id| Member {
            id: id.clone(),
            instance_id: None,
            subscribed: true,
            owned: Vec::new(),
            generation: -1,
        })
        .collect();
    assignor::range(&members, partitions)
}

/// The OffsetCommit request we send; public so a test can encode and decode it.
pub fn encode_offset_commit(
    group_id: &str,
    generation: Generation,
    member_id: &str,
    topic: &str,
    offsets: &[(Partition, Offset)],
    version: i16,
) -> Result<Bytes, String> {
    let request = offset_commit_request(
        group_id, generation, member_id, None, topic, offsets, version,
    );
    let mut buf = BytesMut::new();
    request
        .encode(&mut buf, version)
        .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

/// The instance id where `version` has the field (from `since` on); a static member asks
/// for at least that version of JoinGroup, and every broker speaking it speaks the others'.
fn instance(instance_id: Option<&str>, version: i16, since: i16) -> Option<StrBytes> {
    instance_id.filter(|_| version >= since).map(str_bytes)
}

fn offset_commit_request(
    group_id: &str,
    generation: Generation,
    member_id: &str,
    instance_id: Option<&str>,
    topic: &str,
    offsets: &[(Partition, Offset)],
    version: i16,
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id_or_member_epoch(generation.0)
        .with_member_id(str_bytes(member_id))
        .with_group_instance_id(instance(instance_id, version, 7))
        // -1: keep the offsets as long as the broker's own retention says.
        .with_retention_time_ms(-1)
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p.0)
                                .with_committed_offset(o.0)
                                .with_committed_leader_epoch(-1)
                                .with_committed_metadata(Some(StrBytes::from_static_str("")))
                        })
                        .collect(),
                ),
        ])
}

fn heartbeat_request(
    group_id: &str,
    generation: Generation,
    member_id: &str,
    instance_id: Option<&str>,
    version: i16,
) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id(generation.0)
        .with_member_id(str_bytes(member_id))
        .with_group_instance_id(instance(instance_id, version, 3))
}

fn offset_fetch_request(
    group_id: &str,
    topic: &str,
    partitions: &[Partition],
) -> OffsetFetchRequest {
    OffsetFetchRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_topics(Some(vec![
            OffsetFetchRequestTopic::default()
                .with_name(TopicName(str_bytes(topic)))
                .with_partition_indexes(partitions.iter().map(|p| p.0).collect()),
        ]))
}

/// Versions 0-2 name one member; 3 and later take a list of identities (KIP-345), with
/// the instance id of a static member.
fn leave_request(
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
    version: i16,
) -> LeaveGroupRequest {
    let r = LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(group_id)));
    if version < 3 {
        r.with_member_id(str_bytes(member_id))
    } else {
        r.with_members(vec![
            MemberIdentity::default()
                .with_member_id(str_bytes(member_id))
                .with_group_instance_id(instance_id.map(str_bytes)),
        ])
    }
}

fn find_coordinator_request(group_id: &str) -> FindCoordinatorRequest {
    FindCoordinatorRequest::default()
        .with_key(str_bytes(group_id))
        .with_key_type(0)
}

/// The JoinGroup request: every assignor we offer, in our order of preference, each with
/// our subscription (the partitions we keep through this rebalance, and the generation we
/// got them in); the instance id from version 5 (a static member negotiates 5 or later).
fn join_request(
    settings: &GroupSettings,
    member_id: &str,
    owned: &[Partition],
    generation: i32,
    version: i16,
) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes(&settings.group_id)))
        .with_session_timeout_ms(millis(settings.session_timeout))
        .with_rebalance_timeout_ms(millis(settings.rebalance_timeout))
        .with_member_id(str_bytes(member_id))
        .with_group_instance_id(instance(settings.instance_id.as_deref(), version, 5))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(
            settings
                .assignors
                .iter()
                .map(|a| {
                    JoinGroupRequestProtocol::default()
                        .with_name(str_bytes(a.name()))
                        .with_metadata(subscription(&settings.topic, *a, owned, generation))
                })
                .collect(),
        )
}

/// The SyncGroup request at `version`: the instance id exists from version 3, the
/// protocol type and name from 5 (a field set where the version has none cannot be
/// encoded).
fn sync_request(
    group_id: &str,
    generation: Generation,
    member_id: &str,
    instance_id: Option<&str>,
    protocol: Assignor,
    assignments: Vec<SyncGroupRequestAssignment>,
    version: i16,
) -> SyncGroupRequest {
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id(generation.0)
        .with_member_id(str_bytes(member_id))
        .with_group_instance_id(instance(instance_id, version, 3))
        .with_assignments(assignments);
    if version >= 5 {
        request
            .with_protocol_type(Some(str_bytes("consumer")))
            .with_protocol_name(Some(str_bytes(protocol.name())))
    } else {
        request
    }
}

/// Our consumer-protocol subscription for `assignor` (version 3): the topic, the
/// partitions we own and the generation we got them in (what a cooperative-sticky leader
/// plans around), no rack. The user data is the Java client's: cooperative-sticky writes
/// the generation (4 bytes) for leaders that read subscriptions older than version 2;
/// range writes none (an empty value, not null: Kafka 0.9 cannot read a null one).
fn subscription(topic: &str, assignor: Assignor, owned: &[Partition], generation: i32) -> Bytes {
    let user_data = match assignor {
        Assignor::CooperativeSticky => Bytes::copy_from_slice(&generation.to_be_bytes()),
        Assignor::Range => Bytes::new(),
    };
    let owned = if owned.is_empty() {
        Vec::new()
    } else {
        vec![
            consumer_protocol_subscription::TopicPartition::default()
                .with_topic(TopicName(str_bytes(topic)))
                .with_partitions(owned.iter().map(|p| p.0).collect()),
        ]
    };
    let body = ConsumerProtocolSubscription::default()
        .with_topics(vec![str_bytes(topic)])
        .with_user_data(Some(user_data))
        .with_owned_partitions(owned)
        .with_generation_id(generation);
    let mut buf = BytesMut::new();
    buf.put_i16(SUBSCRIPTION_VERSION);
    // Encoding a plain struct into a growable buffer cannot fail.
    let _ = body.encode(&mut buf, SUBSCRIPTION_VERSION);
    buf.freeze()
}

/// What a member's subscription says about our topic.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Subscription {
    subscribed: bool,
    owned: Vec<Partition>,
    /// From the field (version 2+), else from cooperative-sticky's user data (the Java
    /// client's 4-byte generation), else -1.
    generation: i32,
}

fn decode_subscription(metadata: &Bytes, topic: &str) -> Result<Subscription, String> {
    let mut buf = metadata.clone();
    let version = read_version(&mut buf)?;
    // A newer version starts with the fields of version 3.
    let sub = ConsumerProtocolSubscription::decode(&mut buf, version.min(3))
        .map_err(|e| e.to_string())?;
    let generation = if version >= 2 {
        sub.generation_id
    } else {
        match sub.user_data.as_deref() {
            Some(&[a, b, c, d]) => i32::from_be_bytes([a, b, c, d]),
            _ => -1,
        }
    };
    Ok(Subscription {
        subscribed: sub.topics.iter().any(|t| t.as_str() == topic),
        owned: sub
            .owned_partitions
            .iter()
            .filter(|tp| tp.topic.0.as_str() == topic)
            .flat_map(|tp| tp.partitions.iter().map(|p| Partition(*p)))
            .collect(),
        generation,
    })
}

fn encode_assignment(topic: &str, partitions: &[Partition]) -> Result<Bytes, KafkaError> {
    let body = ConsumerProtocolAssignment::default().with_assigned_partitions(vec![
        consumer_protocol_assignment::TopicPartition::default()
            .with_topic(TopicName(str_bytes(topic)))
            .with_partitions(partitions.iter().map(|p| p.0).collect()),
    ]);
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    body.encode(&mut buf, 0).map_err(|e| KafkaError::Protocol {
        broker: String::new(),
        detail: format!("encoding an assignment: {e}"),
    })?;
    Ok(buf.freeze())
}

fn decode_assignment(data: &Bytes, topic: &str) -> Result<Vec<Partition>, KafkaError> {
    // An empty assignment (no bytes) is what a coordinator sends a member that got nothing.
    if data.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = data.clone();
    let decoded = read_version(&mut buf).and_then(|version| {
        ConsumerProtocolAssignment::decode(&mut buf, version.min(3)).map_err(|e| e.to_string())
    });
    let assignment = decoded.map_err(|detail| KafkaError::Protocol {
        broker: String::new(),
        detail: format!("the group leader sent an assignment we cannot read: {detail}"),
    })?;
    let mut mine: Vec<Partition> = assignment
        .assigned_partitions
        .iter()
        .filter(|tp| tp.topic.0.as_str() == topic)
        .flat_map(|tp| tp.partitions.iter().map(|p| Partition(*p)))
        .collect();
    mine.sort();
    Ok(mine)
}

fn read_version(buf: &mut Bytes) -> Result<i16, String> {
    if buf.len() < 2 {
        return Err("shorter than its version field".into());
    }
    let version = i16::from_be_bytes([buf[0], buf[1]]);
    let _ = buf.split_to(2);
    if version < 0 {
        return Err(format!("negative version {version}"));
    }
    Ok(version)
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(ids: &[i32]) -> Vec<Partition> {
        ids.iter().map(|i| Partition(*i)).collect()
    }

    #[test]
    fn range_assignment_splits_without_overlap() {
        let members = vec!["b".to_string(), "a".to_string()];
        let plan = assign_range(&members, &parts(&[0, 1, 2]));
        assert_eq!(plan["a"], parts(&[0, 1]));
        assert_eq!(plan["b"], parts(&[2]));
    }

    #[test]
    fn range_assignment_gives_nothing_to_extra_members() {
        let members: Vec<String> = (0..4).map(|i| format!("m{i}")).collect();
        let plan = assign_range(&members, &parts(&[0, 1]));
        let total: usize = plan.values().map(Vec::len).sum();
        assert_eq!(total, 2);
        assert_eq!(plan["m3"], Vec::<Partition>::new());
    }

    #[test]
    fn offset_commit_carries_generation_and_member_id() {
        for version in OFFSET_COMMIT_VERSIONS.0..=OFFSET_COMMIT_VERSIONS.1 {
            let bytes = encode_offset_commit(
                "provision-worker-group",
                Generation(7),
                "member-1",
                "provision-requests",
                &[(Partition(2), Offset(42))],
                version,
            )
            .unwrap();
            let decoded = OffsetCommitRequest::decode(&mut bytes.clone(), version).unwrap();
            assert_eq!(decoded.generation_id_or_member_epoch, 7, "v{version}");
            assert_eq!(decoded.member_id.as_str(), "member-1", "v{version}");
            assert_eq!(decoded.group_id.0.as_str(), "provision-worker-group");
            let p = &decoded.topics[0].partitions[0];
            assert_eq!((p.partition_index, p.committed_offset), (2, 42));
        }
    }

    /// Each request as we fill it encodes at every version we may negotiate, for a dynamic
    /// and a static member: a field set where a version has none cannot be encoded, and
    /// such a version must not be in range.
    #[test]
    fn every_group_request_encodes_at_every_version_we_negotiate() {
        fn check<R: Encodable>(what: &str, versions: (i16, i16), request: impl Fn(i16) -> R) {
            for v in versions.0..=versions.1 {
                let mut buf = BytesMut::new();
                if let Err(e) = request(v).encode(&mut buf, v) {
                    panic!("{what} v{v} cannot be encoded: {e}");
                }
            }
        }
        for instance_id in [None, Some("host-1")] {
            let settings = GroupSettings {
                group_id: "g".into(),
                topic: "t".into(),
                instance_id: instance_id.map(str::to_owned),
                assignors: Assignor::DEFAULT.to_vec(),
                session_timeout: Duration::from_secs(10),
                rebalance_timeout: Duration::from_secs(60),
                heartbeat_interval: Duration::from_secs(3),
                retry_backoff: BackoffSettings::RETRY,
            };
            let assignment = vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes("m"))
                    .with_assignment(encode_assignment("t", &parts(&[0])).unwrap()),
            ];
            let joins = if instance_id.is_some() {
                STATIC_JOIN_GROUP_VERSIONS
            } else {
                JOIN_GROUP_VERSIONS
            };
            check("FindCoordinator", FIND_COORDINATOR_VERSIONS, |_| {
                find_coordinator_request("g")
            });
            check("JoinGroup", joins, |v| {
                join_request(&settings, "m", &parts(&[1]), 4, v)
            });
            check("SyncGroup", SYNC_GROUP_VERSIONS, |v| {
                sync_request(
                    "g",
                    Generation(1),
                    "m",
                    instance_id,
                    Assignor::CooperativeSticky,
                    assignment.clone(),
                    v,
                )
            });
            check("Heartbeat", HEARTBEAT_VERSIONS, |v| {
                heartbeat_request("g", Generation(1), "m", instance_id, v)
            });
            check("LeaveGroup", LEAVE_GROUP_VERSIONS, |v| {
                leave_request("g", "m", instance_id, v)
            });
            check("OffsetFetch", OFFSET_FETCH_VERSIONS, |_| {
                offset_fetch_request("g", "t", &parts(&[0, 1]))
            });
            check("OffsetCommit", OFFSET_COMMIT_VERSIONS, |v| {
                let offsets = [(Partition(0), Offset(1))];
                offset_commit_request("g", Generation(1), "m", instance_id, "t", &offsets, v)
            });
            check("DescribeGroups", DESCRIBE_GROUPS_VERSIONS, |_| {
                DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes("g"))])
            });
        }
        // Kafka 2.1, the oldest broker we support, speaks JoinGroup 0-3 and SyncGroup 0-2;
        // static membership needs 2.3 (JoinGroup 5, SyncGroup 3, Heartbeat 3, OffsetCommit 7).
        assert!(JOIN_GROUP_VERSIONS.0 <= 3 && SYNC_GROUP_VERSIONS.0 <= 2);
        assert_eq!(STATIC_JOIN_GROUP_VERSIONS.0, 5);
    }

    /// A static member's instance id reaches the broker in every request that has the
    /// field, and the JoinGroup offers our assignors in order, each with our subscription.
    #[test]
    fn a_static_member_names_its_instance_and_offers_every_assignor_in_order() {
        let settings = GroupSettings {
            group_id: "g".into(),
            topic: "t".into(),
            instance_id: Some("edge-7".into()),
            assignors: vec![Assignor::CooperativeSticky, Assignor::Range],
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
            retry_backoff: BackoffSettings::RETRY,
        };
        let join = join_request(&settings, "", &parts(&[2, 5]), 9, 5);
        assert_eq!(join.group_instance_id.as_deref(), Some("edge-7"));
        let names: Vec<&str> = join.protocols.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["cooperative-sticky", "range"]);
        for p in &join.protocols {
            let sub = decode_subscription(&p.metadata, "t").unwrap();
            assert_eq!(
                sub,
                Subscription {
                    subscribed: true,
                    owned: parts(&[2, 5]),
                    generation: 9,
                }
            );
        }
        let hb = heartbeat_request("g", Generation(3), "m", Some("edge-7"), 3);
        assert_eq!(hb.group_instance_id.as_deref(), Some("edge-7"));
        assert_eq!(
            heartbeat_request("g", Generation(3), "m", Some("edge-7"), 2).group_instance_id,
            None
        );
        let commit = offset_commit_request("g", Generation(3), "m", Some("edge-7"), "t", &[], 7);
        assert_eq!(commit.group_instance_id.as_deref(), Some("edge-7"));
        let leave = leave_request("g", "m", Some("edge-7"), 3);
        assert_eq!(
            leave.members[0].group_instance_id.as_deref(),
            Some("edge-7")
        );
        let sync = sync_request(
            "g",
            Generation(3),
            "m",
            Some("edge-7"),
            Assignor::Range,
            vec![],
            5,
        );
        assert_eq!(sync.group_instance_id.as_deref(), Some("edge-7"));
        assert_eq!(sync.protocol_name.as_deref(), Some("range"));
    }

    #[test]
    fn assignment_roundtrips_through_the_consumer_protocol() {
        let bytes = encode_assignment("t", &parts(&[1, 4])).unwrap();
        assert_eq!(decode_assignment(&bytes, "t").unwrap(), parts(&[1, 4]));
        assert_eq!(decode_assignment(&bytes, "other").unwrap(), Vec::new());
        let sub = subscription("t", Assignor::Range, &[], -1);
        assert_eq!(
            decode_subscription(&sub, "t").unwrap(),
            Subscription {
                subscribed: true,
                owned: vec![],
                generation: -1
            }
        );
        assert!(!decode_subscription(&sub, "other").unwrap().subscribed);
    }

    /// Subscriptions as other clients write them, byte by byte from their sources:
    /// librdkafka (version 3: its sticky user data, owned partitions, generation, a null
    /// rack) and the Java client before 3.5 (version 1: owned partitions, the generation
    /// only in cooperative-sticky's 4-byte user data), and a version 0 one.
    #[test]
    fn subscriptions_of_librdkafka_and_the_java_client_are_read() {
        fn string(b: &mut BytesMut, s: &str) {
            b.put_i16(s.len() as i16);
            b.put_slice(s.as_bytes());
        }
        // librdkafka: rd_kafka_consumer_protocol_member_metadata_new.
        let mut b = BytesMut::new();
        b.put_i16(3);
        b.put_i32(2);
        string(&mut b, "other");
        string(&mut b, "t");
        let mut user = BytesMut::new(); // [previous_assignment] generation
        user.put_i32(1);
        string(&mut user, "t");
        user.put_i32(1);
        user.put_i32(3);
        user.put_i32(41);
        b.put_i32(user.len() as i32);
        b.put_slice(&user);
        b.put_i32(2); // owned: two topics
        string(&mut b, "other");
        b.put_i32(1);
        b.put_i32(0);
        string(&mut b, "t");
        b.put_i32(2);
        b.put_i32(3);
        b.put_i32(4);
        b.put_i32(41); // generation
        b.put_i16(-1); // rack: null
        assert_eq!(
            decode_subscription(&b.freeze(), "t").unwrap(),
            Subscription {
                subscribed: true,
                owned: parts(&[3, 4]),
                generation: 41
            }
        );
        // Java 2.4-3.4, cooperative-sticky: version 1, generation in the user data.
        let mut b = BytesMut::new();
        b.put_i16(1);
        b.put_i32(1);
        string(&mut b, "t");
        b.put_i32(4);
        b.put_i32(17);
        b.put_i32(1);
        string(&mut b, "t");
        b.put_i32(1);
        b.put_i32(0);
        assert_eq!(
            decode_subscription(&b.freeze(), "t").unwrap(),
            Subscription {
                subscribed: true,
                owned: parts(&[0]),
                generation: 17
            }
        );
        // Version 0, null user data (the Java client's range).
        let mut b = BytesMut::new();
        b.put_i16(0);
        b.put_i32(1);
        string(&mut b, "t");
        b.put_i32(-1);
        assert_eq!(
            decode_subscription(&b.freeze(), "t").unwrap(),
            Subscription {
                subscribed: true,
                owned: vec![],
                generation: -1
            }
        );
    }

    #[test]
    fn empty_assignment_means_no_partitions() {
        assert_eq!(decode_assignment(&Bytes::new(), "t").unwrap(), Vec::new());
    }
}
