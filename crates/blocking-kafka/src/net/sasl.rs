//! SASL authentication on a Kafka connection: SaslHandshake (v1), then SaslAuthenticate
//! frames (v0 to v2), with PLAIN or SCRAM-SHA-256/512.
//!
//! The SCRAM messages themselves (nonce, proof, the server's signature) are computed by
//! `scram`, without I/O; this module carries them over the transport and turns refusals into
//! errors that name the user, the mechanism and the broker's own words.
//!
//! The same exchange runs again on an open connection to re-authenticate (KIP-368), without
//! ApiVersions, when the broker set a session lifetime (see `conn`).
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use kafka_protocol::messages::{
    ApiKey, SaslAuthenticateRequest, SaslAuthenticateResponse, SaslHandshakeRequest,
    SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::error::KafkaError;
use crate::net::scram::{ScramClient, ScramHash};
use crate::net::settings::{SaslMechanism, SaslSettings};
use crate::net::transport::Transport;

const SASL_HANDSHAKE_VERSIONS: (i16, i16) = (1, 1);
const SASL_AUTHENTICATE_VERSIONS: (i16, i16) = (0, 2);

// Kafka error codes of the SASL exchange.
const UNSUPPORTED_SASL_MECHANISM: i16 = 33;
const ILLEGAL_SASL_STATE: i16 = 34;

/// Authenticates the connection `transport` with `sasl`; returns the session lifetime the
/// broker set, if any.
pub(crate) fn authenticate(
    transport: &mut Transport,
    sasl: &SaslSettings,
) -> Result<Option<Duration>, KafkaError> {
    let mechanism = sasl.mechanism.as_str();
    let addr = transport.addr().to_owned();
    let handshake_version = match transport.version(ApiKey::SaslHandshake, SASL_HANDSHAKE_VERSIONS)
    {
        Ok(v) => v,
        Err(_) => {
            return Err(KafkaError::WrongProtocol {
                broker: addr.clone(),
                reason: format!(
                    "Kafka broker {addr} does not offer SASL authentication (no SaslHandshake v1 among its APIs): if its listener needs no SASL, set KAFKA_SECURITY_PROTOCOL={}",
                    if transport.is_tls() {
                        "SSL"
                    } else {
                        "PLAINTEXT"
                    }
                ),
            });
        }
    };
    let request =
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str(mechanism));
    let response: SaslHandshakeResponse =
        transport.call(ApiKey::SaslHandshake, handshake_version, &request)?;
    match response.error_code {
        0 => {}
        UNSUPPORTED_SASL_MECHANISM => {
            return Err(KafkaError::SaslMechanism {
                broker: addr,
                wanted: mechanism,
                enabled: response
                    .mechanisms
                    .iter()
                    .map(|m| m.as_str().to_owned())
                    .collect(),
            });
        }
        ILLEGAL_SASL_STATE => {
            return Err(KafkaError::WrongProtocol {
                broker: addr.clone(),
                reason: format!(
                    "Kafka broker {addr} does not expect SASL on this listener (ILLEGAL_SASL_STATE): set KAFKA_SECURITY_PROTOCOL={}, or use the broker's SASL listener",
                    if transport.is_tls() {
                        "SSL"
                    } else {
                        "PLAINTEXT"
                    }
                ),
            });
        }
        code => {
            return Err(KafkaError::Broker {
                what: "SaslHandshake",
                code,
            });
        }
    }

    let version = transport.version(ApiKey::SaslAuthenticate, SASL_AUTHENTICATE_VERSIONS)?;
    let password = sasl.password.get();
    let mut exchange = Exchange {
        transport,
        version,
        user: &sasl.username,
        mechanism,
    };
    let last = match sasl.mechanism {
        SaslMechanism::Plain => {
            let mut message = Vec::with_capacity(sasl.username.len() + password.len() + 2);
            message.push(0);
            message.extend_from_slice(sasl.username.as_bytes());
            message.push(0);
            message.extend_from_slice(password.as_bytes());
            exchange.round(message)?
        }
        SaslMechanism::ScramSha256 => scram::<sha2::Sha256>(&mut exchange, &password)?,
        SaslMechanism::ScramSha512 => scram::<sha2::Sha512>(&mut exchange, &password)?,
    };
    Ok(u64::try_from(last.session_lifetime_ms)
        .ok()
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis))
}

/// One SASL conversation on one connection.
struct Exchange<'a> {
    transport: &'a mut Transport,
    version: i16,
    user: &'a str,
    mechanism: &'static str,
}

impl Exchange<'_> {
    /// Sends one SASL message and returns the broker's answer; a refusal is `Authentication`
    /// with the broker's own words.
    fn round(&mut self, message: Vec<u8>) -> Result<SaslAuthenticateResponse, KafkaError> {
        let request = SaslAuthenticateRequest::default().with_auth_bytes(Bytes::from(message));
        let response: SaslAuthenticateResponse =
            self.transport
                .call(ApiKey::SaslAuthenticate, self.version, &request)?;
        if response.error_code != 0 {
            let message = match response.error_message.as_ref().map(|m| m.as_str()) {
                Some(m) if !m.is_empty() => m.to_owned(),
                _ => match kafka_protocol::error::ResponseError::try_from_code(response.error_code)
                {
                    Some(e) => format!("{e:?} (error code {})", response.error_code),
                    None => format!("error code {}", response.error_code),
                },
            };
            return Err(self.failed(message));
        }
        Ok(response)
    }

    fn failed(&self, message: String) -> KafkaError {
        KafkaError::Authentication {
            broker: self.transport.addr().to_owned(),
            user: self.user.to_owned(),
            mechanism: self.mechanism,
            message,
        }
    }
}

/// The SCRAM conversation: client-first, server-first, client-final, server-final.
fn scram<H: ScramHash>(
    exchange: &mut Exchange<'_>,
    password: &str,
) -> Result<SaslAuthenticateResponse, KafkaError> {
    let nonce = B64.encode(rand::random::<[u8; 24]>());
    let client = ScramClient::<H>::new(exchange.user, &nonce);
    let server_first = exchange.round(client.first_message().into_bytes())?;
    let server_first = String::from_utf8_lossy(&server_first.auth_bytes).into_owned();
    let (client_final, expected) = client
        .final_message(password, &server_first)
        .map_err(|e| exchange.failed(e))?;
    let server_final = exchange.round(client_final.into_bytes())?;
    let text = String::from_utf8_lossy(&server_final.auth_bytes).into_owned();
    ScramClient::<H>::verify_server_final(&text, &expected).map_err(|e| exchange.failed(e))?;
    Ok(server_final)
}
