//! One connection's bytes: [`Wire`] frames backend messages off the stream under a length
//! bound (small before authentication, `max_message_len` after), grows a message's buffer
//! only as its bytes arrive (never by what the header claims), hands complete messages to
//! postgres-protocol's parser, and writes frontend messages from one buffer. It applies
//! the deadline of the start-up and the I/O timeout after it.
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use postgres_protocol::message::backend::Message;

use crate::error::Error;
use crate::tls::{Stream, TlsSetup, io_error};

/// Bytes read from the socket at a time, and the most a message's buffer grows by before
/// more of it has arrived.
const READ_CHUNK: usize = 16 * 1024;

/// A framed connection.
pub(crate) struct Wire {
    stream: Stream,
    /// "host:port", for errors.
    pub(crate) addr: String,
    /// `host`, for TLS errors that name it.
    host: String,
    /// The TLS setup the stream was made with (for its error words), if TLS.
    tls: Option<std::sync::Arc<TlsSetup>>,
    /// Bytes read but not yet framed: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    /// Frontend messages waiting for `send`.
    pub(crate) out: BytesMut,
    /// The longest message body accepted now.
    limit: usize,
    before_auth: bool,
    /// During start-up: when the whole of it must be done (`connect_timeout`).
    deadline: Option<Instant>,
    /// The limit `deadline` was set from, or the I/O timeout: for `Error::Timeout`.
    timeout: Option<Duration>,
}

impl Wire {
    /// Frames `stream`; until `authenticated` is called, messages are bounded by
    /// `crate::config::MAX_MESSAGE_LEN_BEFORE_AUTH` and all I/O by `deadline`.
    pub(crate) fn new(
        stream: Stream,
        addr: String,
        host: String,
        tls: Option<std::sync::Arc<TlsSetup>>,
        deadline: Instant,
        connect_timeout: Duration,
    ) -> Wire {
        Wire {
            stream,
            addr,
            host,
            tls,
            input: vec![0; READ_CHUNK].into_boxed_slice(),
            start: 0,
            end: 0,
            out: BytesMut::with_capacity(1024),
            limit: crate::config::MAX_MESSAGE_LEN_BEFORE_AUTH,
            before_auth: true,
            deadline: Some(deadline),
            timeout: Some(connect_timeout),
        }
    }

    pub(crate) fn stream(&self) -> &Stream {
        &self.stream
    }

    /// Authentication succeeded: from now on messages may be as long as `limit`.
    pub(crate) fn authenticated(&mut self, limit: usize) {
        self.limit = limit;
        self.before_auth = false;
    }

    /// Start-up is over: each read and write is bounded by `io_timeout` instead of the
    /// start-up's deadline.
    pub(crate) fn started(&mut self, io_timeout: Option<Duration>) -> Result<(), Error> {
        self.deadline = None;
        self.timeout = io_timeout;
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(io_timeout)
            .and_then(|()| tcp.set_write_timeout(io_timeout))
            .map_err(|e| self.io_failure("start-up", e))
    }

    /// Writes everything in `out`, then empties it. `secret`: `out` held a password (or a
    /// hash as good as one), so its bytes are wiped, not just forgotten.
    pub(crate) fn send(&mut self, what: &'static str, secret: bool) -> Result<(), Error> {
        self.apply_deadline(what)?;
        let result = self
            .stream
            .write_all(&self.out)
            .and_then(|()| self.stream.flush());
        if secret {
            zeroize::Zeroize::zeroize(&mut self.out[..]);
        }
        self.out.clear();
        result.map_err(|e| self.io_failure(what, e))
    }

    /// The next backend message, whole.
    pub(crate) fn read_message(&mut self, what: &'static str) -> Result<Message, Error> {
        let mut header = [0u8; 5];
        self.fill(&mut header, what)?;
        let tag = header[0];
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if len < 4 {
            return Err(Error::Protocol {
                addr: self.addr.clone(),
                detail: format!(
                    "message '{}' with length {len}, less than its own length field",
                    char::from(tag).escape_default()
                ),
            });
        }
        let body_len = len - 4;
        if body_len > self.limit {
            return Err(Error::MessageTooLarge {
                addr: self.addr.clone(),
                tag,
                len: body_len,
                limit: self.limit,
                before_auth: self.before_auth,
            });
        }
        // The buffer grows with what has arrived, a chunk at a time: a header that lies
        // about its length costs at most one chunk before the connection times out.
        let mut message = BytesMut::with_capacity(5 + body_len.min(READ_CHUNK));
        message.extend_from_slice(&header);
        let mut remaining = body_len;
        while remaining > 0 {
            if self.start == self.end {
                self.refill(what)?;
            }
            let take = remaining.min(self.end - self.start);
            message.extend_from_slice(&self.input[self.start..self.start + take]);
            self.start += take;
            remaining -= take;
        }
        match Message::parse(&mut message) {
            Ok(Some(message)) => Ok(message),
            // Unreachable: the buffer holds the whole message.
            Ok(None) => Err(Error::Protocol {
                addr: self.addr.clone(),
                detail: "a message shorter than its header says".to_owned(),
            }),
            Err(e) => Err(Error::Protocol {
                addr: self.addr.clone(),
                detail: format!(
                    "a malformed message '{}' ({e})",
                    char::from(tag).escape_default()
                ),
            }),
        }
    }

    /// Exactly one byte, read straight from the socket, for the answer to SSLRequest.
    /// Nothing is buffered beyond it: bytes a man in the middle sends after the 'S' must
    /// not be taken as if they came through TLS (CVE-2021-23222).
    pub(crate) fn read_ssl_answer(tcp: &mut std::net::TcpStream, addr: &str) -> Result<u8, Error> {
        let mut byte = [0u8; 1];
        tcp.read_exact(&mut byte)
            .map_err(|e| io_error(addr, "the TLS negotiation", e))?;
        Ok(byte[0])
    }

    /// Fills `buf` from the input buffer and the socket.
    fn fill(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), Error> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.start == self.end {
                self.refill(what)?;
            }
            let take = (buf.len() - filled).min(self.end - self.start);
            buf[filled..filled + take].copy_from_slice(&self.input[self.start..self.start + take]);
            self.start += take;
            filled += take;
        }
        Ok(())
    }

    /// Reads what the socket has (at least one byte) into the empty input buffer.
    fn refill(&mut self, what: &'static str) -> Result<(), Error> {
        self.apply_deadline(what)?;
        loop {
            match self.stream.read(&mut self.input) {
                Ok(0) => {
                    return Err(Error::Io {
                        addr: self.addr.clone(),
                        what,
                        source: std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "the server closed the connection",
                        ),
                    });
                }
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.io_failure(what, e)),
            }
        }
    }

    /// During start-up, bounds the next read or write by what is left of the deadline.
    fn apply_deadline(&mut self, what: &'static str) -> Result<(), Error> {
        let Some(deadline) = self.deadline else {
            return Ok(());
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                addr: self.addr.clone(),
                what,
                after: self.timeout.unwrap_or_default(),
            });
        }
        let tcp = self.stream.tcp();
        tcp.set_read_timeout(Some(left))
            .and_then(|()| tcp.set_write_timeout(Some(left)))
            .map_err(|e| self.io_failure(what, e))
    }

    /// A socket or TLS error as an `Error`, with the timeout in force.
    fn io_failure(&self, what: &'static str, e: std::io::Error) -> Error {
        let error = match &self.tls {
            Some(tls) => tls.failure(&self.addr, &self.host, what, e),
            None => io_error(&self.addr, what, e),
        };
        match error {
            Error::Timeout { addr, what, .. } => Error::Timeout {
                addr,
                what,
                after: self.timeout.unwrap_or_default(),
            },
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The framing against hostile bytes: whatever arrives, `read_message` returns a
    //! message or an error, never panics, and never holds more than the limit.
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::thread;

    /// A `Wire` over a loopback connection whose other end writes `bytes` and closes.
    fn wire_reading(bytes: Vec<u8>, limit: usize) -> Wire {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let writer = thread::spawn(move || {
            let (mut s, _) = listener.accept().expect("accept");
            // The reader may stop early (an error), so a failed write is fine.
            let _ = s.write_all(&bytes);
        });
        let tcp = TcpStream::connect(addr).expect("connect");
        let mut wire = Wire::new(
            Stream::Plain(tcp),
            addr.to_string(),
            "127.0.0.1".to_owned(),
            None,
            Instant::now() + Duration::from_secs(10),
            Duration::from_secs(10),
        );
        wire.authenticated(limit);
        writer.join().expect("writer");
        wire
    }

    fn message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut m = vec![tag];
        m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn a_length_over_the_limit_is_refused_before_its_bytes_arrive() {
        let mut bytes = vec![b'D'];
        bytes.extend_from_slice(&0x7fff_fff0u32.to_be_bytes());
        let mut wire = wire_reading(bytes, 1024);
        match wire.read_message("a query") {
            Err(Error::MessageTooLarge {
                len, limit, tag, ..
            }) => {
                assert_eq!((tag, len, limit), (b'D', 0x7fff_fff0 - 4, 1024));
            }
            other => panic!("expected MessageTooLarge, got {:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_message_cut_short_is_a_lost_connection() {
        let mut bytes = message(b'C', b"SELECT 1\0");
        bytes.truncate(8);
        let mut wire = wire_reading(bytes, 1024);
        let err = wire.read_message("a query").err().expect("error");
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.is_transient());
    }

    #[test]
    fn messages_split_across_reads_are_framed_whole() {
        let mut bytes = Vec::new();
        for _ in 0..3 {
            bytes.extend(message(
                b'C',
                &[b'x'; 40_000]
                    .iter()
                    .chain(b"\0")
                    .copied()
                    .collect::<Vec<_>>(),
            ));
        }
        bytes.extend(message(b'Z', b"I"));
        let mut wire = wire_reading(bytes, 1 << 20);
        for _ in 0..3 {
            match wire.read_message("a query").expect("message") {
                Message::CommandComplete(body) => {
                    assert_eq!(body.tag().expect("utf-8").len(), 40_000)
                }
                _ => panic!("expected CommandComplete"),
            }
        }
        assert!(matches!(
            wire.read_message("a query").expect("message"),
            Message::ReadyForQuery(_)
        ));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Random bytes and random well-framed messages with random bodies: every outcome
        /// is a message or an error.
        #[test]
        fn random_input_never_panics(
            raw in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048),
            framed in proptest::collection::vec(
                (proptest::sample::select(b"RSKZTDCEINnst123".to_vec()),
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)),
                0..16),
        ) {
            for bytes in [raw, framed.iter().flat_map(|(tag, body)| message(*tag, body)).collect()] {
                let mut wire = wire_reading(bytes, 4096);
                for _ in 0..32 {
                    match wire.read_message("a test") {
                        Ok(message) => crate::client::exercise(message),
                        Err(_) => break,
                    }
                }
            }
        }
    }
}
