//! The basic types every layer speaks in: a partition, an offset, where to start reading,
//! a partition assignment strategy.
//! The bottom of the crate, beside `error`: it imports nothing of the rest.
use std::fmt;

/// A partition number of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub i32);

/// A position in a partition's log: the offset of a record, or the next one to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

/// Where to start when a partition has no committed offset (or it is out of range).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    /// The log start: the oldest record the broker still has.
    Earliest,
    /// The log end (the last stable offset): only records produced from now on.
    Latest,
}

/// A partition assignment strategy a consumer offers its group, by the name Kafka, the Java
/// client and librdkafka give it (`partition.assignment.strategy`). The group's coordinator
/// picks, at each rebalance, one that every member offers; the member it makes leader runs
/// it for everyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Assignor {
    /// `cooperative-sticky` (KIP-429): balanced, each member keeping what it owns where the
    /// balance allows; a rebalance revokes only the partitions that move, and members go on
    /// processing the rest meanwhile.
    CooperativeSticky,
    /// `range`: contiguous runs of partitions by member order, with the eager protocol:
    /// every rebalance revokes every partition of every member first.
    Range,
}

impl Assignor {
    /// What this crate offers when told nothing: cooperative-sticky first, range second, so
    /// a group of members offering both is cooperative, and a group whose older members
    /// offer only range keeps working (eager) until they are upgraded.
    pub const DEFAULT: [Assignor; 2] = [Assignor::CooperativeSticky, Assignor::Range];

    /// The name in JoinGroup, and in `partition.assignment.strategy`.
    pub fn name(self) -> &'static str {
        match self {
            Assignor::CooperativeSticky => "cooperative-sticky",
            Assignor::Range => "range",
        }
    }

    /// The assignor named `name` (as Kafka spells it), if this crate has it.
    pub fn from_name(name: &str) -> Option<Assignor> {
        [Assignor::CooperativeSticky, Assignor::Range]
            .into_iter()
            .find(|a| a.name() == name)
    }

    /// True when a group using it rebalances cooperatively (KIP-429): only the partitions
    /// that move are revoked.
    pub fn is_cooperative(self) -> bool {
        matches!(self, Assignor::CooperativeSticky)
    }
}

impl fmt::Display for Assignor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
