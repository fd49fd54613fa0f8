//! Secured Kafka for the tests: real TLS and SASL servers in front of a tansu broker.
//!
//! tansu 0.6 as packaged cannot hold SCRAM users before authentication is on, and its
//! `--cert`/`--key` flags conflict, so the security is put in front of it by parts nobody
//! here wrote:
//!
//! - [`Certs`]: a private CA and certificates made at test time with rcgen: the broker's
//!   (for `localhost` and `127.0.0.1`), a client's, an expired one, one for the wrong name,
//!   and an unrelated CA.
//! - [`Stunnel`]: stunnel4 (OpenSSL) terminating TLS, optionally requiring a client
//!   certificate signed by the CA (mutual TLS), forwarding to a plaintext port.
//! - [`SaslFront`]: `interop/sasl_front.py`, whose SCRAM server is Python's `scramp`,
//!   answering SaslHandshake/SaslAuthenticate (with an optional session lifetime) and
//!   relaying everything else to tansu.
//! - [`SecureBroker`]: tansu advertising the outermost port, with those parts stacked in
//!   front for `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
//!
//! A missing stunnel, openssl or scramp fails the test with what to install.
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use super::{Broker, free_port, interop_script, wait_until};

// ------------------------------------------------------------------------------------
// Certificates

/// Certificates and keys in PEM files inside a temporary directory.
pub struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    /// Makes a private CA and, signed by it: the broker's certificate for `localhost` and
    /// `127.0.0.1`, a client certificate, an expired broker certificate and one for
    /// `kafka.example.com` only; plus an unrelated CA that signed nothing here.
    pub fn generate() -> Certs {
        Certs::generate_with_ca("provision-worker test CA")
    }

    /// Like `generate`, with the CA named `ca_name` (two sets with the same CA name look
    /// alike to a server that looks issuers up by name).
    pub fn generate_with_ca(ca_name: &str) -> Certs {
        let dir = tempfile::Builder::new()
            .prefix("certs-")
            .tempdir()
            .expect("create a directory for the certificates");
        let write = |name: &str, text: &str| {
            std::fs::write(dir.path().join(name), text)
                .unwrap_or_else(|e| panic!("write {name}: {e}"))
        };

        let ca_key = KeyPair::generate().expect("generate the CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.distinguished_name
            .push(DnType::OrganizationName, "Tests");
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        write("ca.pem", &ca_cert.pem());
        write("ca.key", &ca_key.serialize_pem());
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |file: &str, names: &[&str], cn: &str, expired: bool| {
            let key = KeyPair::generate().expect("generate a key");
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names).expect("certificate parameters");
            params.distinguished_name.push(DnType::CommonName, cn);
            params
                .distinguished_name
                .push(DnType::OrganizationName, "Tests");
            if expired {
                params.not_before = rcgen::date_time_ymd(2020, 1, 1);
                params.not_after = rcgen::date_time_ymd(2021, 1, 1);
            }
            let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
            write(&format!("{file}.pem"), &cert.pem());
            write(&format!("{file}.key"), &key.serialize_pem());
        };
        leaf("broker", &["localhost", "127.0.0.1"], "localhost", false);
        leaf("client", &["worker.client"], "worker.client", false);
        leaf("expired", &["localhost", "127.0.0.1"], "localhost", true);
        leaf(
            "wrong-name",
            &["kafka.example.com"],
            "kafka.example.com",
            false,
        );

        let other_key = KeyPair::generate().expect("generate a key");
        let mut other = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        other
            .distinguished_name
            .push(DnType::CommonName, "Unrelated CA");
        write(
            "other-ca.pem",
            &other.self_signed(&other_key).expect("self-sign").pem(),
        );
        Certs { dir }
    }

    /// The path of one of the files: `ca.pem`, `broker.pem`, `broker.key`, `client.pem`,
    /// `client.key`, `expired.pem`, `expired.key`, `wrong-name.pem`, `wrong-name.key`,
    /// `other-ca.pem`.
    pub fn path(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        assert!(p.exists(), "no certificate file {name}");
        p
    }

    /// `path` as a string, for environment variables.
    pub fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// Where to write derived files (converted keys).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs the `openssl` command (for key-format conversions rcgen does not do).
pub fn openssl(args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("could not run openssl ({e}); install it (apt-get install -y openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ------------------------------------------------------------------------------------
// stunnel

/// stunnel4 terminating TLS on 127.0.0.1:`port` and forwarding to 127.0.0.1:`upstream`.
pub struct Stunnel {
    pub port: u16,
    /// The stunnel process; killed in `Drop`.
    child: Child,
    /// Holds the configuration and the log.
    dir: tempfile::TempDir,
}

impl Stunnel {
    /// Starts stunnel with the broker certificate `cert`/`key`; with `client_ca`, a client
    /// certificate signed by that CA is required (mutual TLS).
    pub fn start(
        port: u16,
        upstream: u16,
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
    ) -> Stunnel {
        let dir = tempfile::Builder::new()
            .prefix("stunnel-")
            .tempdir()
            .expect("create a directory for stunnel");
        let mut conf = format!(
            "foreground = yes\npid =\ndebug = 5\n[kafka]\naccept = 127.0.0.1:{port}\nconnect = 127.0.0.1:{upstream}\ncert = {}\nkey = {}\n",
            cert.display(),
            key.display()
        );
        if let Some(ca) = client_ca {
            conf.push_str(&format!(
                "CAfile = {}\nverifyChain = yes\nrequireCert = yes\n",
                ca.display()
            ));
        }
        let conf_path = dir.path().join("stunnel.conf");
        std::fs::write(&conf_path, conf).expect("write stunnel.conf");
        let log = std::fs::File::create(dir.path().join("stunnel.log")).expect("stunnel log");
        let bin = ["stunnel4", "stunnel"]
            .into_iter()
            .find(|b| Command::new(b).arg("-version").output().is_ok())
            .unwrap_or_else(|| {
                panic!("stunnel is not installed; install it (apt-get install -y stunnel4)")
            });
        let child = Command::new(bin)
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {bin}: {e}"));
        let mut stunnel = Stunnel { port, child, dir };
        wait_until("stunnel to listen", Duration::from_secs(10), || {
            if let Ok(Some(status)) = stunnel.child.try_wait() {
                panic!("stunnel exited ({status}); its log:\n{}", stunnel.log());
            }
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        stunnel
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!("--- stunnel log (port {}):\n{}", self.port, self.log());
        }
    }
}

// ------------------------------------------------------------------------------------
// The SASL front

/// `interop/sasl_front.py` on 127.0.0.1:`port`, relaying to 127.0.0.1:`upstream`.
pub struct SaslFront {
    pub port: u16,
    /// The Python process; killed in `Drop`.
    child: Child,
    /// Every line it printed (events: AUTH, EXPIRED, REFUSED, ...).
    lines: Arc<Mutex<Vec<String>>>,
    /// Holds the users file.
    dir: tempfile::TempDir,
}

/// How a [`SaslFront`] behaves.
#[derive(Clone, Debug)]
pub struct FrontSettings {
    pub users: Vec<(String, String)>,
    /// Comma-separated, as Kafka's `sasl.enabled.mechanisms`.
    pub mechanisms: String,
    /// 0: sessions never expire; else KIP-368's session lifetime.
    pub session_lifetime_ms: u64,
}

impl Default for FrontSettings {
    fn default() -> Self {
        FrontSettings {
            // alice is the worker; feeder is the tests' own producer (librdkafka).
            users: vec![
                ("alice".into(), "alice-secret".into()),
                ("feeder".into(), "feeder-secret".into()),
            ],
            mechanisms: "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512".into(),
            session_lifetime_ms: 0,
        }
    }
}

impl SaslFront {
    pub fn start(port: u16, upstream: u16, settings: &FrontSettings) -> SaslFront {
        let dir = tempfile::Builder::new()
            .prefix("sasl-front-")
            .tempdir()
            .expect("create a directory for the SASL front");
        let script = interop_script("sasl_front.py");
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let front = SaslFront {
            port,
            child: Command::new(&python)
                .arg(&script)
                .args(["--listen", &port.to_string()])
                .args(["--upstream", &format!("127.0.0.1:{upstream}")])
                .args([
                    "--users",
                    &dir.path().join("users.json").display().to_string(),
                ])
                .args(["--mechanisms", &settings.mechanisms])
                .args([
                    "--session-lifetime-ms",
                    &settings.session_lifetime_ms.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("could not run {python} {}: {e}", script.display())),
            lines: Arc::new(Mutex::new(Vec::new())),
            dir,
        };
        front.write_users(&settings.users);
        let mut front = front;
        for pipe in [
            front
                .child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            front
                .child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = front.lines.clone();
            thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    eprintln!("[sasl_front] {line}");
                    lines.lock().expect("front lines").push(line);
                }
            });
        }
        wait_until("the SASL front to listen", Duration::from_secs(10), || {
            if let Ok(Some(status)) = front.child.try_wait() {
                panic!(
                    "sasl_front.py exited ({status}) (if scramp is missing: python3 -m pip install -r tests/requirements.txt):\n{}",
                    front.lines().join("\n")
                );
            }
            front.count("LISTENING").checked_sub(1).map(|_| ())
        });
        front
    }

    /// Replaces the users and their passwords (the front reads them at each authentication).
    pub fn write_users(&self, users: &[(String, String)]) {
        let map: serde_json::Map<String, serde_json::Value> = users
            .iter()
            .map(|(u, p)| (u.clone(), serde_json::Value::String(p.clone())))
            .collect();
        let tmp = self.dir.path().join("users.json.tmp");
        std::fs::write(&tmp, serde_json::Value::Object(map).to_string()).expect("write users");
        std::fs::rename(&tmp, self.dir.path().join("users.json")).expect("replace users");
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("front lines").clone()
    }

    /// How many lines start with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.lines
            .lock()
            .expect("front lines")
            .iter()
            .filter(|l| l.starts_with(prefix))
            .count()
    }
}

impl Drop for SaslFront {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ------------------------------------------------------------------------------------
// A broker behind them

/// Which security the outermost port speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Ssl,
    SaslPlaintext,
    SaslSsl,
}

/// tansu advertising `port`, with TLS and/or SASL in front of it on that port.
pub struct SecureBroker {
    /// Where clients connect (and what metadata names).
    pub port: u16,
    pub certs: Certs,
    pub front: Option<SaslFront>,
    /// Kept for its lifetime: dropped after the parts in front of it.
    stunnel: Option<Stunnel>,
    pub broker: Broker,
}

impl SecureBroker {
    /// `protocol` on one port; mutual TLS when `require_client_cert`.
    pub fn start(protocol: Protocol, front: &FrontSettings, require_client_cert: bool) -> Self {
        let certs = Certs::generate();
        SecureBroker::start_with(protocol, front, require_client_cert, certs, "broker")
    }

    /// Like `start`, with the broker presenting `<cert>.pem`/`<cert>.key` of `certs`.
    pub fn start_with(
        protocol: Protocol,
        front: &FrontSettings,
        require_client_cert: bool,
        certs: Certs,
        cert: &str,
    ) -> Self {
        let port = free_port();
        let broker = Broker::start_advertising(port);
        let ca = certs.path("ca.pem");
        let tls = |listen: u16, upstream: u16| {
            Stunnel::start(
                listen,
                upstream,
                &certs.path(&format!("{cert}.pem")),
                &certs.path(&format!("{cert}.key")),
                require_client_cert.then_some(ca.as_path()),
            )
        };
        let (front, stunnel) = match protocol {
            Protocol::Ssl => (None, Some(tls(port, broker.port))),
            Protocol::SaslPlaintext => (Some(SaslFront::start(port, broker.port, front)), None),
            Protocol::SaslSsl => {
                let inner = free_port();
                let f = SaslFront::start(inner, broker.port, front);
                (Some(f), Some(tls(port, inner)))
            }
        };
        SecureBroker {
            port,
            certs,
            front,
            stunnel,
            broker,
        }
    }

    /// "127.0.0.1:PORT".
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn front(&self) -> &SaslFront {
        self.front.as_ref().expect("this broker has a SASL front")
    }

    pub fn stunnel_log(&self) -> String {
        self.stunnel.as_ref().map(Stunnel::log).unwrap_or_default()
    }
}

/// The librdkafka settings (`-X key=value` for kafka_tool.py) that reach `broker` as the
/// user `feeder`.
pub fn librdkafka_security(
    broker: &SecureBroker,
    protocol: Protocol,
    mechanism: &str,
) -> Vec<String> {
    let mut x = Vec::new();
    let name = match protocol {
        Protocol::Ssl => "SSL",
        Protocol::SaslPlaintext => "SASL_PLAINTEXT",
        Protocol::SaslSsl => "SASL_SSL",
    };
    x.push(format!("security.protocol={name}"));
    if protocol != Protocol::SaslPlaintext {
        x.push(format!("ssl.ca.location={}", broker.certs.file("ca.pem")));
    }
    if protocol != Protocol::Ssl {
        x.push(format!("sasl.mechanisms={mechanism}"));
        x.push("sasl.username=feeder".into());
        x.push("sasl.password=feeder-secret".into());
    }
    x
}
