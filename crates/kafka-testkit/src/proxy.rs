//! A TCP proxy for fault injection, on std threads only.
//!
//! It sits between a client under test and a server (a broker), forwards bytes both ways,
//! and on command breaks the path the way real networks break:
//!
//! - [`Proxy::cut`]: every open connection is closed (both sides see end of stream) and
//!   new ones are accepted and closed at once, as if the broker had gone away;
//! - [`Proxy::freeze`]: connections stay open but nothing is forwarded, as if the broker
//!   had stopped answering; a client only notices through its own timeouts;
//! - [`Proxy::restore`]: forward again (bytes held by a freeze are then delivered).
//!
//! Kafka clients connect to whatever address the broker *advertises*, not only to the
//! bootstrap address. So a broker behind the proxy must advertise the proxy's port:
//! [`broker_behind_proxy`] sets that up (a [`ProxyPort`] binds the port first, the broker
//! starts advertising it, then the proxy starts forwarding to the broker).
//!
//! [`Proxy::bytes_upstream`] and [`Proxy::open_connections`] let a test wait for a
//! condition (a request is on its way to the broker, the client has reconnected) instead
//! of sleeping.
//!
//! A proxy started with [`ProxyPort::forward_with_faults`] (or [`broker_behind_faulty_proxy`])
//! reads the Kafka frames it forwards, tracks each request's API key by correlation id, and
//! lets [`ProduceFaults`] refuse a Produce request in the broker's place or rewrite the
//! error code of its answer: errors tansu cannot be made to send.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use super::Broker;
use super::produce_faults::{ProduceFaults, Verdict};

/// How long the proxy waits for the upstream to accept a connection.
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a private broker that advertises a proxy's address, and the proxy in front of
/// it. Clients bootstrap to `proxy.addr()`; every connection they open then goes through
/// the proxy. (`broker.addr()` still reaches the broker directly for bootstrap-only
/// tools, but their follow-up connections go through the proxy as well.)
pub fn broker_behind_proxy() -> (Broker, Proxy) {
    let port = ProxyPort::bind();
    let broker = Broker::start_advertising(port.port());
    let proxy = port.forward_to(&broker.addr());
    (broker, proxy)
}

/// Like [`broker_behind_proxy`], with a proxy that applies `faults` to Produce requests.
pub fn broker_behind_faulty_proxy(faults: &Arc<ProduceFaults>) -> (Broker, Proxy) {
    let port = ProxyPort::bind();
    let broker = Broker::start_advertising(port.port());
    let proxy = port.forward_with_faults(&broker.addr(), faults);
    (broker, proxy)
}

/// A bound port on 127.0.0.1 that is not forwarding yet: for an upstream that needs to
/// know the proxy's address before it starts (a broker advertising it). Connections
/// made before [`ProxyPort::forward_to`] wait in the listen backlog.
pub struct ProxyPort {
    listener: TcpListener,
}

impl ProxyPort {
    /// Binds 127.0.0.1 on a port the kernel chooses (held from now on, so nothing else
    /// can take it).
    pub fn bind() -> ProxyPort {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy to 127.0.0.1:0");
        ProxyPort { listener }
    }

    pub fn port(&self) -> u16 {
        self.listener
            .local_addr()
            .expect("the proxy listener's address")
            .port()
    }

    /// Starts forwarding every connection to `upstream` ("host:port").
    pub fn forward_to(self, upstream: &str) -> Proxy {
        self.start(upstream, None)
    }

    /// Starts forwarding every connection to `upstream`, frame by frame, applying `faults`
    /// to Produce requests.
    pub fn forward_with_faults(self, upstream: &str, faults: &Arc<ProduceFaults>) -> Proxy {
        self.start(upstream, Some(Arc::clone(faults)))
    }

    fn start(self, upstream: &str, faults: Option<Arc<ProduceFaults>>) -> Proxy {
        let upstream_addr: SocketAddr = upstream
            .to_socket_addrs()
            .unwrap_or_else(|e| panic!("proxy upstream {upstream:?}: {e}"))
            .next()
            .unwrap_or_else(|| panic!("proxy upstream {upstream:?} resolves to no address"));
        let port = self.port();
        let shared = Arc::new(Shared {
            faults,
            ..Shared::default()
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("proxy-{port}-accept"))
                .spawn(move || accept_loop(&self.listener, upstream_addr, &shared))
                .expect("spawn the proxy's accept thread")
        };
        Proxy {
            port,
            upstream: upstream.to_owned(),
            shared,
            acceptor: Some(acceptor),
        }
    }
}

/// A running proxy from 127.0.0.1:`port()` to its upstream. Dropping it closes every
/// connection and joins all of its threads.
pub struct Proxy {
    port: u16,
    upstream: String,
    /// State shared with the accept thread and the two pump threads of each connection.
    shared: Arc<Shared>,
    /// The accept thread; `None` only while dropping.
    acceptor: Option<JoinHandle<()>>,
}

/// What the proxy does with traffic; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forwarding,
    Cut,
    Frozen,
}

impl Proxy {
    /// Binds 127.0.0.1 on a free port and forwards every connection to `upstream`.
    pub fn start(upstream: &str) -> Proxy {
        ProxyPort::bind().forward_to(upstream)
    }

    /// "127.0.0.1:PORT": where clients connect.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    pub fn mode(&self) -> Mode {
        self.shared.lock().mode
    }

    /// Closes every open connection (both ends see end of stream) and, until
    /// [`Proxy::restore`], closes new connections as soon as they are accepted. When
    /// this returns, no byte from a connection opened before reaches either side.
    pub fn cut(&self) {
        let mut state = self.shared.lock();
        state.mode = Mode::Cut;
        for (_, link) in state.links.drain() {
            link.close();
        }
        self.shared.changed.notify_all();
    }

    /// Keeps connections open but forwards nothing, in either direction, until
    /// [`Proxy::restore`] or [`Proxy::cut`]. New connections are accepted and connected
    /// upstream, but carry nothing either.
    pub fn freeze(&self) {
        self.shared.lock().mode = Mode::Frozen;
    }

    /// Forwards again: new connections are accepted, and bytes held by a freeze are
    /// delivered. (Connections closed by a cut stay closed; clients reconnect.)
    pub fn restore(&self) {
        self.shared.lock().mode = Mode::Forwarding;
        self.shared.changed.notify_all();
    }

    /// How many connections are open through the proxy now.
    pub fn open_connections(&self) -> usize {
        self.shared.lock().links.len()
    }

    /// How many bytes the proxy has delivered from clients to the upstream so far.
    pub fn bytes_upstream(&self) -> u64 {
        self.shared.bytes_upstream.load(Ordering::SeqCst)
    }

    /// How many bytes the proxy has delivered from the upstream to clients so far.
    pub fn bytes_downstream(&self) -> u64 {
        self.shared.bytes_downstream.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stopping = true;
            for (_, link) in state.links.drain() {
                link.close();
            }
            self.shared.changed.notify_all();
        }
        // The accept thread is blocked in accept(): a connection of our own wakes it, and
        // it sees `stopping`. (If the connect fails, the listener is already gone.)
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        // Every socket is shut down, so each pump's read or write fails at once.
        let pumps = std::mem::take(&mut self.shared.lock().pumps);
        for pump in pumps {
            let _ = pump.join();
        }
    }
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when the mode changes or links are closed, for pumps held by a freeze.
    changed: Condvar,
    bytes_upstream: AtomicU64,
    bytes_downstream: AtomicU64,
    /// Set for a proxy that reads Kafka frames: links are pumped frame by frame.
    faults: Option<Arc<ProduceFaults>>,
}

struct State {
    mode: Mode,
    /// Set by `Drop`: the accept thread ends at its next wake-up.
    stopping: bool,
    /// Open connections by id; a link leaves this map exactly when it is closed.
    links: HashMap<u64, Link>,
    next_id: u64,
    /// The pump threads; finished ones are pruned on each accept, the rest joined in Drop.
    pumps: Vec<JoinHandle<()>>,
}

impl Default for State {
    fn default() -> State {
        State {
            mode: Mode::Forwarding,
            stopping: false,
            links: HashMap::new(),
            next_id: 0,
            pumps: Vec::new(),
        }
    }
}

/// Handles to both sockets of one proxied connection, for closing it from outside the
/// pumps.
struct Link {
    client: TcpStream,
    upstream: TcpStream,
}

impl Link {
    fn close(&self) {
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.upstream.shutdown(Shutdown::Both);
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking pump must not take the proxy (and the test's diagnostics) with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Upstream,
    Downstream,
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopping {
            return;
        }
        let Ok(client) = client else {
            // Out of descriptors or a connection reset while queued: don't spin.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        if shared.lock().mode == Mode::Cut {
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&upstream, UPSTREAM_CONNECT_TIMEOUT) else {
            drop(client);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let handles = (|| {
            Some(Link {
                client: client.try_clone().ok()?,
                upstream: server.try_clone().ok()?,
            })
        })();
        let Some(link) = handles else { continue };

        let mut state = shared.lock();
        // A cut (or a drop) may have come while we were connecting upstream.
        if state.mode == Mode::Cut || state.stopping {
            link.close();
            continue;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.links.insert(id, link);
        state.pumps.retain(|pump| !pump.is_finished());
        if let Some(faults) = &shared.faults {
            let spawned = spawn_framed_pumps(id, &client, &server, shared, faults);
            match spawned {
                Some(pumps) => state.pumps.extend(pumps),
                None => {
                    drop(state);
                    close_link(shared, id);
                }
            }
            continue;
        }
        for (from, to, direction) in [
            (client.try_clone(), server.try_clone(), Direction::Upstream),
            (
                server.try_clone(),
                client.try_clone(),
                Direction::Downstream,
            ),
        ] {
            let (Ok(from), Ok(to)) = (from, to) else {
                close_link(shared, id);
                break;
            };
            let shared = Arc::clone(shared);
            let pump = thread::Builder::new()
                .name(format!("proxy-link-{id}"))
                .spawn(move || pump(id, from, to, direction, &shared))
                .expect("spawn a proxy pump thread");
            state.pumps.push(pump);
        }
    }
}

/// Copies bytes `from` → `to` until either side closes or the link is cut; then closes
/// the link, so the opposite pump ends too.
fn pump(id: u64, mut from: TcpStream, mut to: TcpStream, direction: Direction, shared: &Shared) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !wait_while_frozen(shared, id) {
            break; // Cut while we held these bytes: they are lost, as on a real network.
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
        count(shared, direction, n);
    }
    close_link(shared, id);
}

/// Waits out a freeze; false when the link was closed meanwhile.
fn wait_while_frozen(shared: &Shared, id: u64) -> bool {
    let mut state = shared.lock();
    while state.mode == Mode::Frozen && state.links.contains_key(&id) {
        state = shared
            .changed
            .wait(state)
            .unwrap_or_else(|p| p.into_inner());
    }
    state.links.contains_key(&id)
}

fn count(shared: &Shared, direction: Direction, n: usize) {
    let counter = match direction {
        Direction::Upstream => &shared.bytes_upstream,
        Direction::Downstream => &shared.bytes_downstream,
    };
    counter.fetch_add(n as u64, Ordering::SeqCst);
}

/// The two pumps of a link that reads Kafka frames. Both may write to the client (the
/// upstream pump when it answers in the broker's place), so its write half is shared.
/// Answering in the broker's place keeps responses in order only for a client with one
/// request in flight per connection, as ours and the tests' are.
fn spawn_framed_pumps(
    id: u64,
    client: &TcpStream,
    server: &TcpStream,
    shared: &Arc<Shared>,
    faults: &Arc<ProduceFaults>,
) -> Option<Vec<JoinHandle<()>>> {
    let client_writer = Arc::new(Mutex::new(client.try_clone().ok()?));
    // Correlation id of a forwarded Produce request whose answer is to be rewritten, to
    // (API version, error code).
    let rewrites: Arc<Mutex<HashMap<i32, (i16, i16)>>> = Arc::default();
    let (mut from_client, mut to_server) = (client.try_clone().ok()?, server.try_clone().ok()?);
    let mut from_server = server.try_clone().ok()?;
    let up = {
        let (shared, faults, writer, rewrites) = (
            Arc::clone(shared),
            Arc::clone(faults),
            Arc::clone(&client_writer),
            Arc::clone(&rewrites),
        );
        thread::Builder::new()
            .name(format!("proxy-link-{id}-up"))
            .spawn(move || {
                while let Some(frame) = read_frame(&mut from_client) {
                    if !wait_while_frozen(&shared, id) {
                        break;
                    }
                    let sent = match faults.on_request(&frame) {
                        Verdict::Forward => to_server.write_all(&frame),
                        Verdict::Rewrite {
                            correlation_id,
                            version,
                            code,
                        } => {
                            lock(&rewrites).insert(correlation_id, (version, code));
                            to_server.write_all(&frame)
                        }
                        Verdict::Answer(answer) => lock(&writer).write_all(&answer),
                    };
                    if sent.is_err() {
                        break;
                    }
                    count(&shared, Direction::Upstream, frame.len());
                }
                close_link(&shared, id);
            })
            .expect("spawn a proxy pump thread")
    };
    let down = {
        let (shared, faults) = (Arc::clone(shared), Arc::clone(faults));
        thread::Builder::new()
            .name(format!("proxy-link-{id}-down"))
            .spawn(move || {
                while let Some(frame) = read_frame(&mut from_server) {
                    if !wait_while_frozen(&shared, id) {
                        break;
                    }
                    let correlation_id = frame
                        .get(4..8)
                        .map_or(0, |b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]));
                    let rewrite = lock(&rewrites).remove(&correlation_id);
                    let frame = match rewrite {
                        Some((version, code)) => faults.rewrite_answer(&frame, version, code),
                        None => frame,
                    };
                    if lock(&client_writer).write_all(&frame).is_err() {
                        break;
                    }
                    count(&shared, Direction::Downstream, frame.len());
                }
                close_link(&shared, id);
            })
            .expect("spawn a proxy pump thread")
    };
    Some(vec![up, down])
}

/// One whole Kafka frame (its 4-byte size included); `None` at end of stream or error.
fn read_frame(from: &mut TcpStream) -> Option<Vec<u8>> {
    let mut size = [0u8; 4];
    from.read_exact(&mut size).ok()?;
    let len = usize::try_from(i32::from_be_bytes(size)).ok()?;
    let mut frame = vec![0u8; 4 + len];
    frame[..4].copy_from_slice(&size);
    from.read_exact(&mut frame[4..]).ok()?;
    Some(frame)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn close_link(shared: &Shared, id: u64) {
    let mut state = shared.lock();
    if let Some(link) = state.links.remove(&id) {
        link.close();
    }
    shared.changed.notify_all();
}
