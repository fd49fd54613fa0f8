//! Scenario 6, the cost of TLS: the same throughput run (scenario 1's shape) with the worker
//! on PLAINTEXT and on SSL, against one broker, in the same invocation.
//!
//! tansu advertises one port on which a small relay looks at each connection's first byte:
//! a TLS record (a ClientHello) goes to stunnel4, which terminates TLS and forwards to tansu;
//! anything else goes straight to tansu. So the bench's plaintext producer, a plaintext worker
//! and a TLS worker all use the same advertised port and the same relay hop, and only the
//! worker's `KAFKA_SECURITY_PROTOCOL` differs between the two runs. stunnel and the relay run
//! outside the worker: the worker's CPU per request is its own TLS cost; throughput also pays
//! for stunnel's CPU on the same (shared) cores.
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::procs::free_port;
use crate::util::Res;

/// stunnel plus the sniffing relay on `port`; both stopped on drop.
pub struct TlsFront {
    /// The advertised port (the relay listens here).
    pub port: u16,
    /// The CA that signed stunnel's certificate, for `KAFKA_SSL_CA_LOCATION`.
    pub ca: PathBuf,
    stunnel: Child,
    stop: Arc<AtomicBool>,
    relay: Option<JoinHandle<()>>,
}

impl TlsFront {
    /// Certificates (openssl), stunnel to `plain`, and the relay on `port`.
    pub fn start(dir: &Path, port: u16, plain: u16) -> Res<TlsFront> {
        let p = |name: &str| dir.join(name).display().to_string();
        let openssl = |args: &[&str]| -> Res<()> {
            let out = Command::new("openssl").args(args).output().map_err(|e| {
                format!("run openssl ({e}); install it (apt-get install -y openssl)")
            })?;
            if !out.status.success() {
                return Err(format!(
                    "openssl {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(())
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-noenc",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-days", "2", "-subj", "/CN=bench CA"],
                &["-keyout", &p("ca.key"), "-out", &p("ca.pem")],
            ]
            .concat(),
        )?;
        openssl(
            &[
                &["req"][..],
                &ec,
                &["-subj", "/CN=localhost"],
                &["-keyout", &p("broker.key"), "-out", &p("broker.csr")],
            ]
            .concat(),
        )?;
        std::fs::write(
            dir.join("broker.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .map_err(|e| format!("write broker.ext: {e}"))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &p("broker.csr"),
            "-CA",
            &p("ca.pem"),
            "-CAkey",
            &p("ca.key"),
            "-days",
            "2",
            "-extfile",
            &p("broker.ext"),
            "-out",
            &p("broker.pem"),
        ])?;

        let tls_port = free_port()?;
        std::fs::write(
            dir.join("stunnel.conf"),
            format!(
                "foreground = yes\npid =\ndebug = 3\n[kafka]\naccept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{plain}\ncert = {}\nkey = {}\n",
                p("broker.pem"),
                p("broker.key")
            ),
        )
        .map_err(|e| format!("write stunnel.conf: {e}"))?;
        let log = std::fs::File::create(dir.join("stunnel.log"))
            .map_err(|e| format!("create stunnel.log: {e}"))?;
        let err = log.try_clone().map_err(|e| format!("stunnel.log: {e}"))?;
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").output().is_ok())
            .ok_or("stunnel is not installed; install it (apt-get install -y stunnel4)")?;
        let stunnel = Command::new(bin)
            .arg(dir.join("stunnel.conf"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("start {bin}: {e}"))?;

        let listener = TcpListener::bind(("127.0.0.1", port))
            .map_err(|e| format!("bind the relay on 127.0.0.1:{port}: {e}"))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("relay: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let relay = {
            let stop = stop.clone();
            thread::spawn(move || relay(&listener, &stop, plain, tls_port))
        };
        let front = TlsFront {
            port,
            ca: dir.join("ca.pem"),
            stunnel,
            stop,
            relay: Some(relay),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
            if Instant::now() >= deadline {
                return Err(format!(
                    "stunnel did not listen on {tls_port} within 10 s; see {}",
                    dir.join("stunnel.log").display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
        Ok(front)
    }

    /// The worker's environment for this front: bootstrap through the relay, and TLS when
    /// `tls`.
    pub fn worker_env(&self, tls: bool) -> Vec<(String, String)> {
        let mut env = vec![(
            "KAFKA_BOOTSTRAP_SERVERS".to_owned(),
            format!("127.0.0.1:{}", self.port),
        )];
        if tls {
            env.push(("KAFKA_SECURITY_PROTOCOL".into(), "SSL".into()));
            env.push((
                "KAFKA_SSL_CA_LOCATION".into(),
                self.ca.display().to_string(),
            ));
        }
        env
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.relay.take() {
            let _ = r.join();
        }
        let _ = self.stunnel.kill();
        let _ = self.stunnel.wait();
    }
}

/// Accepts until `stop`; each connection goes to `tls` if its first byte is a TLS handshake
/// record (0x16), else to `plain`.
fn relay(listener: &TcpListener, stop: &AtomicBool, plain: u16, tls: u16) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((client, _)) => {
                thread::spawn(move || {
                    let _ = forward(client, plain, tls);
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(_) => thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn forward(client: TcpStream, plain: u16, tls: u16) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    client.set_nodelay(true)?;
    let mut first = [0u8; 1];
    if client.peek(&mut first)? == 0 {
        return Ok(());
    }
    let port = if first[0] == 0x16 { tls } else { plain };
    let upstream = TcpStream::connect(("127.0.0.1", port))?;
    upstream.set_nodelay(true)?;
    let (c2, u2) = (client.try_clone()?, upstream.try_clone()?);
    let back = thread::spawn(move || copy(u2, c2));
    copy(client, upstream);
    let _ = back.join();
    Ok(())
}

/// Copies until end of stream, then passes the end on.
fn copy(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
