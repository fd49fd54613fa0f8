//! Produce errors on demand, for a proxy that reads Kafka frames ([`super::proxy`]).
//!
//! tansu accepts records of any size, from anyone, so it never answers MESSAGE_TOO_LARGE,
//! TOPIC_AUTHORIZATION_FAILED and the like; and an acknowledgement lost after the broker
//! wrote the batch cannot be arranged with a plain cut. [`ProduceFaults`] holds a plan, one
//! [`Fault`] per Produce request to its topic, applied in order:
//!
//! - [`Fault::Refuse`]: the proxy answers in the broker's place with an error code, and the
//!   broker never sees the request, exactly as a broker refusing a batch never writes it
//!   (rewriting the answer of a request the broker executed would leave the record written).
//! - [`Fault::RefuseThrottled`]: the same, with a throttle time in the answer, as Azure
//!   Event Hubs answers a client over its quota (POLICY_VIOLATION with `throttle_time_ms`).
//! - [`Fault::RewriteAnswer`]: the request goes to the broker, which writes the batch; its
//!   answer reaches the client with this error code instead: a lost acknowledgement.
//! - [`Fault::Pass`]: forwarded untouched (to let one request through, then fault the next).
//!
//! Requests and answers are decoded and encoded with kafka-protocol (the `broker` feature,
//! in the tests only).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

/// What to do with one Produce request to the faulty topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Refuse(i16),
    /// Refused with this error code and this `throttle_time_ms` (milliseconds).
    RefuseThrottled(i16, i32),
    RewriteAnswer(i16),
    Pass,
}

/// The plan of faults for Produce requests to one topic, and what was done.
pub struct ProduceFaults {
    topic: String,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    plan: VecDeque<Fault>,
    /// Every Produce request to the topic so far, with the fault applied (`Pass` when the
    /// plan was empty) and the size of its record batch.
    seen: Vec<(Fault, usize)>,
}

/// What the proxy does with a request frame.
pub enum Verdict {
    Forward,
    /// Forward, and give the answer with this correlation id the error `code`.
    Rewrite {
        correlation_id: i32,
        version: i16,
        code: i16,
    },
    /// Do not forward; send this frame to the client instead.
    Answer(Vec<u8>),
}

/// Kafka's error codes the tests use.
pub const REQUEST_TIMED_OUT: i16 = 7;
pub const MESSAGE_TOO_LARGE: i16 = 10;
pub const POLICY_VIOLATION: i16 = 44;

const PRODUCE: i16 = 0;

impl ProduceFaults {
    pub fn new(topic: &str) -> Arc<ProduceFaults> {
        Arc::new(ProduceFaults {
            topic: topic.to_owned(),
            state: Mutex::default(),
        })
    }

    /// Appends faults for the next Produce requests to the topic.
    pub fn plan(&self, faults: &[Fault]) {
        self.lock().plan.extend(faults.iter().copied());
    }

    /// Every Produce request to the topic so far: the fault applied and the batch size.
    pub fn seen(&self) -> Vec<(Fault, usize)> {
        self.lock().seen.clone()
    }

    /// Decides about one request frame (size prefix included).
    pub fn on_request(&self, frame: &[u8]) -> Verdict {
        let Some(request) = decode_produce(frame) else {
            return Verdict::Forward;
        };
        let (header, version, produce) = request;
        let Some(topic) = produce
            .topic_data
            .iter()
            .find(|t| t.name.0.as_str() == self.topic)
        else {
            return Verdict::Forward;
        };
        let size: usize = topic
            .partition_data
            .iter()
            .map(|p| p.records.as_ref().map_or(0, Bytes::len))
            .sum();
        let mut state = self.lock();
        let fault = state.plan.pop_front().unwrap_or(Fault::Pass);
        state.seen.push((fault, size));
        match fault {
            Fault::Pass => Verdict::Forward,
            Fault::RewriteAnswer(code) => Verdict::Rewrite {
                correlation_id: header.correlation_id,
                version,
                code,
            },
            Fault::Refuse(code) => Verdict::Answer(refusal(&header, version, &produce, code, 0)),
            Fault::RefuseThrottled(code, throttle_ms) => {
                Verdict::Answer(refusal(&header, version, &produce, code, throttle_ms))
            }
        }
    }

    /// The answer frame `frame` with every partition's error code set to `code`.
    pub fn rewrite_answer(&self, frame: &[u8], version: i16, code: i16) -> Vec<u8> {
        let mut body = Bytes::copy_from_slice(&frame[4..]);
        let header = ResponseHeader::decode(&mut body, ProduceResponse::header_version(version))
            .expect("decode a Produce answer's header");
        let mut response =
            ProduceResponse::decode(&mut body, version).expect("decode a Produce answer");
        for t in &mut response.responses {
            for p in &mut t.partition_responses {
                *p = refused(p.index, code);
            }
        }
        encode_answer(header.correlation_id, version, &response)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The request header, API version and request, when `frame` is a Produce request.
fn decode_produce(frame: &[u8]) -> Option<(RequestHeader, i16, ProduceRequest)> {
    let key = i16::from_be_bytes([*frame.get(4)?, *frame.get(5)?]);
    let version = i16::from_be_bytes([*frame.get(6)?, *frame.get(7)?]);
    if key != PRODUCE {
        return None;
    }
    let mut body = Bytes::copy_from_slice(&frame[4..]);
    let header = RequestHeader::decode(&mut body, ProduceRequest::header_version(version))
        .expect("decode a Produce request's header");
    let request = ProduceRequest::decode(&mut body, version).expect("decode a Produce request");
    Some((header, version, request))
}

/// The broker's answer refusing every partition of `produce` with `code`.
fn refusal(
    header: &RequestHeader,
    version: i16,
    produce: &ProduceRequest,
    code: i16,
    throttle_ms: i32,
) -> Vec<u8> {
    let response = ProduceResponse::default()
        .with_throttle_time_ms(throttle_ms)
        .with_responses(
            produce
                .topic_data
                .iter()
                .map(|t| {
                    TopicProduceResponse::default()
                        .with_name(t.name.clone())
                        .with_partition_responses(
                            t.partition_data
                                .iter()
                                .map(|p| refused(p.index, code))
                                .collect(),
                        )
                })
                .collect(),
        );
    encode_answer(header.correlation_id, version, &response)
}

fn refused(index: i32, code: i16) -> PartitionProduceResponse {
    PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}

fn encode_answer(correlation_id: i32, version: i16, response: &ProduceResponse) -> Vec<u8> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[0, 0, 0, 0]);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, ProduceResponse::header_version(version))
        .expect("encode a Produce answer's header");
    response
        .encode(&mut buf, version)
        .expect("encode a Produce answer");
    let size = i32::try_from(buf.len() - 4).expect("a small answer");
    buf[..4].copy_from_slice(&size.to_be_bytes());
    buf.to_vec()
}
