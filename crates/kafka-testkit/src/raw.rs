//! A bare Kafka connection for tests that need to see one request's exact answer (an error
//! code, a throttle time, how long the answer took): typed requests and answers from
//! kafka-protocol, one at a time, no retries, no version negotiation.
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};

/// One TCP connection to a broker.
pub struct RawConnection {
    stream: TcpStream,
    next_correlation: i32,
}

impl RawConnection {
    /// Connects to `addr` ("host:port"); reads give up after `timeout`.
    pub fn connect(addr: &str, timeout: Duration) -> io::Result<RawConnection> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(RawConnection {
            stream,
            next_correlation: 1,
        })
    }

    /// Sends `request` at `version` and reads its answer. An I/O error (the connection
    /// closed, the read timed out) is returned; an answer that does not decode panics.
    pub fn call<R: Request>(&mut self, version: i16, request: &R) -> io::Result<R::Response> {
        let correlation_id = self.send(version, request)?;
        self.receive::<R>(version, correlation_id)
    }

    /// Sends `request` without reading an answer; returns its correlation id.
    pub fn send<R: Request>(&mut self, version: i16, request: &R) -> io::Result<i32> {
        let correlation_id = self.next_correlation;
        self.next_correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("kafka-testkit-raw")));
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[0; 4]);
        header
            .encode(&mut frame, R::header_version(version))
            .expect("encode a request header");
        request
            .encode(&mut frame, version)
            .unwrap_or_else(|e| panic!("encode {} v{version}: {e}", R::KEY));
        let size = (frame.len() - 4) as i32;
        frame[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&frame)?;
        Ok(correlation_id)
    }

    /// Reads the answer to the request sent with `correlation_id` (answers come in order).
    pub fn receive<R: Request>(
        &mut self,
        version: i16,
        correlation_id: i32,
    ) -> io::Result<R::Response> {
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size)?;
        let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        self.stream.read_exact(&mut body)?;
        let mut body = Bytes::from(body);
        let header = ResponseHeader::decode(
            &mut body,
            <R::Response as HeaderVersion>::header_version(version),
        )
        .expect("decode an answer's header");
        assert_eq!(
            header.correlation_id, correlation_id,
            "answers out of order: expected correlation id {correlation_id}"
        );
        Ok(R::Response::decode(&mut body, version)
            .unwrap_or_else(|e| panic!("decode the answer to API {} v{version}: {e}", R::KEY)))
    }
}
