//! A connection's socket, plain or TLS.
use std::io::{Read, Write};
use std::net::TcpStream;

use rustls::{ClientConnection, StreamOwned};

/// A TLS session over one TCP connection, as a client keeps it in a [`Stream`]: rustls' own
/// stream, or a client's wrapper of it that carries more.
pub trait Session: Read + Write {
    /// What [`Stream::tls`] hands the client's callers: the session's state.
    type State: ?Sized;

    /// The TCP connection beneath (its deadlines are set there).
    fn tcp(&self) -> &TcpStream;

    /// See [`Session::State`].
    fn state(&self) -> &Self::State;
}

/// Read and write through either a plain TCP connection or a TLS session over one, so a
/// connection holds one of two.
pub enum Stream<S> {
    Plain(TcpStream),
    Tls(Box<S>),
}

/// rustls' own stream: its state is the `ClientConnection` (what it negotiated, the
/// server's certificates).
impl Session for StreamOwned<ClientConnection, TcpStream> {
    type State = ClientConnection;

    fn tcp(&self) -> &TcpStream {
        &self.sock
    }

    fn state(&self) -> &ClientConnection {
        &self.conn
    }
}

impl<S: Session> Stream<S> {
    /// The TCP connection, beneath the TLS session if there is one.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.tcp(),
        }
    }

    /// The TLS session's state; `None` on a plain connection.
    pub fn tls(&self) -> Option<&S::State> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => Some(s.state()),
        }
    }
}

impl<S: Session> Read for Stream<S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl<S: Session> Write for Stream<S> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}
