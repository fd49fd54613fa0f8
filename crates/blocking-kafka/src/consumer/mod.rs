//! The facade one thread drives (the worker's poller): connect, join, fetch, heartbeat,
//! commit, leave.
//!
//! It keeps the fetch position of every assigned partition. It never commits on its own:
//! the caller says what to commit, after its work is durable.
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::cluster::{Cluster, TopicState};
use crate::error::KafkaError;
use crate::fetch;
use crate::group::{Group, GroupSettings, Heartbeat};
use crate::net::settings::SessionInfo;
use crate::settings::ConsumerSettings;
use crate::types::{Offset, Partition, StartFrom};
use crate::wire::message::Message;

/// What the group side asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSignal {
    /// The coordinator confirmed our membership just now: keep going.
    Fine,
    /// No heartbeat was due; keep going (says nothing about Kafka being reachable).
    NotDue,
    /// Revoke every partition (finish or drop their work, commit), then call `join`.
    Rejoin(&'static str),
}

/// Our share of the topic after a join, with the offset each partition starts from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Each partition we own, with the offset fetching starts from.
    pub partitions: Vec<(Partition, Offset)>,
    /// How many partitions the topic had when we joined (0: the topic is missing).
    pub topic_partitions: usize,
}

/// A member of one consumer group reading one topic, driven by one thread: it joins,
/// heartbeats, fetches and commits only when told to, so the caller decides when an offset
/// is safe to commit and never finds a background thread holding its partitions.
pub struct Consumer {
    settings: ConsumerSettings,
    cluster: Cluster,
    group: Group,
    /// Next offset to fetch for each assigned partition; empty between revoke and join.
    positions: BTreeMap<Partition, Offset>,
    /// The topic's partition count at the last join, to notice partitions added later.
    topic_partitions: usize,
}

impl Consumer {
    /// A consumer with `settings`; it connects on first use (or `connect`).
    pub fn new(settings: ConsumerSettings) -> Consumer {
        let cluster = Cluster::new(
            settings.bootstrap.clone(),
            &settings.client_id,
            settings.request_timeout,
            settings.security.clone(),
        );
        let group = Group::new(GroupSettings {
            group_id: settings.group_id.clone(),
            topic: settings.topic.clone(),
            session_timeout: settings.session_timeout,
            rebalance_timeout: settings.rebalance_timeout,
            heartbeat_interval: settings.heartbeat_interval,
        });
        Consumer {
            settings,
            cluster,
            group,
            positions: BTreeMap::new(),
            topic_partitions: 0,
        }
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &ConsumerSettings {
        &self.settings
    }

    /// Reaches a broker, retrying with backoff until `deadline`; the error names the servers.
    /// Between attempts it calls `cancelled(backoff)`, which must itself wait up to `backoff`
    /// (e.g. on a shutdown channel) and say whether to stop; `Ok(false)` then. One attempt
    /// to an address that neither answers nor refuses can overrun the deadline by up to the
    /// request timeout.
    pub fn connect(
        &mut self,
        deadline: Instant,
        cancelled: &dyn Fn(Duration) -> bool,
    ) -> Result<bool, KafkaError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.cluster.any() {
                Ok(_) => return Ok(true),
                // Credentials, certificates or the protocol are wrong: waiting will not help.
                Err(e) if e.is_security() => return Err(e),
                Err(e) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Err(e);
                    }
                    log::warn!("{e}; retrying for up to {:?}", deadline - now);
                    if cancelled(backoff.min(deadline - now)) {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// What the connection to some broker negotiated (TLS version, cipher suite, the
    /// broker's certificate, the SASL identity), for `check`.
    pub fn session_info(&mut self) -> Result<SessionInfo, KafkaError> {
        self.cluster.session_info()
    }

    /// Whether the topic exists, and its partitions.
    pub fn topic_state(&mut self) -> Result<TopicState, KafkaError> {
        self.cluster.refresh(&self.settings.topic)
    }

    /// Joins the group and sets the start position of each assigned partition: the
    /// committed offset, else the configured reset (earliest or latest).
    pub fn join(&mut self) -> Result<Assignment, KafkaError> {
        self.positions.clear();
        let partitions = match self.topic_state()? {
            TopicState::Partitions(p) => p,
            TopicState::Missing => Vec::new(),
        };
        self.topic_partitions = partitions.len();
        let mine = self.group.join(&mut self.cluster, &partitions)?;
        let mut positions = BTreeMap::new();
        if !mine.is_empty() {
            let committed = self.group.committed(&mut self.cluster, &mine)?;
            let missing: Vec<Partition> = mine
                .iter()
                .filter(|p| committed.get(p).copied().flatten().is_none())
                .copied()
                .collect();
            let reset = if missing.is_empty() {
                Default::default()
            } else {
                fetch::list_offsets(
                    &mut self.cluster,
                    &self.settings.topic,
                    &missing,
                    self.settings.start_from,
                )?
            };
            for p in &mine {
                let start = committed
                    .get(p)
                    .copied()
                    .flatten()
                    .or_else(|| reset.get(p).copied())
                    .unwrap_or(Offset(0));
                positions.insert(*p, start);
            }
        }
        self.positions = positions;
        Ok(Assignment {
            partitions: self.positions.iter().map(|(p, o)| (*p, *o)).collect(),
            topic_partitions: self.topic_partitions,
        })
    }

    /// Heartbeats when due. A connection error is returned for the caller to log; the next
    /// call tries again (on a fresh connection).
    pub fn heartbeat(&mut self) -> Result<GroupSignal, KafkaError> {
        match self.group.heartbeat_if_due(&mut self.cluster)? {
            Heartbeat::Fine => Ok(GroupSignal::Fine),
            Heartbeat::NotDue => Ok(GroupSignal::NotDue),
            Heartbeat::Rejoin(why) => Ok(GroupSignal::Rejoin(why)),
        }
    }

    /// When the next heartbeat is due: a caller that waits must not wait past it.
    pub fn next_heartbeat(&self) -> Instant {
        self.group.next_heartbeat()
    }

    /// True when the topic now has a different number of partitions than at our join (it
    /// was created, or partitions were added): the group must rebalance to spread them.
    pub fn topic_changed(&mut self) -> Result<bool, KafkaError> {
        let now = match self.topic_state()? {
            TopicState::Partitions(p) => p.len(),
            TopicState::Missing => 0,
        };
        Ok(now != self.topic_partitions)
    }

    /// Fetches from every assigned partition except `paused`. Handles leader moves (metadata
    /// refresh) and out-of-range positions (reset, logged) itself.
    pub fn fetch(&mut self, paused: &[Partition]) -> Result<Vec<Message>, KafkaError> {
        let wanted: Vec<(Partition, Offset)> = self
            .positions
            .iter()
            .filter(|(p, _)| !paused.contains(p))
            .map(|(p, o)| (*p, *o))
            .collect();
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let fetched = fetch::fetch(
            &mut self.cluster,
            &self.settings.topic,
            &wanted,
            self.settings.fetch_max_wait,
            self.settings.record_limits,
        )?;
        for (p, next) in &fetched.positions {
            if let Some(pos) = self.positions.get_mut(p) {
                *pos = *next;
            }
        }
        for (p, e) in &fetched.errors {
            log::warn!("fetching partition {p} of {}: {e}", self.settings.topic);
        }
        if fetched.stale_metadata {
            log::info!("partition leadership changed; refreshing metadata");
            self.cluster.refresh(&self.settings.topic)?;
        }
        if !fetched.out_of_range.is_empty() {
            let reset = fetch::list_offsets(
                &mut self.cluster,
                &self.settings.topic,
                &fetched.out_of_range,
                self.settings.start_from,
            )?;
            for (p, o) in reset {
                if let Some(pos) = self.positions.get_mut(&p) {
                    log::warn!(
                        "offset {pos} of partition {p} is out of range; resetting to {o} ({:?})",
                        self.settings.start_from
                    );
                    *pos = o;
                }
            }
        }
        Ok(fetched.messages)
    }

    /// Commits the given offsets (each the next offset to read) for our generation.
    pub fn commit(&mut self, offsets: &[(Partition, Offset)]) -> Result<(), KafkaError> {
        if offsets.is_empty() {
            return Ok(());
        }
        self.group.commit(&mut self.cluster, offsets)
    }

    /// The next offset to fetch from `partition`, if we own it.
    pub fn position(&self, partition: Partition) -> Option<Offset> {
        self.positions.get(&partition).copied()
    }

    /// True when we own no partition (not joined yet, or nothing assigned to us).
    pub fn owns_nothing(&self) -> bool {
        self.positions.is_empty()
    }

    /// The partitions we own now.
    pub fn assigned(&self) -> Vec<Partition> {
        self.positions.keys().copied().collect()
    }

    /// Forgets positions: called once the caller has finished revoking.
    pub fn revoke(&mut self) {
        self.positions.clear();
    }

    /// Leaves the group (best effort).
    pub fn leave(&mut self) -> Result<(), KafkaError> {
        self.positions.clear();
        self.group.leave(&mut self.cluster)
    }

    /// The committed offsets of the group for every partition of the topic (for tools).
    pub fn committed(
        &mut self,
        partitions: &[Partition],
    ) -> Result<std::collections::HashMap<Partition, Option<Offset>>, KafkaError> {
        self.group.committed(&mut self.cluster, partitions)
    }

    /// The log end (or start) offsets of `partitions` (for tools and lag).
    pub fn log_offsets(
        &mut self,
        partitions: &[Partition],
        from: StartFrom,
    ) -> Result<std::collections::HashMap<Partition, Offset>, KafkaError> {
        fetch::list_offsets(&mut self.cluster, &self.settings.topic, partitions, from)
    }
}
