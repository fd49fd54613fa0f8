//! Quotas (KIP-219): a broker that throttles a client answers at once, says in the answer's
//! `throttle_time_ms` how long it throttles, and mutes the connection for that long; a
//! request sent meanwhile waits at the broker and may time out on our side. So nothing
//! more is sent on a connection until its throttle has passed ([`Throttle`]), and every
//! answer we decode says its throttle time ([`Throttled`]).
use std::time::{Duration, Instant};

use kafka_protocol::messages::{
    ApiVersionsResponse, DescribeGroupsResponse, FindCoordinatorResponse, HeartbeatResponse,
    InitProducerIdResponse, JoinGroupResponse, LeaveGroupResponse, ListOffsetsResponse,
    MetadataResponse, OffsetCommitResponse, OffsetFetchResponse, ProduceResponse,
    SaslAuthenticateResponse, SaslHandshakeResponse, SyncGroupResponse,
};

/// The longest throttle honoured. Kafka's quotas throttle for at most a quota window
/// (seconds); a larger value is a broker's mistake, and waiting it out in full would look
/// like a hang.
pub const MAX_THROTTLE: Duration = Duration::from_secs(300);

/// An answer that may carry a throttle time (0 in versions without the field).
pub trait Throttled {
    /// How long the broker throttles this connection, in milliseconds.
    fn throttle_ms(&self) -> i32;
}

/// When a connection may send again.
#[derive(Debug, Default, Clone, Copy)]
pub struct Throttle {
    until: Option<Instant>,
}

impl Throttle {
    /// Notes a throttle of `ms` milliseconds from now (0 or less: none).
    pub fn note(&mut self, ms: i32) {
        let Ok(ms) = u64::try_from(ms) else { return };
        if ms == 0 {
            return;
        }
        let until = Instant::now() + Duration::from_millis(ms).min(MAX_THROTTLE);
        self.until = Some(self.until.map_or(until, |u| u.max(until)));
    }

    /// When the throttle ends, if it has not yet.
    pub fn until(&self) -> Option<Instant> {
        self.until.filter(|u| *u > Instant::now())
    }
}

macro_rules! throttled {
    ($($t:ty),*) => {
        $(impl Throttled for $t {
            fn throttle_ms(&self) -> i32 {
                self.throttle_time_ms
            }
        })*
    };
}

throttled!(
    ApiVersionsResponse,
    MetadataResponse,
    FindCoordinatorResponse,
    JoinGroupResponse,
    SyncGroupResponse,
    HeartbeatResponse,
    LeaveGroupResponse,
    OffsetCommitResponse,
    OffsetFetchResponse,
    ListOffsetsResponse,
    InitProducerIdResponse,
    ProduceResponse,
    DescribeGroupsResponse
);

/// SASL answers carry no throttle time.
impl Throttled for SaslHandshakeResponse {
    fn throttle_ms(&self) -> i32 {
        0
    }
}

impl Throttled for SaslAuthenticateResponse {
    fn throttle_ms(&self) -> i32 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_lasts_as_long_as_the_broker_says_and_never_shortens() {
        let mut t = Throttle::default();
        t.note(0);
        t.note(-5);
        assert!(t.until().is_none());
        let before = Instant::now();
        t.note(200);
        let first = t.until().expect("throttled");
        assert!(first >= before + Duration::from_millis(200));
        t.note(10);
        assert_eq!(
            t.until(),
            Some(first),
            "a shorter throttle does not end it early"
        );
        t.note(i32::MAX);
        assert!(t.until().expect("throttled") <= Instant::now() + MAX_THROTTLE);
    }
}
