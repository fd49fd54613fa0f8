//! Consumer-group membership and offset commits, on `kafka-protocol` messages.
//!
//! This is the classic ("eager") group protocol that every Kafka since 0.9 speaks and that
//! librdkafka and the Java client use by default: find the coordinator, JoinGroup (a first
//! join without a member id is answered with MEMBER_ID_REQUIRED and the id to use), the
//! leader computes a range assignment, SyncGroup hands it out, Heartbeat keeps the session,
//! LeaveGroup ends it. Every rebalance revokes all partitions before the new assignment.
//! Commits carry the current generation and member id, which real brokers require.
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FindCoordinatorRequest, FindCoordinatorResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse,
    SyncGroupRequest, SyncGroupResponse, TopicName,
    consumer_protocol_assignment::{self, ConsumerProtocolAssignment},
    consumer_protocol_subscription::ConsumerProtocolSubscription,
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
use crate::net::conn::Connection;
use crate::net::throttle::Throttled;
use crate::types::{Offset, Partition};

/// The generation of the group we were admitted to; commits must carry it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Generation(pub i32);

/// The assignor we offer. "range" is what librdkafka and the Java client offer too, so a
/// group can mix this client with others.
pub const ASSIGNOR: &str = "range";

const FIND_COORDINATOR_VERSIONS: (i16, i16) = (1, 3);
/// From 2: the first version with the rebalance timeout and throttle time that Kafka 2.1
/// (the oldest broker this client supports) answers; 4 and later add the member-id round
/// trip (KIP-394), which `join_once` handles when the broker uses it.
const JOIN_GROUP_VERSIONS: (i16, i16) = (2, 7);
const SYNC_GROUP_VERSIONS: (i16, i16) = (1, 5);
const HEARTBEAT_VERSIONS: (i16, i16) = (1, 4);
const LEAVE_GROUP_VERSIONS: (i16, i16) = (1, 4);
const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 8);
const OFFSET_FETCH_VERSIONS: (i16, i16) = (1, 7);

// Kafka error codes the group side reacts to.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;

#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub group_id: String,
    pub topic: String,
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
    /// The group is rebalancing or dropped us: revoke everything and join again.
    Rejoin(&'static str),
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
    /// The assignor the coordinator picked in the last join.
    protocol: String,
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
            protocol: ASSIGNOR.to_owned(),
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

    /// Joins (or rejoins) the group and returns our share of `partitions`. Blocks for as long
    /// as the coordinator holds the join (up to the rebalance timeout, ~3 s on tansu).
    /// `partitions` is what the topic has now; only the leader uses it.
    pub fn join(
        &mut self,
        cluster: &mut Cluster,
        partitions: &[Partition],
    ) -> Result<Vec<Partition>, KafkaError> {
        self.generation = None;
        let started = Instant::now();
        // A join can be bounced a few times (member id round trip, a rebalance started by
        // another member mid-join, a coordinator move); keep going within a deadline.
        let deadline = self.settings.rebalance_timeout + self.settings.session_timeout;
        loop {
            match self.join_once(cluster, partitions) {
                Ok(mine) => {
                    self.retry.reset();
                    self.next_heartbeat = Instant::now() + self.settings.heartbeat_interval;
                    return Ok(mine);
                }
                Err(e) if started.elapsed() < deadline && self.can_retry_join(cluster, &e) => {
                    log::debug!("retrying group join: {e}");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends a heartbeat when one is due. Errors are connection problems the caller logs and
    /// retries; membership problems come back as `Heartbeat::Rejoin`.
    pub fn heartbeat_if_due(&mut self, cluster: &mut Cluster) -> Result<Heartbeat, KafkaError> {
        let Some(generation) = self.generation else {
            return Ok(Heartbeat::Rejoin("not a member of the group"));
        };
        let now = Instant::now();
        if now < self.next_heartbeat {
            return Ok(Heartbeat::NotDue);
        }
        self.next_heartbeat = now + self.settings.heartbeat_interval;
        let request = heartbeat_request(&self.settings.group_id, generation, &self.member_id);
        // Past the session the coordinator has dropped us anyway: a heartbeat waits for its
        // answer at most that long, then the coordinator is looked up again.
        let deadline = cluster.timeout().min(self.settings.session_timeout);
        let response: HeartbeatResponse = match self.coordinator_call(
            cluster,
            ApiKey::Heartbeat,
            HEARTBEAT_VERSIONS,
            |_| request.clone(),
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
        let request = offset_commit_request(
            &self.settings.group_id,
            generation,
            &self.member_id,
            &self.settings.topic,
            offsets,
        );
        let response: OffsetCommitResponse = self.coordinator_call(
            cluster,
            ApiKey::OffsetCommit,
            OFFSET_COMMIT_VERSIONS,
            |_| request.clone(),
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
    /// session timeout. Best effort: errors are returned for logging only.
    pub fn leave(&mut self, cluster: &mut Cluster) -> Result<(), KafkaError> {
        if self.member_id.is_empty() {
            return Ok(());
        }
        let member_id = self.member_id.clone();
        let group_id = self.settings.group_id.clone();
        let request = move |version: i16| leave_request(&group_id, &member_id, version);
        let response: LeaveGroupResponse = self.coordinator_call(
            cluster,
            ApiKey::LeaveGroup,
            LEAVE_GROUP_VERSIONS,
            request,
            None,
        )?;
        self.generation = None;
        self.member_id.clear();
        check_code("LeaveGroup", response.error_code)
    }

    fn join_once(
        &mut self,
        cluster: &mut Cluster,
        partitions: &[Partition],
    ) -> Result<Vec<Partition>, KafkaError> {
        let request = join_request(&self.settings, &self.member_id);
        // The coordinator holds a join until every member has rejoined, at most the
        // rebalance timeout; the read deadline must outlast that.
        let hold = self.settings.rebalance_timeout + Duration::from_secs(5);
        let response: JoinGroupResponse = self.coordinator_call(
            cluster,
            ApiKey::JoinGroup,
            JOIN_GROUP_VERSIONS,
            |_| request.clone(),
            Some(hold),
        )?;
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
        if let Some(p) = &response.protocol_name {
            self.protocol = p.to_string();
        }

        let assignments = if response.leader == response.member_id {
            self.leader_assignments(&response, partitions)?
        } else {
            Vec::new()
        };
        let group_id = self.settings.group_id.clone();
        let member_id = self.member_id.clone();
        let protocol = self.protocol.clone();
        let request = |version| {
            sync_request(
                &group_id,
                generation,
                &member_id,
                &protocol,
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
        if response.error_code != 0 {
            self.check_coordinator_code(cluster, "SyncGroup", response.error_code)?;
            return self
                .membership_error(cluster, "SyncGroup", response.error_code)
                .and(Err(KafkaError::Broker {
                    what: "SyncGroup",
                    code: response.error_code,
                }));
        }
        self.generation = Some(generation);
        decode_assignment(&response.assignment, &self.settings.topic)
    }

    /// The leader's job: split the topic's partitions among the members that subscribe to it.
    fn leader_assignments(
        &self,
        response: &JoinGroupResponse,
        partitions: &[Partition],
    ) -> Result<Vec<SyncGroupRequestAssignment>, KafkaError> {
        let mut subscribers = Vec::new();
        let mut everyone = Vec::new();
        for member in &response.members {
            let topics =
                decode_subscription(&member.metadata).map_err(|detail| KafkaError::Protocol {
                    broker: self.coordinator.clone().unwrap_or_default(),
                    detail: format!(
                        "member {} sent a subscription we cannot read: {detail}",
                        member.member_id.as_str()
                    ),
                })?;
            everyone.push(member.member_id.to_string());
            if topics.iter().any(|t| t == &self.settings.topic) {
                subscribers.push(member.member_id.to_string());
            }
        }
        let plan = assign_range(&subscribers, partitions);
        everyone
            .into_iter()
            .map(|member| {
                let mine = plan.get(&member).cloned().unwrap_or_default();
                Ok(SyncGroupRequestAssignment::default()
                    .with_member_id(str_bytes(&member))
                    .with_assignment(encode_assignment(&self.settings.topic, &mine)?))
            })
            .collect()
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

/// Splits `partitions` among `members` the way Kafka's range assignor does: members sorted
/// by id, each gets a contiguous run, the first `len % members` one partition more.
pub fn assign_range(
    members: &[String],
    partitions: &[Partition],
) -> BTreeMap<String, Vec<Partition>> {
    let mut members: Vec<&String> = members.iter().collect();
    members.sort();
    members.dedup();
    let mut partitions = partitions.to_vec();
    partitions.sort();
    let mut plan = BTreeMap::new();
    if members.is_empty() {
        return plan;
    }
    let each = partitions.len() / members.len();
    let extra = partitions.len() % members.len();
    let mut start = 0;
    for (i, member) in members.into_iter().enumerate() {
        let count = each + usize::from(i < extra);
        plan.insert(member.clone(), partitions[start..start + count].to_vec());
        start += count;
    }
    plan
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
    let request = offset_commit_request(group_id, generation, member_id, topic, offsets);
    let mut buf = BytesMut::new();
    request
        .encode(&mut buf, version)
        .map_err(|e| e.to_string())?;
    Ok(buf.freeze())
}

fn offset_commit_request(
    group_id: &str,
    generation: Generation,
    member_id: &str,
    topic: &str,
    offsets: &[(Partition, Offset)],
) -> OffsetCommitRequest {
    OffsetCommitRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id_or_member_epoch(generation.0)
        .with_member_id(str_bytes(member_id))
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

fn heartbeat_request(group_id: &str, generation: Generation, member_id: &str) -> HeartbeatRequest {
    HeartbeatRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id(generation.0)
        .with_member_id(str_bytes(member_id))
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

/// Versions 0-2 name one member; 3 and later take a list (KIP-345).
fn leave_request(group_id: &str, member_id: &str, version: i16) -> LeaveGroupRequest {
    let r = LeaveGroupRequest::default().with_group_id(GroupId(str_bytes(group_id)));
    if version < 3 {
        r.with_member_id(str_bytes(member_id))
    } else {
        r.with_members(vec![
            MemberIdentity::default().with_member_id(str_bytes(member_id)),
        ])
    }
}

fn find_coordinator_request(group_id: &str) -> FindCoordinatorRequest {
    FindCoordinatorRequest::default()
        .with_key(str_bytes(group_id))
        .with_key_type(0)
}

/// The JoinGroup request; the same at every version we speak.
fn join_request(settings: &GroupSettings, member_id: &str) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(GroupId(str_bytes(&settings.group_id)))
        .with_session_timeout_ms(millis(settings.session_timeout))
        .with_rebalance_timeout_ms(millis(settings.rebalance_timeout))
        .with_member_id(str_bytes(member_id))
        .with_protocol_type(str_bytes("consumer"))
        .with_protocols(vec![
            JoinGroupRequestProtocol::default()
                .with_name(str_bytes(ASSIGNOR))
                .with_metadata(subscription(&settings.topic)),
        ])
}

/// The SyncGroup request at `version`: the protocol type and name exist from version 5
/// on (a field set where the version has none cannot be encoded).
fn sync_request(
    group_id: &str,
    generation: Generation,
    member_id: &str,
    protocol: &str,
    assignments: Vec<SyncGroupRequestAssignment>,
    version: i16,
) -> SyncGroupRequest {
    let request = SyncGroupRequest::default()
        .with_group_id(GroupId(str_bytes(group_id)))
        .with_generation_id(generation.0)
        .with_member_id(str_bytes(member_id))
        .with_assignments(assignments);
    if version >= 5 {
        request
            .with_protocol_type(Some(str_bytes("consumer")))
            .with_protocol_name(Some(str_bytes(protocol)))
    } else {
        request
    }
}

/// Consumer-protocol subscription (version 0): just our topic.
fn subscription(topic: &str) -> Bytes {
    let body = ConsumerProtocolSubscription::default().with_topics(vec![str_bytes(topic)]);
    let mut buf = BytesMut::new();
    buf.put_i16(0);
    // Encoding a plain struct into a growable buffer cannot fail.
    let _ = body.encode(&mut buf, 0);
    buf.freeze()
}

fn decode_subscription(metadata: &Bytes) -> Result<Vec<String>, String> {
    let mut buf = metadata.clone();
    let version = read_version(&mut buf)?;
    let sub = ConsumerProtocolSubscription::decode(&mut buf, version.min(3))
        .map_err(|e| e.to_string())?;
    Ok(sub.topics.iter().map(|t| t.to_string()).collect())
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

    /// Each request as we fill it encodes at every version we may negotiate: a field set
    /// where a version has none cannot be encoded, and such a version must not be in range.
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
        let settings = GroupSettings {
            group_id: "g".into(),
            topic: "t".into(),
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
        check("FindCoordinator", FIND_COORDINATOR_VERSIONS, |_| {
            find_coordinator_request("g")
        });
        check("JoinGroup", JOIN_GROUP_VERSIONS, |_| {
            join_request(&settings, "m")
        });
        check("SyncGroup", SYNC_GROUP_VERSIONS, |v| {
            sync_request("g", Generation(1), "m", ASSIGNOR, assignment.clone(), v)
        });
        check("Heartbeat", HEARTBEAT_VERSIONS, |_| {
            heartbeat_request("g", Generation(1), "m")
        });
        check("LeaveGroup", LEAVE_GROUP_VERSIONS, |v| {
            leave_request("g", "m", v)
        });
        check("OffsetFetch", OFFSET_FETCH_VERSIONS, |_| {
            offset_fetch_request("g", "t", &parts(&[0, 1]))
        });
        check("OffsetCommit", OFFSET_COMMIT_VERSIONS, |_| {
            offset_commit_request("g", Generation(1), "m", "t", &[(Partition(0), Offset(1))])
        });
        // Kafka 2.1, the oldest broker we support, speaks JoinGroup 0-3 and SyncGroup 0-2.
        assert!(JOIN_GROUP_VERSIONS.0 <= 3 && SYNC_GROUP_VERSIONS.0 <= 2);
    }

    #[test]
    fn assignment_roundtrips_through_the_consumer_protocol() {
        let bytes = encode_assignment("t", &parts(&[1, 4])).unwrap();
        assert_eq!(decode_assignment(&bytes, "t").unwrap(), parts(&[1, 4]));
        assert_eq!(decode_assignment(&bytes, "other").unwrap(), Vec::new());
        assert_eq!(decode_subscription(&subscription("t")).unwrap(), vec!["t"]);
    }

    #[test]
    fn empty_assignment_means_no_partitions() {
        assert_eq!(decode_assignment(&Bytes::new(), "t").unwrap(), Vec::new());
    }
}
