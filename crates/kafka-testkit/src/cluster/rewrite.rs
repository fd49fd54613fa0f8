//! What one broker of the fake cluster does with a request, and with tansu's answer to it.
//!
//! Pure: a request frame and a [`Snapshot`] of the cluster in, a [`Route`] out; an answer
//! frame in, the rewritten frame out. The connection threads in `cluster.rs` do the I/O.
//! Frames are whole Kafka frames, their 4-byte size included. Requests and answers are
//! decoded and encoded with kafka-protocol; an API this module does not need to touch is
//! forwarded byte for byte.
use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::MetadataResponseBroker;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, CreateTopicsResponse, DescribeClusterResponse,
    DescribeGroupsRequest, DescribeGroupsResponse, FetchRequest, FetchResponse,
    FindCoordinatorResponse, HeartbeatResponse, InitProducerIdResponse, JoinGroupResponse,
    LeaveGroupResponse, ListGroupsResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataResponse, OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest,
    OffsetFetchResponse, ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader,
    SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Message, StrBytes};

use super::{Placement, VersionCaps};
use crate::legacy::MessageSet;

/// The partition moved to another broker (or this broker never led it).
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// A group request reached a broker that is not the group's coordinator.
pub const NOT_COORDINATOR: i16 = 16;
/// The client's leader epoch is older than the partition's.
pub const FENCED_LEADER_EPOCH: i16 = 74;
/// The client's leader epoch is newer than this broker knows.
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
const UNSUPPORTED_VERSION: i16 = 35;

/// The host every broker of the cluster advertises.
const HOST: &str = "127.0.0.1";

/// The cluster as one broker sees it at one moment (taken under the cluster's lock, used
/// without it).
#[derive(Clone, Debug)]
pub(super) struct Snapshot {
    /// The broker answering.
    pub me: i32,
    /// Each broker's port: broker `i + 1` listens on `ports[i]`.
    pub ports: Vec<u16>,
    /// Partitions whose leader the test has set; every other follows the default.
    pub placed: HashMap<(String, i32), Placement>,
    pub coordinator: i32,
    /// Legacy message sets served in place of tansu's records, by partition.
    pub legacy: HashMap<(String, i32), Vec<Arc<MessageSet>>>,
    /// The throttle this broker puts into its answers now (0: none).
    pub throttle_ms: i32,
    /// An older broker's ApiVersions answer, if the test narrowed the versions.
    pub caps: Option<VersionCaps>,
}

/// What to do with a request.
#[derive(Debug)]
pub(super) enum Route {
    /// Send `frame` to tansu and rewrite its answer with `pending`.
    Forward { frame: Vec<u8>, pending: Pending },
    /// Send `frame` to tansu; no answer comes (Produce with acks=0).
    ForwardOnly(Vec<u8>),
    /// Answer in the broker's place; tansu never sees the request.
    Answer(Vec<u8>),
    /// Nothing to send and nothing to answer (an acks=0 Produce refused whole).
    Drop,
}

/// What the answer to a forwarded request needs from its request.
#[derive(Debug)]
pub(super) struct Pending {
    pub key: i16,
    pub version: i16,
    /// Partitions refused before forwarding: (topic, partition, error code), added to the
    /// answer.
    refused: Vec<(String, i32, i16)>,
    /// Each forwarded Fetch partition's fetch offset, for legacy message sets.
    fetch_offsets: HashMap<(String, i32), i64>,
}

/// A request routed: where it goes, and the error codes the broker gave in tansu's place
/// (one per refused partition, or one for a refused request).
pub(super) struct Routed {
    pub route: Route,
    pub injected: Vec<i16>,
}

/// An answer rewritten; `throttled` when it carries the broker's throttle time.
pub(super) struct Rewritten {
    pub frame: Vec<u8>,
    pub throttled: bool,
}

impl Snapshot {
    /// Who leads `partition` of `topic`, and in which epoch.
    pub fn placement(&self, topic: &str, partition: i32) -> Placement {
        self.placed
            .get(&(topic.to_owned(), partition))
            .copied()
            .unwrap_or_else(|| Placement::default_for(partition, self.ports.len()))
    }

    /// The broker's answer to a partition request carrying the client's `epoch` (-1: none),
    /// in the order a Kafka broker checks: leadership (this emulation has no followers that
    /// serve reads), then the epoch.
    fn check(&self, topic: &str, partition: i32, epoch: i32) -> Result<(), i16> {
        let place = self.placement(topic, partition);
        if place.leader != self.me {
            Err(NOT_LEADER_OR_FOLLOWER)
        } else if epoch >= 0 && epoch < place.epoch {
            Err(FENCED_LEADER_EPOCH)
        } else if epoch > place.epoch {
            Err(UNKNOWN_LEADER_EPOCH)
        } else {
            Ok(())
        }
    }

    /// The replica list of a partition led by `leader`: every broker, leader first (one
    /// tansu holds every partition, so every broker is "in sync").
    fn replicas(&self, leader: i32) -> Vec<BrokerId> {
        let n = self.ports.len() as i32;
        (0..n).map(|i| BrokerId((leader - 1 + i) % n + 1)).collect()
    }

    fn port(&self, broker: i32) -> i32 {
        i32::from(self.ports[(broker - 1) as usize])
    }
}

impl Pending {
    fn new(key: i16, version: i16) -> Pending {
        Pending {
            key,
            version,
            refused: Vec::new(),
            fetch_offsets: HashMap::new(),
        }
    }

    /// A request forwarded as it is (nothing refused in it).
    pub fn forwarded(key: i16, version: i16) -> Pending {
        Pending::new(key, version)
    }

    fn injected(&self) -> Vec<i16> {
        self.refused.iter().map(|r| r.2).collect()
    }
}

/// (API key, version) of a request frame, or of nothing when the frame is too short.
pub(super) fn api_of(frame: &[u8]) -> Option<(i16, i16)> {
    let b = frame.get(4..8)?;
    Some((
        i16::from_be_bytes([b[0], b[1]]),
        i16::from_be_bytes([b[2], b[3]]),
    ))
}

/// Decides what broker `snap.me` does with the request `frame`.
pub(super) fn route(frame: &[u8], snap: &Snapshot) -> Result<Routed, String> {
    let (key, version) = api_of(frame).ok_or("a request frame shorter than its header")?;
    let forward = || Routed {
        route: Route::Forward {
            frame: frame.to_vec(),
            pending: Pending::new(key, version),
        },
        injected: Vec::new(),
    };
    let Ok(api) = ApiKey::try_from(key) else {
        return Ok(forward());
    };
    match api {
        ApiKey::Fetch => fetch(frame, version, snap),
        ApiKey::ListOffsets => list_offsets(frame, version, snap),
        ApiKey::Produce => produce(frame, version, snap),
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::DescribeGroups
            if snap.me != snap.coordinator =>
        {
            let answer = not_coordinator(api, frame, version, snap)?;
            Ok(Routed {
                route: Route::Answer(answer),
                injected: vec![NOT_COORDINATOR],
            })
        }
        _ => Ok(forward()),
    }
}

/// Rewrites tansu's answer `frame` to a request routed with `pending`.
pub(super) fn rewrite(
    frame: &[u8],
    pending: &Pending,
    snap: &Snapshot,
) -> Result<Rewritten, String> {
    let version = pending.version;
    let throttle = snap.throttle_ms;
    let plain = |frame: &[u8]| Rewritten {
        frame: frame.to_vec(),
        throttled: false,
    };
    let Ok(api) = ApiKey::try_from(pending.key) else {
        return Ok(plain(frame));
    };
    let frame = match api {
        ApiKey::ApiVersions => return api_versions(frame, version, snap.caps),
        ApiKey::Metadata => edit(frame, version, |r: &mut MetadataResponse| {
            metadata(r, version, snap);
            r.throttle_time_ms = throttle;
        })?,
        ApiKey::FindCoordinator => edit(frame, version, |r: &mut FindCoordinatorResponse| {
            find_coordinator(r, version, snap);
            r.throttle_time_ms = throttle;
        })?,
        ApiKey::DescribeCluster => edit(frame, version, |r: &mut DescribeClusterResponse| {
            r.brokers = (1..=snap.ports.len() as i32)
                .map(|id| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(StrBytes::from_static_str(HOST))
                        .with_port(snap.port(id))
                })
                .collect();
            r.controller_id = BrokerId(1);
            r.throttle_time_ms = throttle;
        })?,
        ApiKey::Fetch => edit(frame, version, |r: &mut FetchResponse| {
            finish_fetch(r, pending, snap);
        })?,
        ApiKey::Produce if !pending.refused.is_empty() || throttle > 0 => {
            edit(frame, version, |r: &mut ProduceResponse| {
                finish_produce(r, pending, snap);
            })?
        }
        ApiKey::ListOffsets if !pending.refused.is_empty() || throttle > 0 => {
            edit(frame, version, |r: &mut ListOffsetsResponse| {
                finish_list_offsets(r, pending, snap);
            })?
        }
        _ if throttle > 0 => match set_throttle(api, frame, version, throttle)? {
            Some(frame) => frame,
            None => return Ok(plain(frame)),
        },
        _ => return Ok(plain(frame)),
    };
    Ok(Rewritten {
        frame,
        throttled: throttle > 0,
    })
}

// ------------------------------------------------------------------------------------
// Requests

fn fetch(frame: &[u8], version: i16, snap: &Snapshot) -> Result<Routed, String> {
    let (header, mut request) = decode_request::<FetchRequest>(frame, version)?;
    let mut pending = Pending::new(ApiKey::Fetch as i16, version);
    for t in &mut request.topics {
        let topic = t.topic.0.to_string();
        t.partitions.retain_mut(|p| {
            match snap.check(&topic, p.partition, p.current_leader_epoch) {
                Ok(()) => {
                    // The proxy checked the epoch; tansu's own epochs are not the cluster's.
                    p.current_leader_epoch = -1;
                    p.last_fetched_epoch = -1;
                    pending
                        .fetch_offsets
                        .insert((topic.clone(), p.partition), p.fetch_offset);
                    true
                }
                Err(code) => {
                    pending.refused.push((topic.clone(), p.partition, code));
                    false
                }
            }
        });
    }
    request.topics.retain(|t| !t.partitions.is_empty());
    // tansu 0.6 answers a fetch with max_wait_ms 0 with no partitions at all, where Kafka
    // returns what it has at once: 1 ms is the nearest tansu does right.
    request.max_wait_ms = request.max_wait_ms.max(1);
    let injected = pending.injected();
    if pending.refused.is_empty() {
        let frame = encode_request(&header, &request, version)?;
        return Ok(Routed {
            route: Route::Forward { frame, pending },
            injected,
        });
    }
    if request.topics.is_empty() {
        let mut answer = FetchResponse::default();
        finish_fetch(&mut answer, &pending, snap);
        let frame = encode_answer(header.correlation_id, &answer, version)?;
        return Ok(Routed {
            route: Route::Answer(frame),
            injected,
        });
    }
    // A broker answers a fetch with an erroneous partition at once, without waiting for
    // data on the others (1 ms: see above).
    request.max_wait_ms = 1;
    let frame = encode_request(&header, &request, version)?;
    Ok(Routed {
        route: Route::Forward { frame, pending },
        injected,
    })
}

fn list_offsets(frame: &[u8], version: i16, snap: &Snapshot) -> Result<Routed, String> {
    let (header, mut request) = decode_request::<ListOffsetsRequest>(frame, version)?;
    let mut pending = Pending::new(ApiKey::ListOffsets as i16, version);
    for t in &mut request.topics {
        let topic = t.name.0.to_string();
        t.partitions.retain_mut(|p| {
            match snap.check(&topic, p.partition_index, p.current_leader_epoch) {
                Ok(()) => {
                    p.current_leader_epoch = -1;
                    true
                }
                Err(code) => {
                    pending
                        .refused
                        .push((topic.clone(), p.partition_index, code));
                    false
                }
            }
        });
    }
    request.topics.retain(|t| !t.partitions.is_empty());
    let injected = pending.injected();
    if !pending.refused.is_empty() && request.topics.is_empty() {
        let mut answer = ListOffsetsResponse::default();
        finish_list_offsets(&mut answer, &pending, snap);
        let frame = encode_answer(header.correlation_id, &answer, version)?;
        return Ok(Routed {
            route: Route::Answer(frame),
            injected,
        });
    }
    let frame = encode_request(&header, &request, version)?;
    Ok(Routed {
        route: Route::Forward { frame, pending },
        injected,
    })
}

fn produce(frame: &[u8], version: i16, snap: &Snapshot) -> Result<Routed, String> {
    let (header, mut request) = decode_request::<ProduceRequest>(frame, version)?;
    let mut pending = Pending::new(ApiKey::Produce as i16, version);
    for t in &mut request.topic_data {
        let topic = t.name.0.to_string();
        // Refused partitions are taken out of the request: a broker that does not lead a
        // partition never writes its records.
        t.partition_data
            .retain(|p| match snap.check(&topic, p.index, -1) {
                Ok(()) => true,
                Err(code) => {
                    pending.refused.push((topic.clone(), p.index, code));
                    false
                }
            });
    }
    request.topic_data.retain(|t| !t.partition_data.is_empty());
    let injected = pending.injected();
    let nothing_left = request.topic_data.is_empty() && !pending.refused.is_empty();
    let route = match (request.acks == 0, nothing_left) {
        (true, true) => Route::Drop,
        (true, false) => Route::ForwardOnly(encode_request(&header, &request, version)?),
        (false, true) => {
            let mut answer = ProduceResponse::default();
            finish_produce(&mut answer, &pending, snap);
            Route::Answer(encode_answer(header.correlation_id, &answer, version)?)
        }
        (false, false) => Route::Forward {
            frame: encode_request(&header, &request, version)?,
            pending,
        },
    };
    Ok(Routed { route, injected })
}

/// NOT_COORDINATOR in the shape of `api`'s answer, as a broker that is not the group's
/// coordinator gives it.
fn not_coordinator(
    api: ApiKey,
    frame: &[u8],
    version: i16,
    snap: &Snapshot,
) -> Result<Vec<u8>, String> {
    let code = NOT_COORDINATOR;
    let throttle = snap.throttle_ms;
    let correlation_id = |frame: &[u8]| -> Result<i32, String> {
        let b = frame
            .get(8..12)
            .ok_or("a request frame shorter than its header")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    match api {
        ApiKey::JoinGroup => {
            let mut r = JoinGroupResponse::default()
                .with_error_code(code)
                .with_throttle_time_ms(throttle);
            // Null from v7 (nullable there), empty before, as Kafka sends it.
            r.protocol_name = (version < 7).then(StrBytes::default);
            encode_answer(correlation_id(frame)?, &r, version)
        }
        ApiKey::SyncGroup => {
            let r = SyncGroupResponse::default()
                .with_error_code(code)
                .with_throttle_time_ms(throttle);
            encode_answer(correlation_id(frame)?, &r, version)
        }
        ApiKey::Heartbeat => {
            let r = HeartbeatResponse::default()
                .with_error_code(code)
                .with_throttle_time_ms(throttle);
            encode_answer(correlation_id(frame)?, &r, version)
        }
        ApiKey::LeaveGroup => {
            let r = LeaveGroupResponse::default()
                .with_error_code(code)
                .with_throttle_time_ms(throttle);
            encode_answer(correlation_id(frame)?, &r, version)
        }
        ApiKey::OffsetCommit => {
            let (header, request) = decode_request::<OffsetCommitRequest>(frame, version)?;
            let topics = request
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
            let r = OffsetCommitResponse::default()
                .with_topics(topics)
                .with_throttle_time_ms(throttle);
            encode_answer(header.correlation_id, &r, version)
        }
        ApiKey::OffsetFetch => {
            let (header, request) = decode_request::<OffsetFetchRequest>(frame, version)?;
            let mut r = OffsetFetchResponse::default().with_throttle_time_ms(throttle);
            if version >= 8 {
                r.groups = request
                    .groups
                    .iter()
                    .map(|g| {
                        OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id.clone())
                            .with_error_code(code)
                    })
                    .collect();
            } else if version >= 2 {
                r.error_code = code;
            } else {
                // v1 has no top-level error: each partition asked for carries it.
                r.topics = request
                    .topics
                    .iter()
                    .flatten()
                    .map(|t| {
                        OffsetFetchResponseTopic::default()
                            .with_name(t.name.clone())
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|&p| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_error_code(code)
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
            }
            encode_answer(header.correlation_id, &r, version)
        }
        ApiKey::DescribeGroups => {
            let (header, request) = decode_request::<DescribeGroupsRequest>(frame, version)?;
            let groups = request
                .groups
                .iter()
                .map(|g| {
                    DescribedGroup::default()
                        .with_group_id(g.clone())
                        .with_error_code(code)
                })
                .collect();
            let r = DescribeGroupsResponse::default()
                .with_groups(groups)
                .with_throttle_time_ms(throttle);
            encode_answer(header.correlation_id, &r, version)
        }
        other => Err(format!("no NOT_COORDINATOR answer for {other:?}")),
    }
}

// ------------------------------------------------------------------------------------
// Answers

/// The lowest and highest version of each API the cluster offers, where tansu's own range
/// does not do: the floors are where kafka-protocol starts decoding (the floors Kafka 4.0
/// keeps as well, KIP-896), the caps keep topics named by name (Fetch v13, Produce v13,
/// OffsetCommit and OffsetFetch v10 name them by id). Every Kafka 2.1+ client speaks a
/// version inside these ranges. `None`: the API is not offered at all (KIP-848's consumer
/// group protocol: the proxy would have to route it to the coordinator; clients fall back
/// to the classic protocol).
fn offered(key: i16, tansu_min: i16, tansu_max: i16) -> Option<(i16, i16)> {
    let (min, max) = match ApiKey::try_from(key) {
        Ok(ApiKey::Produce) => (3, 12),
        Ok(ApiKey::Fetch) => (4, 12),
        Ok(ApiKey::ListOffsets) => range::<ListOffsetsRequest>(),
        Ok(ApiKey::OffsetCommit) => (2, 9),
        Ok(ApiKey::OffsetFetch) => (1, 9),
        Ok(ApiKey::Metadata) => range::<MetadataResponse>(),
        Ok(ApiKey::FindCoordinator) => range::<FindCoordinatorResponse>(),
        Ok(ApiKey::DescribeCluster) => range::<DescribeClusterResponse>(),
        Ok(ApiKey::JoinGroup) => range::<JoinGroupResponse>(),
        Ok(ApiKey::SyncGroup) => range::<SyncGroupResponse>(),
        Ok(ApiKey::Heartbeat) => range::<HeartbeatResponse>(),
        Ok(ApiKey::LeaveGroup) => range::<LeaveGroupResponse>(),
        Ok(ApiKey::DescribeGroups) => range::<DescribeGroupsResponse>(),
        Ok(ApiKey::ConsumerGroupHeartbeat | ApiKey::ConsumerGroupDescribe) => return None,
        _ => (tansu_min, tansu_max),
    };
    let (min, max) = (min.max(tansu_min), max.min(tansu_max));
    (min <= max).then_some((min, max))
}

/// `range` as an older broker (`caps`) offers it; `None` when that broker had no such API
/// or only versions below the range.
fn older(caps: Option<VersionCaps>, key: i16, (min, max): (i16, i16)) -> Option<(i16, i16)> {
    let Some(caps) = caps else {
        return Some((min, max));
    };
    if key > caps.highest_key {
        return None;
    }
    let max = caps
        .caps
        .iter()
        .find(|(api, _)| *api as i16 == key)
        .map_or(max, |(_, cap)| max.min(*cap));
    (min <= max).then_some((min, max))
}

fn range<M: Message>() -> (i16, i16) {
    (M::VERSIONS.min, M::VERSIONS.max)
}

fn api_versions(
    frame: &[u8],
    version: i16,
    caps: Option<VersionCaps>,
) -> Result<Rewritten, String> {
    let passed = Rewritten {
        frame: frame.to_vec(),
        throttled: false,
    };
    // An unsupported ApiVersions version is answered in v0's format with only the error
    // code that matters: passed on as it is, the client retries with a lower version.
    if frame.get(8..10) == Some(&UNSUPPORTED_VERSION.to_be_bytes()[..]) {
        return Ok(passed);
    }
    let frame = edit(frame, version, |r: &mut ApiVersionsResponse| {
        r.api_keys.retain_mut(|a| {
            match offered(a.api_key, a.min_version, a.max_version)
                .and_then(|range| older(caps, a.api_key, range))
            {
                Some((min, max)) => {
                    a.min_version = min;
                    a.max_version = max;
                    true
                }
                None => false,
            }
        });
    })?;
    Ok(Rewritten {
        frame,
        throttled: false,
    })
}

fn metadata(r: &mut MetadataResponse, version: i16, snap: &Snapshot) {
    r.brokers = (1..=snap.ports.len() as i32)
        .map(|id| {
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(id))
                .with_host(StrBytes::from_static_str(HOST))
                .with_port(snap.port(id))
        })
        .collect();
    if version >= 1 {
        r.controller_id = BrokerId(1);
    }
    for t in &mut r.topics {
        let Some(name) = &t.name else { continue };
        let name = name.0.to_string();
        for p in &mut t.partitions {
            if p.leader_id.0 < 0 {
                continue; // No leader yet (a topic being created): nothing to place.
            }
            let place = snap.placement(&name, p.partition_index);
            p.leader_id = BrokerId(place.leader);
            p.leader_epoch = place.epoch;
            p.replica_nodes = snap.replicas(place.leader);
            p.isr_nodes = snap.replicas(place.leader);
            p.offline_replicas = Vec::new();
        }
    }
}

fn find_coordinator(r: &mut FindCoordinatorResponse, version: i16, snap: &Snapshot) {
    let c = snap.coordinator;
    if version < 4 {
        if r.error_code == 0 {
            r.node_id = BrokerId(c);
            r.host = StrBytes::from_static_str(HOST);
            r.port = snap.port(c);
        }
        return;
    }
    for k in &mut r.coordinators {
        if k.error_code == 0 {
            k.node_id = BrokerId(c);
            k.host = StrBytes::from_static_str(HOST);
            k.port = snap.port(c);
        }
    }
}

/// A Fetch answer as the cluster gives it: no fetch sessions (session id 0, so clients
/// send full requests the proxy can route), no hints that name tansu, legacy message sets
/// in place, the refused partitions added, the broker's throttle.
fn finish_fetch(r: &mut FetchResponse, pending: &Pending, snap: &Snapshot) {
    r.session_id = 0;
    r.node_endpoints.clear();
    for t in &mut r.responses {
        let topic = t.topic.0.to_string();
        for p in &mut t.partitions {
            p.current_leader = Default::default();
            p.preferred_read_replica = BrokerId(-1);
            if p.error_code != 0 {
                continue;
            }
            let key = (topic.clone(), p.partition_index);
            if let (Some(sets), Some(&offset)) =
                (snap.legacy.get(&key), pending.fetch_offsets.get(&key))
            {
                let mut records = p.records.as_deref().unwrap_or_default().to_vec();
                for set in sets {
                    records = set.splice(&records, offset);
                }
                p.records = Some(Bytes::from(records));
            }
        }
    }
    for (topic, partition, code) in &pending.refused {
        let entry = match r.responses.iter().position(|t| t.topic.0.as_str() == topic) {
            Some(i) => &mut r.responses[i],
            None => {
                r.responses
                    .push(FetchableTopicResponse::default().with_topic(topic_name(topic)));
                r.responses.last_mut().expect("just pushed")
            }
        };
        entry.partitions.push(
            PartitionData::default()
                .with_partition_index(*partition)
                .with_error_code(*code)
                .with_high_watermark(-1)
                .with_aborted_transactions(None),
        );
    }
    if snap.throttle_ms > 0 {
        r.throttle_time_ms = snap.throttle_ms;
    }
}

fn finish_produce(r: &mut ProduceResponse, pending: &Pending, snap: &Snapshot) {
    r.node_endpoints.clear();
    for (topic, partition, code) in &pending.refused {
        let entry = match r.responses.iter().position(|t| t.name.0.as_str() == topic) {
            Some(i) => &mut r.responses[i],
            None => {
                r.responses
                    .push(TopicProduceResponse::default().with_name(topic_name(topic)));
                r.responses.last_mut().expect("just pushed")
            }
        };
        entry.partition_responses.push(
            PartitionProduceResponse::default()
                .with_index(*partition)
                .with_error_code(*code)
                .with_base_offset(-1)
                .with_log_append_time_ms(-1)
                .with_log_start_offset(-1),
        );
    }
    if snap.throttle_ms > 0 {
        r.throttle_time_ms = snap.throttle_ms;
    }
}

fn finish_list_offsets(r: &mut ListOffsetsResponse, pending: &Pending, snap: &Snapshot) {
    for (topic, partition, code) in &pending.refused {
        let entry = match r.topics.iter().position(|t| t.name.0.as_str() == topic) {
            Some(i) => &mut r.topics[i],
            None => {
                r.topics
                    .push(ListOffsetsTopicResponse::default().with_name(topic_name(topic)));
                r.topics.last_mut().expect("just pushed")
            }
        };
        entry.partitions.push(
            ListOffsetsPartitionResponse::default()
                .with_partition_index(*partition)
                .with_error_code(*code),
        );
    }
    if snap.throttle_ms > 0 {
        r.throttle_time_ms = snap.throttle_ms;
    }
}

/// The answer with `throttle_time_ms` set, for the APIs a consumer or producer uses;
/// `None` for an API this module does not decode (passed on unthrottled).
fn set_throttle(
    api: ApiKey,
    frame: &[u8],
    version: i16,
    ms: i32,
) -> Result<Option<Vec<u8>>, String> {
    macro_rules! throttle {
        ($ty:ty) => {
            edit(frame, version, |r: &mut $ty| r.throttle_time_ms = ms).map(Some)
        };
    }
    match api {
        ApiKey::OffsetCommit => throttle!(OffsetCommitResponse),
        ApiKey::OffsetFetch => throttle!(OffsetFetchResponse),
        ApiKey::JoinGroup => throttle!(JoinGroupResponse),
        ApiKey::SyncGroup => throttle!(SyncGroupResponse),
        ApiKey::Heartbeat => throttle!(HeartbeatResponse),
        ApiKey::LeaveGroup => throttle!(LeaveGroupResponse),
        ApiKey::DescribeGroups => throttle!(DescribeGroupsResponse),
        ApiKey::ListGroups => throttle!(ListGroupsResponse),
        ApiKey::InitProducerId => throttle!(InitProducerIdResponse),
        ApiKey::CreateTopics => throttle!(CreateTopicsResponse),
        _ => Ok(None),
    }
}

// ------------------------------------------------------------------------------------
// Frames

fn topic_name(name: &str) -> TopicName {
    TopicName(StrBytes::from_string(name.to_owned()))
}

pub(super) fn decode_request<R: Decodable + HeaderVersion>(
    frame: &[u8],
    version: i16,
) -> Result<(RequestHeader, R), String> {
    let what = std::any::type_name::<R>()
        .rsplit("::")
        .next()
        .unwrap_or("request");
    let mut body = Bytes::copy_from_slice(frame.get(4..).unwrap_or_default());
    let header = RequestHeader::decode(&mut body, R::header_version(version))
        .map_err(|e| format!("decode the header of a {what} v{version}: {e}"))?;
    let request =
        R::decode(&mut body, version).map_err(|e| format!("decode a {what} v{version}: {e}"))?;
    Ok((header, request))
}

pub(super) fn encode_request<R: Encodable + HeaderVersion>(
    header: &RequestHeader,
    request: &R,
    version: i16,
) -> Result<Vec<u8>, String> {
    let what = std::any::type_name::<R>()
        .rsplit("::")
        .next()
        .unwrap_or("request");
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    header
        .encode(&mut buf, R::header_version(version))
        .and_then(|()| request.encode(&mut buf, version))
        .map_err(|e| format!("encode a {what} v{version}: {e}"))?;
    Ok(sized(buf))
}

/// Decodes tansu's answer, lets `f` change it, encodes it again with the same header.
fn edit<R: Decodable + Encodable + HeaderVersion>(
    frame: &[u8],
    version: i16,
    f: impl FnOnce(&mut R),
) -> Result<Vec<u8>, String> {
    let what = std::any::type_name::<R>()
        .rsplit("::")
        .next()
        .unwrap_or("answer");
    let mut body = Bytes::copy_from_slice(frame.get(4..).unwrap_or_default());
    let header = ResponseHeader::decode(&mut body, R::header_version(version))
        .map_err(|e| format!("decode the header of a {what} v{version}: {e}"))?;
    let mut answer =
        R::decode(&mut body, version).map_err(|e| format!("decode a {what} v{version}: {e}"))?;
    f(&mut answer);
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    header
        .encode(&mut buf, R::header_version(version))
        .and_then(|()| answer.encode(&mut buf, version))
        .map_err(|e| format!("encode a {what} v{version}: {e}"))?;
    Ok(sized(buf))
}

pub(super) fn encode_answer<R: Encodable + HeaderVersion>(
    correlation_id: i32,
    answer: &R,
    version: i16,
) -> Result<Vec<u8>, String> {
    let what = std::any::type_name::<R>()
        .rsplit("::")
        .next()
        .unwrap_or("answer");
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0; 4]);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, R::header_version(version))
        .and_then(|()| answer.encode(&mut buf, version))
        .map_err(|e| format!("encode a {what} v{version}: {e}"))?;
    Ok(sized(buf))
}

/// The frame with its size prefix filled in.
fn sized(mut buf: BytesMut) -> Vec<u8> {
    let size = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}
