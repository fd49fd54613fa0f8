//! What the consumer's threads tell the facade, on the one channel they share ([`Event`]),
//! and the lease that ties a partition to the thread fetching it ([`Lease`]).
//!
//! One channel for every thread keeps what one partition's fetches report in order even
//! when the partition moves from one broker's thread to another's: the old thread's last
//! result is in the channel before the facade hands the partition on.
use std::time::Instant;

use crate::error::KafkaError;
use crate::group::Heartbeat;
use crate::types::{Assignor, Offset, Partition};
use crate::wire::message::Message;

/// Which assignment of a partition to a fetch thread a report is about. The facade makes a
/// new one (a number never used before) each time it gives a partition to a thread, and
/// drops reports that carry another: a partition that moved from a slow broker's thread to
/// a new leader's is fetched from where the facade knows it to be, and whatever the old
/// thread brings in later is ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Lease(pub(crate) u64);

/// Something one of the consumer's threads reports. Opaque to the caller, who only hands
/// it back to [`crate::Consumer::handle`] after waiting for it (see `Consumer::events`).
#[derive(Debug)]
pub struct Event(pub(crate) Inner);

#[derive(Debug)]
pub(crate) enum Inner {
    /// A fetch thread's result: messages and positions. It fetches again only once the
    /// facade has handed this on (its credit back): one result per broker waits at most.
    Fetched { broker: String, batch: Batch },
    /// Partitions the broker no longer leads (or never did): the thread dropped them.
    Moved {
        broker: String,
        partitions: Vec<(Partition, Lease)>,
        code: i16,
    },
    /// A partition's fetch failed for a reason of its own (the thread retries it later).
    PartitionFailed {
        broker: String,
        partition: Partition,
        lease: Lease,
        error: KafkaError,
    },
    /// The fetch thread's connection failed (it reconnects with backoff, keeping its
    /// partitions until the facade moves them).
    BrokerFailed { broker: String, error: KafkaError },
    /// The fetch thread's broker answers again, after failing since `since`.
    BrokerRecovered { broker: String, since: Instant },
    /// What the group thread's last heartbeat learned, in the membership of its `join`th
    /// join (news of an earlier membership is stale).
    Heartbeat {
        join: u64,
        news: Result<Heartbeat, KafkaError>,
    },
    /// A cooperative rebalance round the group thread went through by itself (in the
    /// membership of its `join`th join): what the new plan adds (with committed offsets)
    /// and takes away from us.
    Assigned {
        join: u64,
        added: Vec<(Partition, Option<Offset>)>,
        revoked: Vec<Partition>,
        protocol: Assignor,
        /// The topic's partition count the plan was made for.
        topic_partitions: usize,
    },
    /// The outcome of a commit the facade asked for (in join `epoch`).
    Committed {
        epoch: u64,
        offsets: Vec<(Partition, Offset)>,
        result: Result<(), KafkaError>,
    },
    /// A metadata refresh's result.
    Metadata(Result<Snapshot, KafkaError>),
}

/// One fetch's handover.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) messages: Vec<Message>,
    /// The next offset of each partition the fetch moved, under the lease it was fetched.
    pub(crate) positions: Vec<(Partition, Lease, Offset)>,
    /// The log end (last stable offset) of the partitions answered.
    pub(crate) log_ends: Vec<(Partition, Offset)>,
}

/// The topic as the last metadata answer described it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Snapshot {
    /// Every partition with its leader's "host:port" (`None`: no leader now). Empty: the
    /// topic does not exist.
    pub(crate) leaders: Vec<(Partition, Option<String>)>,
}
