//! Stopping a thread that is blocked on a broker. Every socket belongs to one thread, which
//! alone reads and writes it; but a thread blocked in a request (a broker that stopped
//! answering holds it for the whole request timeout) would keep the program from stopping.
//! So the thread registers a second handle of each socket it opens here, and its owner,
//! to stop it, shuts them down: the blocked request fails at once and the thread, told to
//! stop, exits. The handles are never read or written, and each is dropped with its
//! connection, so a closed connection is not kept open by its handle.
use std::collections::HashMap;
use std::net::{Shutdown, TcpStream};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The sockets one thread has open, for its owner to shut down.
#[derive(Debug, Default)]
pub struct Interrupt {
    inner: Mutex<Sockets>,
}

#[derive(Debug, Default)]
struct Sockets {
    /// By "host:port" (a thread keeps at most one connection per broker).
    open: HashMap<String, TcpStream>,
    /// Set by `interrupt`: a socket registered afterwards is shut down at once.
    stopped: bool,
}

impl Interrupt {
    /// Notes the socket of a new connection to `addr` (replacing the last one's).
    pub fn register(&self, addr: &str, socket: &TcpStream) {
        let Ok(handle) = socket.try_clone() else {
            // Without a handle this socket cannot be interrupted; it still ends with its
            // request timeout.
            return;
        };
        let mut s = self.lock();
        if s.stopped {
            let _ = handle.shutdown(Shutdown::Both);
        }
        s.open.insert(addr.to_owned(), handle);
    }

    /// The connection to `addr` was dropped.
    pub fn forget(&self, addr: &str) {
        self.lock().open.remove(addr);
    }

    /// Every connection was dropped.
    pub fn forget_all(&self) {
        self.lock().open.clear();
    }

    /// Shuts down every socket registered, now and from now on.
    pub fn interrupt(&self) {
        let mut s = self.lock();
        s.stopped = true;
        for socket in s.open.values() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Whether `interrupt` was called.
    pub fn is_interrupted(&self) -> bool {
        self.lock().stopped
    }

    fn lock(&self) -> MutexGuard<'_, Sockets> {
        // Plain data: a thread that panicked holding the lock left it consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    #[test]
    fn an_interrupted_socket_fails_a_blocked_read_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let mut client = TcpStream::connect(&addr).unwrap();
        let _server = listener.accept().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let interrupt = std::sync::Arc::new(Interrupt::default());
        interrupt.register(&addr, &client);
        let started = Instant::now();
        let stopper = {
            let interrupt = interrupt.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                interrupt.interrupt();
            })
        };
        let got = client.read(&mut [0u8; 8]);
        stopper.join().unwrap();
        assert!(matches!(got, Ok(0) | Err(_)), "{got:?}");
        assert!(started.elapsed() < Duration::from_secs(5));

        // A socket registered after the interruption is shut down at once.
        let mut late = TcpStream::connect(&addr).unwrap();
        let _server = listener.accept().unwrap();
        interrupt.register(&addr, &late);
        assert!(matches!(late.read(&mut [0u8; 8]), Ok(0) | Err(_)));
    }
}
