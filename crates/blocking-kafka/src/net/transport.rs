//! One TCP connection to one broker, plain or TLS, carrying typed `kafka-protocol`
//! requests: framing, correlation ids, deadlines, and the broker's API versions (asked once,
//! with ApiVersions). SASL is not its business: `conn` authenticates on top of it, and
//! `sasl` speaks through it.
//!
//! Requests are strictly one at a time (send, then read the answer), which is all a single
//! thread needs and keeps correlation trivial. Every read and write has a deadline,
//! so a broker that stops answering turns into an error the caller retries, never a hang.
//!
//! A listener that speaks the other protocol (TLS where we speak plaintext, or the
//! reverse) is recognised and named, so the error says which setting is wrong.
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};

use crate::error::{KafkaError, check_code, io_error};
use crate::net::body::Body;
use crate::net::interrupt::Interrupt;
use crate::net::security::Security;
use crate::net::settings::{Timeouts, TlsSessionInfo};
use crate::net::throttle::{Throttle, Throttled};
use crate::net::tls::{self, Stream};

/// The largest response we read into memory; anything bigger is a corrupt length prefix.
/// (Fetch answers, whose size the broker decides, are read as they arrive instead: see
/// `call_streaming`.)
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

/// The largest answer read before the connection is authenticated (ApiVersions and the SASL
/// exchange, which are small), and of the SASL exchange at any time. Until SASL completes
/// the peer is unproven (a stranger, or a man in the middle of a plaintext connection), and
/// its length prefix alone must not size our allocations. Kafka's own bound in the other
/// direction, `sasl.server.max.receive.size`, is the same 512 KiB.
pub(crate) const MAX_PRE_AUTH_ANSWER: usize = 512 * 1024;

/// One broker's socket and what is known about it: its address, its API versions, whether
/// it is still in step.
pub struct Transport {
    addr: String,
    stream: Stream,
    client_id: StrBytes,
    correlation_id: i32,
    /// The broker's supported version range per API key, learned once with ApiVersions.
    versions: HashMap<i16, (i16, i16)>,
    /// Read/write deadline for requests that are not long-polls.
    timeout: Duration,
    /// The settings this connection was opened with: the TLS context explains its errors,
    /// and `conn` authenticates with their SASL settings (again, when the session ends).
    security: Arc<Security>,
    /// Set when a request failed in a way that leaves the stream unusable (I/O, a timeout
    /// mid-answer, an undecodable answer, a failed re-authentication): the owner must open a
    /// new connection instead of using this one again.
    broken: bool,
    /// Set once SASL succeeded on this connection, or at once when it needs no SASL; until
    /// then every answer is held to [`MAX_PRE_AUTH_ANSWER`].
    authenticated: bool,
    /// Until when the broker throttles this connection (KIP-219): nothing is sent before.
    throttle: Throttle,
}

impl Transport {
    /// Connects (with TLS when configured) and learns the broker's API versions.
    /// `interrupt`: where to register the socket as soon as it exists, so that the
    /// thread's owner can cut even the set-up short (see `interrupt`).
    pub fn open(
        addr: &str,
        client_id: &str,
        timeouts: Timeouts,
        security: &Arc<Security>,
        interrupt: Option<&Interrupt>,
    ) -> Result<Transport, KafkaError> {
        let timeout = timeouts.request;
        let tcp = tcp_connect(addr, timeouts.connect)?;
        if let Some(interrupt) = interrupt {
            interrupt.register(addr, &tcp);
        }
        let stream = match security.tls() {
            Some(tls) => match tls.connect(tcp, addr, timeouts.connect) {
                Ok(s) => Stream::Tls(Box::new(s)),
                // No TLS answer at all: find out whether a plaintext Kafka listener is there,
                // so that the error can say which setting is wrong instead of "unreachable".
                Err(e @ (KafkaError::Io { .. } | KafkaError::Timeout { .. })) => {
                    if speaks_plaintext_kafka(addr, timeouts.connect) {
                        return Err(KafkaError::WrongProtocol {
                            broker: addr.to_owned(),
                            reason: format!(
                                "Kafka broker {addr} is a plaintext listener, but KAFKA_SECURITY_PROTOCOL={} asks for TLS: set it to {}, or use the broker's TLS listener",
                                security.protocol(),
                                if security.sasl().is_some() {
                                    "SASL_PLAINTEXT"
                                } else {
                                    "PLAINTEXT"
                                }
                            ),
                        });
                    }
                    return Err(e);
                }
                Err(e) => return Err(e),
            },
            None => Stream::Plain(tcp),
        };
        let mut conn = Transport {
            addr: addr.to_owned(),
            stream,
            client_id: StrBytes::from_string(client_id.to_owned()),
            correlation_id: 0,
            versions: HashMap::new(),
            timeout,
            security: security.clone(),
            broken: false,
            authenticated: false,
            throttle: Throttle::default(),
        };
        if let Err(e) = conn.learn_versions() {
            // A TLS listener hangs up on a plaintext request: ask it for a TLS handshake to
            // be sure, and then say so.
            if !conn.is_tls()
                && matches!(e, KafkaError::Io { .. })
                && tls::speaks_tls(addr, timeouts.connect)
            {
                return Err(KafkaError::WrongProtocol {
                    broker: addr.to_owned(),
                    reason: format!(
                        "Kafka broker {addr} is a TLS listener, but KAFKA_SECURITY_PROTOCOL={}: set it to {}",
                        security.protocol(),
                        if security.sasl().is_some() {
                            "SASL_SSL"
                        } else {
                            "SSL (or SASL_SSL if the listener also wants SASL)"
                        }
                    ),
                });
            }
            return Err(e);
        }
        // Without SASL, the connection is as authenticated as it will be (TLS, if any, is
        // done): its answers are bounded only by what Kafka sends.
        conn.authenticated = security.sasl().is_none();
        Ok(conn)
    }

    /// SASL succeeded: answers other than the SASL exchange's may now be large.
    pub(crate) fn mark_authenticated(&mut self) {
        self.authenticated = true;
    }

    /// False once a request failed in a way that leaves the stream unusable.
    pub fn is_usable(&self) -> bool {
        !self.broken
    }

    /// Marks the stream unusable (a failed authentication: brokers close the connection).
    pub fn mark_broken(&mut self) {
        self.broken = true;
    }

    pub fn is_tls(&self) -> bool {
        self.stream.tls().is_some()
    }

    /// What the TLS session negotiated and the broker's certificate; `None` on plain TCP.
    pub fn tls_session(&self) -> Option<TlsSessionInfo> {
        self.stream.tls().map(tls::session_info)
    }

    /// The settings this connection was opened with.
    pub fn security(&self) -> &Arc<Security> {
        &self.security
    }

    /// The deadline of requests that are not long-polls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Until when the broker throttles this connection, if it does now. A request sent
    /// before then waits for it first; a thread with other work waits for it itself.
    pub fn throttled_until(&self) -> Option<Instant> {
        self.throttle.until()
    }

    /// Notes the throttle time of an answer read with `call_streaming`.
    pub fn note_throttle(&mut self, ms: i32) {
        if ms > 0 {
            log::debug!(
                "Kafka broker {} throttles this client for {ms} ms",
                self.addr
            );
        }
        self.throttle.note(ms);
    }

    /// The highest version of `key` that both we (`ours`, inclusive) and the broker speak.
    pub fn version(&self, key: ApiKey, ours: (i16, i16)) -> Result<i16, KafkaError> {
        let theirs = self.versions.get(&(key as i16)).copied();
        match theirs {
            Some((lo, hi)) if lo <= ours.1 && ours.0 <= hi => Ok(hi.min(ours.1)),
            _ => Err(KafkaError::UnsupportedVersion {
                broker: self.addr.clone(),
                api: api_name(key),
                ours,
                theirs,
            }),
        }
    }

    /// Sends one request and waits for its answer, within the connection's timeout.
    pub fn call<Req, Resp>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
    ) -> Result<Resp, KafkaError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion + Throttled,
    {
        self.call_with_timeout(key, version, request, self.timeout)
    }

    /// Like `call`, for requests the broker may hold (fetch long-polls, group joins).
    pub fn call_with_timeout<Req, Resp>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, KafkaError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion + Throttled,
    {
        self.exchange(key, version, request, timeout)
    }

    fn exchange<Req, Resp>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, KafkaError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion + Throttled,
    {
        let result = self.exchange_once(key, version, request, timeout);
        if let Err(e) = &result
            && !matches!(e, KafkaError::UnsupportedVersion { .. })
        {
            self.broken = true;
        }
        result
    }

    fn exchange_once<Req, Resp>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, KafkaError>
    where
        Req: Encodable + HeaderVersion,
        Resp: Decodable + HeaderVersion + Throttled,
    {
        let what = api_name(key);
        let (correlation_id, len) = self.send(key, version, request, timeout)?;
        self.check_pre_auth_length(key, len)?;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_RESPONSE_BYTES)
            .ok_or_else(|| self.protocol(format!("{what} response with length {len}")))?;
        let mut body = vec![0u8; len];
        self.stream
            .read_exact(&mut body)
            .map_err(|source| self.io_error(what, timeout, source))?;
        let mut body = Bytes::from(body);

        let response_header = ResponseHeader::decode(&mut body, Resp::header_version(version))
            .map_err(|e| self.protocol(format!("decoding {what} response header: {e}")))?;
        if response_header.correlation_id != correlation_id {
            return Err(self.protocol(format!(
                "{what} answer carries correlation id {} instead of {correlation_id}",
                response_header.correlation_id
            )));
        }
        let response = Resp::decode(&mut body, version)
            .map_err(|e| self.protocol(format!("decoding {what} v{version} response: {e}")))?;
        self.note_throttle(response.throttle_ms());
        Ok(response)
    }

    /// Like `call_with_timeout`, for answers whose size the broker decides (a fetch
    /// returns a first record batch whole, however large: KIP-74): `read_body` reads the
    /// body (after the response header, whose version is `response_header_version`) from
    /// a [`Body`]. An answer of up to `hold_up_to` bytes is read into memory first, in one
    /// piece that its parts are sliced from without copying; a larger one is read as it
    /// arrives and never held whole. Whatever `read_body` leaves unread is read and dropped,
    /// so the connection stays in step. After an error the connection is out of step: drop it.
    #[allow(clippy::too_many_arguments)]
    pub fn call_streaming<Req, T>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        response_header_version: i16,
        timeout: Duration,
        hold_up_to: usize,
        read_body: impl FnOnce(&mut Body<'_>) -> Result<T, KafkaError>,
    ) -> Result<T, KafkaError>
    where
        Req: Encodable + HeaderVersion,
    {
        // Any failure leaves the connection out of step: it is not used again.
        self.broken = true;
        let what = api_name(key);
        let (correlation_id, len) = self.send(key, version, request, timeout)?;
        self.check_pre_auth_length(key, len)?;
        let len = u64::try_from(len)
            .map_err(|_| self.protocol(format!("{what} response with length {len}")))?;
        let mut body = match usize::try_from(len).ok().filter(|l| *l <= hold_up_to) {
            Some(len) => {
                let mut whole = vec![0u8; len];
                self.stream
                    .read_exact(&mut whole)
                    .map_err(|source| self.io_error(what, timeout, source))?;
                Body::memory(Bytes::from(whole), &self.addr, what, timeout)
            }
            None => Body::stream(&mut self.stream, len, &self.addr, what, timeout),
        };
        let answered = body.i32()?;
        if answered != correlation_id {
            return Err(body.protocol(format!(
                "{what} answer carries correlation id {answered} instead of {correlation_id}"
            )));
        }
        if response_header_version >= 1 {
            body.skip_tagged_fields()?;
        }
        let out = read_body(&mut body)?;
        body.drain()?;
        self.broken = false;
        Ok(out)
    }

    /// Sends one request; returns its correlation id and the length of the answer.
    fn send<Req>(
        &mut self,
        key: ApiKey,
        version: i16,
        request: &Req,
        timeout: Duration,
    ) -> Result<(i32, i32), KafkaError>
    where
        Req: Encodable + HeaderVersion,
    {
        let what = api_name(key);
        // KIP-219: the broker mutes a throttled connection; a request sent now would wait
        // there (and could time out here).
        if let Some(until) = self.throttle.until() {
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
        }
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()));
        let mut frame = encode_frame(&header, Req::header_version(version), request, version)
            .map_err(|detail| self.protocol(format!("encoding {what} v{version}: {detail}")))?;

        self.stream
            .tcp()
            .set_write_timeout(Some(timeout))
            .and_then(|()| self.stream.tcp().set_read_timeout(Some(timeout)))
            .map_err(|source| self.io_error(what, timeout, source))?;
        // A SaslAuthenticate frame carries the password (PLAIN) or the proof (SCRAM).
        write_frame(
            &mut self.stream,
            &mut frame,
            key == ApiKey::SaslAuthenticate,
        )
        .map_err(|source| self.io_error(what, timeout, source))?;

        let mut len = [0u8; 4];
        self.stream
            .read_exact(&mut len)
            .map_err(|source| self.io_error(what, timeout, source))?;
        if !self.is_tls() && tls::looks_like_tls(&len) {
            return Err(KafkaError::WrongProtocol {
                broker: self.addr.clone(),
                reason: format!(
                    "Kafka broker {} answered in TLS, but KAFKA_SECURITY_PROTOCOL={}: set it to {}",
                    self.addr,
                    self.security.protocol(),
                    if self.security.sasl().is_some() {
                        "SASL_SSL"
                    } else {
                        "SSL (or SASL_SSL if the listener also wants SASL)"
                    }
                ),
            });
        }
        Ok((correlation_id, i32::from_be_bytes(len)))
    }

    /// Refuses an answer of `len` bytes (its length prefix, read so far) over
    /// [`MAX_PRE_AUTH_ANSWER`] before the connection is authenticated, and in the SASL
    /// exchange at any time: refused before anything is allocated for it.
    fn check_pre_auth_length(&self, key: ApiKey, len: i32) -> Result<(), KafkaError> {
        let sasl = matches!(key, ApiKey::SaslHandshake | ApiKey::SaslAuthenticate);
        if (self.authenticated && !sasl)
            || usize::try_from(len).is_ok_and(|l| l <= MAX_PRE_AUTH_ANSWER)
        {
            return Ok(());
        }
        Err(self.protocol(format!(
            "{} answer of {len} bytes before authentication: at most {MAX_PRE_AUTH_ANSWER} are read before SASL completes (Kafka's own sasl.server.max.receive.size); is something other than a Kafka broker listening, or between us and it?",
            api_name(key)
        )))
    }

    fn learn_versions(&mut self) -> Result<(), KafkaError> {
        // Version 2 is understood by every broker since Kafka 2.0 and by Kafka 4.x; it is not
        // "flexible", so a broker that knows nothing newer still answers in a form we decode.
        let request = ApiVersionsRequest::default();
        let response: ApiVersionsResponse = self.call(ApiKey::ApiVersions, 2, &request)?;
        check_code("ApiVersions", response.error_code)?;
        self.versions = response
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(())
    }

    fn io_error(&self, what: &'static str, after: Duration, source: std::io::Error) -> KafkaError {
        if let Some(tls) = self.security.tls()
            && self.is_tls()
        {
            return tls.failure(&self.addr, what, after, source, false);
        }
        // A plaintext client whose very first request is hung up on may be talking to a TLS
        // listener (which reads our request as a broken ClientHello). It stays an outage
        // (retried: a restarting broker also hangs up), with the likelier cause attached.
        let source = if self.versions.is_empty()
            && matches!(
                source.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
            ) {
            std::io::Error::new(
                source.kind(),
                format!(
                    "{source}; if it is a TLS listener, set KAFKA_SECURITY_PROTOCOL=SSL or SASL_SSL"
                ),
            )
        } else {
            source
        };
        io_error(&self.addr, what, after, source)
    }

    fn protocol(&self, detail: String) -> KafkaError {
        KafkaError::Protocol {
            broker: self.addr.clone(),
            detail,
        }
    }
}

/// A TCP connection to `addr` (each address it resolves to, in turn), with no-delay and
/// `timeout` as its read and write deadline.
fn tcp_connect(addr: &str, timeout: Duration) -> Result<TcpStream, KafkaError> {
    let io = |source| KafkaError::Io {
        broker: addr.to_owned(),
        what: "connect",
        source,
    };
    let mut last = None;
    let mut stream = None;
    for sock in addr.to_socket_addrs().map_err(io)? {
        match TcpStream::connect_timeout(&sock, timeout) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let stream = match (stream, last) {
        (Some(s), _) => s,
        (None, Some(e)) => return Err(io(e)),
        (None, None) => {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the host name resolved to no address",
            )));
        }
    };
    // Requests are small and latency matters more than packet count.
    stream.set_nodelay(true).map_err(io)?;
    // The TLS handshake runs under the connect deadline; requests set their own.
    stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .map_err(io)?;
    Ok(stream)
}

/// Whether a plaintext Kafka listener answers at `addr`: one ApiVersions v0 on a fresh
/// connection. Only asked after a TLS handshake got no TLS answer, to explain it.
fn speaks_plaintext_kafka(addr: &str, timeout: Duration) -> bool {
    let probe = || -> Option<bool> {
        let mut tcp = tcp_connect(addr, timeout.min(Duration::from_secs(2))).ok()?;
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::ApiVersions as i16)
            .with_request_api_version(0)
            .with_correlation_id(0x5a5a)
            .with_client_id(Some(StrBytes::from_static_str("probe")));
        let frame = encode_frame(
            &header,
            ApiVersionsRequest::header_version(0),
            &ApiVersionsRequest::default(),
            0,
        )
        .ok()?;
        tcp.write_all(&frame).ok()?;
        let mut head = [0u8; 8];
        tcp.read_exact(&mut head).ok()?;
        Some(head[4..8] == 0x5a5a_i32.to_be_bytes())
    };
    probe().unwrap_or(false)
}

/// Writes a whole frame and flushes; a `secret` one is then wiped, whether or not the write
/// succeeded (not just freed: `encode_frame` made it in one allocation, so this is its only
/// copy of ours).
fn write_frame(out: &mut impl Write, frame: &mut [u8], secret: bool) -> std::io::Result<()> {
    let written = out.write_all(frame).and_then(|()| out.flush());
    if secret {
        zeroize::Zeroize::zeroize(frame);
    }
    written
}

/// Encodes `size | header | body` into one buffer, allocated at its exact size: it never
/// grows, so a frame that holds a secret leaves no copy behind in a reallocation, and the
/// caller can wipe all of it. Public to the crate so tests can decode what we would send.
pub(crate) fn encode_frame<Req: Encodable>(
    header: &RequestHeader,
    header_version: i16,
    request: &Req,
    version: i16,
) -> Result<BytesMut, String> {
    let size = header
        .compute_size(header_version)
        .and_then(|h| Ok(h + request.compute_size(version)?))
        .map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(4 + size);
    buf.put_i32(0);
    header
        .encode(&mut buf, header_version)
        .map_err(|e| e.to_string())?;
    request
        .encode(&mut buf, version)
        .map_err(|e| e.to_string())?;
    let size = i32::try_from(buf.len() - 4).map_err(|e| e.to_string())?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf)
}

pub(crate) fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::Metadata => "Metadata",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Fetch => "Fetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::Produce => "Produce",
        ApiKey::InitProducerId => "InitProducerId",
        _ => "a Kafka request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::SaslAuthenticateRequest;

    fn header(key: ApiKey, version: i16) -> RequestHeader {
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(7)
            .with_client_id(Some(StrBytes::from_static_str("client")))
    }

    #[test]
    fn a_sasl_frame_is_made_in_one_allocation_and_wiped_once_written() {
        for version in [0, 1, 2] {
            let request = SaslAuthenticateRequest::default()
                .with_auth_bytes(Bytes::from_static(b"\0alice\0hunter2"));
            let mut frame = encode_frame(
                &header(ApiKey::SaslAuthenticate, version),
                SaslAuthenticateRequest::header_version(version),
                &request,
                version,
            )
            .expect("encodes");
            assert_eq!(
                frame.capacity(),
                frame.len(),
                "v{version}: the frame grew, and a reallocation may have left a copy"
            );
            let mut sent = Vec::new();
            write_frame(&mut sent, &mut frame, true).expect("write");
            assert!(sent.windows(7).any(|w| w == b"hunter2"), "v{version}");
            assert!(frame.iter().all(|b| *b == 0), "v{version}: {frame:?}");
        }
        // Frames without a secret are only written.
        let mut frame = encode_frame(
            &header(ApiKey::ApiVersions, 2),
            ApiVersionsRequest::header_version(2),
            &ApiVersionsRequest::default(),
            2,
        )
        .expect("encodes");
        write_frame(&mut Vec::new(), &mut frame, false).expect("write");
        assert!(frame.iter().any(|b| *b != 0));
    }
}
