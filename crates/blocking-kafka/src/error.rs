//! What can go wrong talking to Kafka: [`KafkaError`], whose every variant says what to do
//! about it, and `check_code`, which turns an answer's error code into one; [`printable`],
//! which makes text from elsewhere safe to show in one line. The bottom of the crate: it
//! imports nothing of the rest.
use std::borrow::Cow;
use std::fmt;
use std::io;
use std::time::Duration;

/// What went wrong talking to Kafka. Every variant says what to do about it.
///
/// `broker` is always the "host:port" the client talked to; `what` names the request (or
/// the step: "connect", "the TLS handshake").
#[derive(Debug)]
pub enum KafkaError {
    /// No bootstrap server answered.
    Unreachable {
        /// The bootstrap servers, comma-separated.
        servers: String,
        /// Why each of them failed.
        detail: String,
    },
    /// A connection to one broker failed or dropped mid-request.
    Io {
        /// The broker.
        broker: String,
        /// The request or step that failed.
        what: &'static str,
        /// The socket's error.
        source: std::io::Error,
    },
    /// A broker did not answer within the request timeout.
    Timeout {
        /// The broker.
        broker: String,
        /// The request or step that timed out.
        what: &'static str,
        /// The deadline that passed.
        after: Duration,
    },
    /// A broker answered something we could not encode or decode.
    Protocol {
        /// The broker (empty when the data came from a record batch, not an answer).
        broker: String,
        /// What was wrong with it.
        detail: String,
    },
    /// A broker refused a request with a Kafka error code.
    Broker {
        /// The request refused.
        what: &'static str,
        /// Kafka's error code.
        code: i16,
    },
    /// The broker supports none of the versions of an API we speak.
    UnsupportedVersion {
        /// The broker.
        broker: String,
        /// The API, e.g. "Fetch".
        api: &'static str,
        /// The versions we speak (inclusive).
        ours: (i16, i16),
        /// The versions the broker speaks; `None`: not that API at all.
        theirs: Option<(i16, i16)>,
    },
    /// A record batch used a codec we cannot decode, or its data was corrupt.
    Codec {
        /// The codec's name, e.g. "zstd".
        codec: &'static str,
        /// Which batch, and what was wrong.
        detail: String,
    },
    /// The broker refused our SASL credentials (wrong password, unknown user).
    Authentication {
        /// The broker.
        broker: String,
        /// The user name we authenticated as.
        user: String,
        /// The SASL mechanism, as Kafka spells it.
        mechanism: &'static str,
        /// The broker's own words (SaslAuthenticate's error message).
        message: String,
    },
    /// The broker does not enable the SASL mechanism we are configured for.
    SaslMechanism {
        /// The broker.
        broker: String,
        /// The mechanism we asked for.
        wanted: &'static str,
        /// What the broker's SaslHandshake answer lists.
        enabled: Vec<String>,
    },
    /// TLS failed: an untrusted, expired or misnamed broker certificate, or the broker
    /// refused ours.
    Tls {
        /// The broker.
        broker: String,
        /// A sentence that names the cause and what to do.
        reason: String,
    },
    /// Our `KAFKA_SECURITY_PROTOCOL` does not match the listener (plaintext against TLS,
    /// SASL against a listener without it, ...).
    WrongProtocol {
        /// The broker.
        broker: String,
        /// A sentence that suggests the right setting.
        reason: String,
    },
    /// The coordinator fenced us (FENCED_INSTANCE_ID): another consumer joined the group
    /// with our `group.instance.id` (KIP-345), so two processes share one static identity.
    /// Fatal: whichever of the two goes on, this one must stop.
    FencedInstanceId {
        /// The consumer group.
        group: String,
        /// The instance id both processes use.
        instance_id: String,
    },
    /// The group uses a partition assignment strategy (or a protocol type) that we do not
    /// offer, so the coordinator will not let us in (INCONSISTENT_GROUP_PROTOCOL).
    GroupProtocol {
        /// The consumer group.
        group: String,
        /// The strategies we offer, in our order of preference.
        offered: Vec<String>,
        /// The strategy the group uses, when the coordinator said (DescribeGroups).
        group_uses: Option<String>,
        /// The group's protocol type, when it is not "consumer" (a Connect cluster's group).
        protocol_type: Option<String>,
    },
    /// Static membership (`group.instance.id`) asked of a broker too old for it (JoinGroup
    /// below version 5: Kafka before 2.3).
    StaticMembershipUnsupported {
        /// The coordinator.
        broker: String,
        /// The highest JoinGroup version it speaks.
        join_group: i16,
    },
}

impl KafkaError {
    /// True when the broker could not be reached or the connection failed: an outage,
    /// as opposed to an answer we did not like.
    ///
    /// A TLS or SASL failure counts as one: mid-run it is an outage like any other (offsets
    /// held, retried with backoff, recovery logged), for credentials rotated at the broker or
    /// a certificate renewed badly may well be put right while the caller waits.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            KafkaError::Unreachable { .. } | KafkaError::Io { .. } | KafkaError::Timeout { .. }
        ) || self.is_security()
    }

    /// True for a TLS or SASL failure (credentials, certificates, protocol mismatch): at
    /// start-up it will not clear by itself, so it is reported at once instead of being
    /// retried for the whole start-up timeout.
    pub fn is_security(&self) -> bool {
        matches!(
            self,
            KafkaError::Authentication { .. }
                | KafkaError::SaslMechanism { .. }
                | KafkaError::Tls { .. }
                | KafkaError::WrongProtocol { .. }
        )
    }

    /// A copy of a security failure (they hold only text), so that a connection refused
    /// for it can be refused again during its backoff without asking the broker.
    pub(crate) fn clone_security(&self) -> Option<KafkaError> {
        match self {
            KafkaError::Authentication {
                broker,
                user,
                mechanism,
                message,
            } => Some(KafkaError::Authentication {
                broker: broker.clone(),
                user: user.clone(),
                mechanism,
                message: message.clone(),
            }),
            KafkaError::SaslMechanism {
                broker,
                wanted,
                enabled,
            } => Some(KafkaError::SaslMechanism {
                broker: broker.clone(),
                wanted,
                enabled: enabled.clone(),
            }),
            KafkaError::Tls { broker, reason } => Some(KafkaError::Tls {
                broker: broker.clone(),
                reason: reason.clone(),
            }),
            KafkaError::WrongProtocol { broker, reason } => Some(KafkaError::WrongProtocol {
                broker: broker.clone(),
                reason: reason.clone(),
            }),
            _ => None,
        }
    }

    /// True when the group moved on without us (rebalance, stale generation, unknown
    /// member): a commit refused for this is expected during a rebalance.
    pub fn is_membership_change(&self) -> bool {
        matches!(
            self,
            KafkaError::Broker {
                code: 22 | 25 | 27,
                ..
            }
        )
    }

    /// True when the consumer cannot go on as it is: another process took its static
    /// identity (FENCED_INSTANCE_ID), the group will not have it (INCONSISTENT_GROUP_PROTOCOL),
    /// or the broker cannot do what it is configured for (static membership on a broker
    /// before Kafka 2.3). A program stops with the error's words, which say what to change.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            KafkaError::FencedInstanceId { .. }
                | KafkaError::GroupProtocol { .. }
                | KafkaError::StaticMembershipUnsupported { .. }
        )
    }

    /// True when the same call may succeed later (broker restart, leader move, rebalance):
    /// callers retry these with backoff instead of giving up.
    pub fn is_retriable(&self) -> bool {
        match self {
            KafkaError::Unreachable { .. } | KafkaError::Io { .. } | KafkaError::Timeout { .. } => {
                true
            }
            // Retried mid-run (see `is_connection`); start-up stops at once (`is_security`).
            KafkaError::Authentication { .. }
            | KafkaError::SaslMechanism { .. }
            | KafkaError::Tls { .. }
            | KafkaError::WrongProtocol { .. } => true,
            KafkaError::Broker { code, .. } => {
                kafka_protocol::error::ResponseError::try_from_code(*code)
                    .is_some_and(|e| e.is_retriable())
            }
            KafkaError::Protocol { .. }
            | KafkaError::UnsupportedVersion { .. }
            | KafkaError::Codec { .. }
            | KafkaError::FencedInstanceId { .. }
            | KafkaError::GroupProtocol { .. }
            | KafkaError::StaticMembershipUnsupported { .. } => false,
        }
    }
}

/// Every error is shown through [`printable`]: it carries text a broker (or whoever answers
/// in its place, before authentication too) controls: its error messages, mechanism names,
/// host names, certificate names. A newline in them would otherwise forge a log line, in
/// the caller's log, on its stderr, or wherever it shows the error (`/healthz`).
impl fmt::Display for KafkaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&printable(&Unescaped(self).to_string()))
    }
}

/// The error in words, with the peer's text as it came.
struct Unescaped<'a>(&'a KafkaError);

impl fmt::Display for Unescaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            KafkaError::Unreachable { servers, detail } => write!(
                f,
                "cannot reach Kafka at {servers}: {detail} (is the broker running? see README \"Troubleshooting\")"
            ),
            KafkaError::Io {
                broker,
                what,
                source,
            } => write!(
                f,
                "connection to Kafka broker {broker} failed during {what}: {source} (will reconnect and retry)"
            ),
            KafkaError::Timeout {
                broker,
                what,
                after,
            } => write!(
                f,
                "Kafka broker {broker} did not answer {what} within {after:?} (will reconnect and retry)"
            ),
            KafkaError::Protocol { broker, detail } => write!(
                f,
                "unexpected answer from Kafka broker {broker}: {detail} (is it a Kafka-compatible broker of version 2.1 or later?)"
            ),
            KafkaError::Broker { what, code } => {
                match kafka_protocol::error::ResponseError::try_from_code(*code) {
                    Some(e) => write!(f, "Kafka refused {what}: {e:?} (error code {code})"),
                    None => write!(f, "Kafka refused {what} with error code {code}"),
                }
            }
            KafkaError::UnsupportedVersion {
                broker,
                api,
                ours,
                theirs,
            } => match theirs {
                Some((lo, hi)) => write!(
                    f,
                    "Kafka broker {broker} supports {api} versions {lo}..{hi}, this worker needs one of {}..{}: upgrade the broker to Kafka 2.1 or later",
                    ours.0, ours.1
                ),
                None => write!(
                    f,
                    "Kafka broker {broker} does not support {api}: upgrade the broker to Kafka 2.1 or later"
                ),
            },
            KafkaError::Codec { codec, detail } => write!(
                f,
                "cannot decode a {codec} record batch: {detail} (supported codecs: none, gzip, snappy, lz4, zstd)"
            ),
            // Exactly this sentence (the README and the tests rely on it): the broker's words
            // say what is wrong, and what to do is plain (fix the user name or password).
            KafkaError::Authentication {
                user,
                mechanism,
                message,
                ..
            } => write!(
                f,
                "authentication failed for user {user} with {mechanism}: {message}"
            ),
            KafkaError::SaslMechanism {
                broker,
                wanted,
                enabled,
            } => {
                if enabled.iter().any(|m| m == wanted) {
                    // Seen from brokers whose listener has no SASL configured at all.
                    write!(
                        f,
                        "Kafka broker {broker} refused SASL mechanism {wanted} although it lists it: does this listener use SASL? if not, set KAFKA_SECURITY_PROTOCOL to PLAINTEXT or SSL"
                    )
                } else if enabled.is_empty() {
                    write!(
                        f,
                        "Kafka broker {broker} does not enable SASL mechanism {wanted}, nor any other: does its listener use SASL at all?"
                    )
                } else {
                    write!(
                        f,
                        "Kafka broker {broker} does not enable SASL mechanism {wanted}; it enables {}: set KAFKA_SASL_MECHANISM to one of them",
                        enabled.join(", ")
                    )
                }
            }
            KafkaError::Tls { reason, .. } => write!(f, "TLS: {reason}"),
            KafkaError::WrongProtocol { reason, .. } => write!(f, "{reason}"),
            KafkaError::FencedInstanceId { group, instance_id } => write!(
                f,
                "another consumer joined group {group} with this worker's group instance id \"{instance_id}\" (KAFKA_GROUP_INSTANCE_ID), and the coordinator fenced this one (FENCED_INSTANCE_ID): give every worker an id of its own (its host name, say) and stop the other process if it is a stray copy of this one"
            ),
            KafkaError::GroupProtocol {
                group,
                offered,
                group_uses,
                protocol_type,
            } => {
                let offered = offered.join(",");
                match (protocol_type, group_uses) {
                    (Some(t), _) => write!(
                        f,
                        "group {group} belongs to clients of protocol type {t}, not to consumers (INCONSISTENT_GROUP_PROTOCOL): set KAFKA_GROUP_ID to a group of the worker's own"
                    ),
                    // One this crate has (`types::Assignor`), only not configured.
                    (None, Some(theirs))
                        if matches!(theirs.as_str(), "cooperative-sticky" | "range") =>
                    {
                        write!(
                            f,
                            "group {group} uses the partition assignment strategy {theirs}, which this worker does not offer (KAFKA_PARTITION_ASSIGNMENT_STRATEGY={offered}; INCONSISTENT_GROUP_PROTOCOL): add {theirs} to KAFKA_PARTITION_ASSIGNMENT_STRATEGY, or move the group's other members to one of {offered}"
                        )
                    }
                    (None, Some(theirs)) => write!(
                        f,
                        "group {group} uses the partition assignment strategy {theirs}, which this worker does not offer (KAFKA_PARTITION_ASSIGNMENT_STRATEGY={offered}; it knows cooperative-sticky and range; INCONSISTENT_GROUP_PROTOCOL): configure the group's other members to offer one of {offered} too (their partition.assignment.strategy), or give the worker a group of its own (KAFKA_GROUP_ID)"
                    ),
                    (None, None) => write!(
                        f,
                        "group {group} uses a partition assignment strategy this worker does not offer (KAFKA_PARTITION_ASSIGNMENT_STRATEGY={offered}; INCONSISTENT_GROUP_PROTOCOL; the coordinator did not say which, `kafka-consumer-groups.sh --describe --group {group} --state` shows it): configure the group's members to offer one of {offered}, or give the worker a group of its own (KAFKA_GROUP_ID)"
                    ),
                }
            }
            KafkaError::StaticMembershipUnsupported { broker, join_group } => write!(
                f,
                "Kafka broker {broker} speaks JoinGroup only up to version {join_group}; static membership (KAFKA_GROUP_INSTANCE_ID) needs version 5 (Kafka 2.3 or later): upgrade the broker, or leave KAFKA_GROUP_INSTANCE_ID empty"
            ),
        }
    }
}

impl std::error::Error for KafkaError {}

/// Text from elsewhere (a user id, a broker's words) made safe for one log line: control
/// characters (a newline could forge a whole log line, an escape sequence repaint a
/// terminal) are written as escapes; everything else is kept as it is.
pub fn printable(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Turns a Kafka error code into `Ok` or a `KafkaError::Broker` naming the request.
pub(crate) fn check_code(what: &'static str, code: i16) -> Result<(), KafkaError> {
    if code == 0 {
        Ok(())
    } else {
        Err(KafkaError::Broker { what, code })
    }
}

/// A socket error of `what` on the connection to `broker`: a timeout (the deadline `after`
/// passed) or any other I/O failure.
pub(crate) fn io_error(
    broker: &str,
    what: &'static str,
    after: Duration,
    source: io::Error,
) -> KafkaError {
    match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => KafkaError::Timeout {
            broker: broker.to_owned(),
            what,
            after,
        },
        _ => KafkaError::Io {
            broker: broker.to_owned(),
            what,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_elsewhere_cannot_forge_log_lines() {
        assert_eq!(printable("alice"), "alice");
        assert_eq!(printable("o'brien \"x\" ü"), "o'brien \"x\" ü");
        assert_eq!(printable("a\n2001-01-01 - x"), "a\\n2001-01-01 - x");
        assert_eq!(printable("a\r\u{1b}[31m"), "a\\r\\u{1b}[31m");
    }

    #[test]
    fn a_brokers_words_in_an_error_are_shown_on_one_line() {
        let e = KafkaError::Authentication {
            broker: "b:9092".into(),
            user: "alice".into(),
            mechanism: "PLAIN",
            message: "no\n2030-01-01 - forged\u{1b}[2J".into(),
        };
        assert_eq!(
            e.to_string(),
            "authentication failed for user alice with PLAIN: no\\n2030-01-01 - forged\\u{1b}[2J"
        );
        let e = KafkaError::SaslMechanism {
            broker: "b:9092".into(),
            wanted: "PLAIN",
            enabled: vec!["X\rY".into()],
        };
        assert!(e.to_string().contains("it enables X\\rY:"), "{e}");
    }

    /// The group's fatal errors name what clashed and what to change, and end the consumer.
    #[test]
    fn fatal_group_errors_name_both_sides_and_what_to_change() {
        let fenced = KafkaError::FencedInstanceId {
            group: "g".into(),
            instance_id: "edge-7".into(),
        }
        .to_string();
        assert!(
            fenced.contains("\"edge-7\"") && fenced.contains("group g"),
            "{fenced}"
        );
        assert!(
            fenced.contains("FENCED_INSTANCE_ID") && fenced.contains("KAFKA_GROUP_INSTANCE_ID")
        );
        let protocol = |uses: Option<&str>, kind: Option<&str>| {
            KafkaError::GroupProtocol {
                group: "g".into(),
                offered: vec!["cooperative-sticky".into()],
                group_uses: uses.map(str::to_owned),
                protocol_type: kind.map(str::to_owned),
            }
            .to_string()
        };
        let ours = protocol(Some("range"), None);
        assert!(
            ours.contains("uses the partition assignment strategy range")
                && ours.contains("KAFKA_PARTITION_ASSIGNMENT_STRATEGY=cooperative-sticky")
                && ours.contains("add range"),
            "{ours}"
        );
        let foreign = protocol(Some("roundrobin"), None);
        assert!(
            foreign.contains("roundrobin") && foreign.contains("cooperative-sticky"),
            "{foreign}"
        );
        let unnamed = protocol(None, None);
        assert!(unnamed.contains("did not say which"), "{unnamed}");
        let connect = protocol(Some("default"), Some("connect"));
        assert!(connect.contains("protocol type connect"), "{connect}");
        for e in [
            KafkaError::FencedInstanceId {
                group: "g".into(),
                instance_id: "i".into(),
            },
            KafkaError::StaticMembershipUnsupported {
                broker: "b:9092".into(),
                join_group: 3,
            },
        ] {
            assert!(
                e.is_fatal() && !e.is_retriable() && !e.is_connection(),
                "{e}"
            );
        }
    }
}
