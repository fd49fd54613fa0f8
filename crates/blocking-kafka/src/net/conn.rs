//! The connection every request of the client goes through: a [`Transport`] to one broker,
//! authenticated with SASL when the security settings say so (after ApiVersions, before any
//! other request), and kept authenticated.
//!
//! SASL sessions with a lifetime (KIP-368, `connections.max.reauth.ms`) are renewed in band,
//! on the same connection, as the Java client does: before a request is sent after 85 to 95 %
//! of the lifetime has passed, SaslHandshake and SaslAuthenticate run again. Renewing in band
//! keeps the TLS session, the broker's fetch state and the coordinator connection as they
//! are; the requests are sequential, so there is never one in flight to wait for.
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion};

use crate::error::{KafkaError, printable};
use crate::net::body::Body;
use crate::net::interrupt::Interrupt;
use crate::net::sasl;
use crate::net::security::Security;
use crate::net::settings::{SessionInfo, Timeouts};
use crate::net::throttle::Throttled;
use crate::net::transport::Transport;

/// An open, authenticated connection to one broker.
pub struct Connection {
    transport: Transport,
    /// When the SASL session must be renewed (KIP-368); `None`: it never expires.
    reauthenticate_at: Option<Instant>,
    /// The session lifetime the broker set at the last authentication, for `check`.
    session_lifetime: Option<Duration>,
}

impl Connection {
    /// Connects (with TLS when configured), learns the broker's API versions, and
    /// authenticates (when SASL is configured).
    /// `interrupt`: where to register the socket as soon as it exists, so that a thread
    /// blocked on this connection (or on setting it up) can be stopped.
    pub fn open(
        addr: &str,
        client_id: &str,
        timeouts: Timeouts,
        security: &Arc<Security>,
        interrupt: Option<&Interrupt>,
    ) -> Result<Connection, KafkaError> {
        let transport = Transport::open(addr, client_id, timeouts, security, interrupt)?;
        let mut conn = Connection {
            transport,
            reauthenticate_at: None,
            session_lifetime: None,
        };
        if security.sasl().is_some() {
            conn.authenticate()?;
        }
        Ok(conn)
    }

    /// False once a request failed in a way that leaves the stream unusable.
    pub fn is_usable(&self) -> bool {
        self.transport.is_usable()
    }

    /// What this connection negotiated: protocol, TLS version and cipher suite, the broker's
    /// certificate, the SASL identity. Never the password.
    pub fn session_info(&self) -> SessionInfo {
        let security = self.transport.security();
        SessionInfo {
            protocol: security.protocol(),
            tls: self.transport.tls_session(),
            sasl: security
                .sasl()
                .map(|s| (s.username.clone(), s.mechanism.as_str())),
            sasl_session_lifetime_ms: self
                .session_lifetime
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        }
    }

    pub fn addr(&self) -> &str {
        self.transport.addr()
    }

    /// The deadline of requests that are not long-polls.
    pub fn request_timeout(&self) -> Duration {
        self.transport.timeout()
    }

    /// Until when the broker throttles this connection (KIP-219), if it does now.
    pub fn throttled_until(&self) -> Option<Instant> {
        self.transport.throttled_until()
    }

    /// Notes the throttle time of an answer read with `call_streaming`.
    pub fn note_throttle(&mut self, ms: i32) {
        self.transport.note_throttle(ms);
    }

    /// The highest version of `key` that both we (`ours`, inclusive) and the broker speak.
    pub fn version(&self, key: ApiKey, ours: (i16, i16)) -> Result<i16, KafkaError> {
        self.transport.version(key, ours)
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
        let timeout = self.transport.timeout();
        self.call_with_timeout(key, version, request, timeout)
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
        self.renew_if_due()?;
        self.transport
            .call_with_timeout(key, version, request, timeout)
    }

    /// A request whose answer is read as it arrives: see [`Transport::call_streaming`].
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
        self.renew_if_due()?;
        self.transport.call_streaming(
            key,
            version,
            request,
            response_header_version,
            timeout,
            hold_up_to,
            read_body,
        )
    }

    /// Authenticates again if the SASL session is about to end.
    fn renew_if_due(&mut self) -> Result<(), KafkaError> {
        if self
            .reauthenticate_at
            .is_some_and(|at| Instant::now() >= at)
        {
            self.authenticate()?;
        }
        Ok(())
    }

    /// Authenticates with SASL (first time or again) and schedules the renewal. A failure
    /// leaves the connection unusable: brokers close it after a failed authentication.
    fn authenticate(&mut self) -> Result<(), KafkaError> {
        self.reauthenticate_at = None;
        let security = self.transport.security().clone();
        let Some(settings) = security.sasl() else {
            return Ok(());
        };
        let lifetime = sasl::authenticate(&mut self.transport, settings)
            .inspect_err(|_| self.transport.mark_broken())?;
        self.session_lifetime = lifetime;
        self.reauthenticate_at = lifetime.map(|l| {
            // Like the Java client: somewhere between 85 and 95 % of the lifetime, so that the
            // connections of many clients do not all renew at the same moment.
            let share = 0.85 + rand::random::<f64>() * 0.10;
            Instant::now() + l.mul_f64(share)
        });
        if let Some(l) = lifetime {
            log::debug!(
                "SASL session with {} lasts {l:?}; renewing it before then",
                // (The address may come from metadata: the broker's text.)
                printable(self.transport.addr())
            );
        }
        Ok(())
    }
}
