//! Group administration from outside the group, for operator tools: describe the group (is
//! anyone a member?) and commit offsets without being a member (the worker's
//! `offsets --reset`).
//!
//! Never used by a consumer: its commits go through `group` with a generation and member
//! id. A commit from outside carries generation -1 and an empty member id, which a
//! coordinator accepts only while the group has no members, so a tool first checks that
//! nobody is in the group, and a refusal comes back as `OutsideCommitError::GroupActive`.
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, GroupId, OffsetCommitRequest, OffsetCommitResponse, TopicName,
    offset_commit_request::{OffsetCommitRequestPartition, OffsetCommitRequestTopic},
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::cluster::Cluster;
use crate::error::{KafkaError, check_code};
use crate::net::throttle::Throttled;
use crate::settings::ConsumerSettings;
use crate::types::{Offset, Partition};

const FIND_COORDINATOR_VERSIONS: (i16, i16) = (1, 3);
const DESCRIBE_GROUPS_VERSIONS: (i16, i16) = (1, 5);
const OFFSET_COMMIT_VERSIONS: (i16, i16) = (2, 8);

// Error codes a commit from outside the group gets while the group has members.
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;

/// What the coordinator says about the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// "host:port" of the coordinator that answered.
    pub coordinator: String,
    /// The coordinator's name for the state: "Empty", "Stable", "PreparingRebalance",
    /// "CompletingRebalance", "Dead" (and "" from some brokers for a group never seen).
    pub state: String,
    /// The active members (none: nobody consumes for the group now).
    pub members: Vec<GroupMember>,
}

/// One active member of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// The id the coordinator gave the member.
    pub member_id: String,
    /// The client id the member connected with.
    pub client_id: String,
    /// Where the member connected from, as the coordinator saw it (e.g. "/10.0.0.5").
    pub client_host: String,
}

/// Why a commit from outside the group was not done.
#[derive(Debug)]
pub enum OutsideCommitError {
    /// The coordinator refused because the group has active members (or is rebalancing).
    GroupActive {
        /// ILLEGAL_GENERATION, UNKNOWN_MEMBER_ID or REBALANCE_IN_PROGRESS.
        code: i16,
    },
    /// Kafka could not be asked, or refused for another reason.
    Kafka(KafkaError),
}

/// A connection to the cluster for one group and topic, outside the group.
pub struct Admin {
    cluster: Cluster,
    group_id: String,
    topic: String,
    /// "host:port" of the group's coordinator, once found.
    coordinator: Option<String>,
}

impl Admin {
    /// An admin client for the group and topic of `settings`, connecting as the consumer
    /// would (same servers, client id, deadline and security); it connects on first use.
    pub fn new(settings: &ConsumerSettings) -> Admin {
        Admin {
            cluster: Cluster::new(
                settings.bootstrap.clone(),
                &settings.client_id,
                settings.timeouts(),
                settings.security.clone(),
            ),
            group_id: settings.group_id.clone(),
            topic: settings.topic.clone(),
            coordinator: None,
        }
    }

    /// Finds the group's coordinator and returns its "host:port".
    pub fn coordinator(&mut self) -> Result<String, KafkaError> {
        if let Some(addr) = &self.coordinator {
            return Ok(addr.clone());
        }
        let request = FindCoordinatorRequest::default()
            .with_key(str_bytes(&self.group_id))
            .with_key_type(0);
        let conn = self.cluster.any()?;
        let addr = conn.addr().to_owned();
        let result = conn
            .version(ApiKey::FindCoordinator, FIND_COORDINATOR_VERSIONS)
            .and_then(|v| {
                conn.call::<_, FindCoordinatorResponse>(ApiKey::FindCoordinator, v, &request)
            });
        let response = result.inspect_err(|_| self.cluster.drop_conn(&addr))?;
        check_code("FindCoordinator", response.error_code)?;
        let coordinator = format!("{}:{}", response.host.as_str(), response.port);
        self.coordinator = Some(coordinator.clone());
        Ok(coordinator)
    }

    /// Asks the coordinator for the group's state and members.
    pub fn describe_group(&mut self) -> Result<GroupDescription, KafkaError> {
        let request =
            DescribeGroupsRequest::default().with_groups(vec![GroupId(str_bytes(&self.group_id))]);
        let response: DescribeGroupsResponse =
            self.coordinator_call(ApiKey::DescribeGroups, DESCRIBE_GROUPS_VERSIONS, &request)?;
        let coordinator = self.coordinator.clone().unwrap_or_default();
        let Some(group) = response
            .groups
            .into_iter()
            .find(|g| g.group_id.0.as_str() == self.group_id)
        else {
            return Err(KafkaError::Protocol {
                broker: coordinator,
                detail: format!(
                    "DescribeGroups answer does not mention group {}",
                    self.group_id
                ),
            });
        };
        check_code("DescribeGroups", group.error_code)?;
        Ok(GroupDescription {
            coordinator,
            state: group.group_state.to_string(),
            members: group
                .members
                .iter()
                .map(|m| GroupMember {
                    member_id: m.member_id.to_string(),
                    client_id: m.client_id.to_string(),
                    client_host: m.client_host.to_string(),
                })
                .collect(),
        })
    }

    /// Commits `offsets` for the group without being a member (generation -1, no member id).
    pub fn commit_outside_group(
        &mut self,
        offsets: &[(Partition, Offset)],
    ) -> Result<(), OutsideCommitError> {
        let request = OffsetCommitRequest::default()
            .with_group_id(GroupId(str_bytes(&self.group_id)))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::default())
            .with_retention_time_ms(-1)
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(str_bytes(&self.topic)))
                    .with_partitions(
                        offsets
                            .iter()
                            .map(|(p, o)| {
                                OffsetCommitRequestPartition::default()
                                    .with_partition_index(p.0)
                                    .with_committed_offset(o.0)
                                    .with_committed_leader_epoch(-1)
                                    .with_committed_metadata(Some(StrBytes::default()))
                            })
                            .collect(),
                    ),
            ]);
        let response: OffsetCommitResponse = self
            .coordinator_call(ApiKey::OffsetCommit, OFFSET_COMMIT_VERSIONS, &request)
            .map_err(OutsideCommitError::Kafka)?;
        for topic in &response.topics {
            for p in &topic.partitions {
                match p.error_code {
                    0 => {}
                    code @ (ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS) => {
                        return Err(OutsideCommitError::GroupActive { code });
                    }
                    code => {
                        return Err(OutsideCommitError::Kafka(KafkaError::Broker {
                            what: "OffsetCommit",
                            code,
                        }));
                    }
                }
            }
        }
        Ok(())
    }

    /// One request to the coordinator; a failed connection is forgotten, so a retry reconnects.
    fn coordinator_call<Req, Resp>(
        &mut self,
        key: ApiKey,
        versions: (i16, i16),
        request: &Req,
    ) -> Result<Resp, KafkaError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion + Throttled,
    {
        let addr = self.coordinator()?;
        let result = self
            .cluster
            .to(&addr)
            .and_then(|conn| conn.call(key, conn.version(key, versions)?, request));
        if result.is_err() {
            self.cluster.drop_conn(&addr);
            self.coordinator = None;
        }
        result
    }
}

impl std::fmt::Display for OutsideCommitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutsideCommitError::GroupActive { code } => write!(
                f,
                "the coordinator refused the commit because the group has active members (error code {code}); stop every worker of the group first"
            ),
            OutsideCommitError::Kafka(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for OutsideCommitError {}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}
