//! A private PostgreSQL server for tests: Debian's PostgreSQL 15 (`initdb`, `pg_ctl`,
//! `psql`), a cluster in a temporary directory, run as the unprivileged `postgres` user
//! when the tests run as root (as CI does), on a free port of 127.0.0.1, with TLS from a
//! test CA made with rcgen, and one user per authentication method:
//!
//! | user         | password    | pg_hba.conf method                       |
//! |--------------|-------------|------------------------------------------|
//! | `postgres`   | -           | trust (superuser, for the tests' own SQL) |
//! | `trust_user` | -           | trust                                    |
//! | `scram_user` | `scram-pw`  | scram-sha-256                            |
//! | `md5_user`   | `md5-pw`    | md5 (password stored as MD5)              |
//! | `clear_user` | `clear-pw`  | password (cleartext)                      |
//! | `cert_user`  | -           | cert (hostssl only; CN=cert_user)         |
//!
//! Self-contained (std, rcgen, tempfile; nothing of the client under test), so the
//! client's tests, the worker's and the benchmark share it. `psql` runs the tests' own SQL,
//! an independent client.
//!
//! The cluster is stopped when the `PgCluster` is dropped, a failing test included; a
//! watchdog process stops it too if the test process dies without dropping it (a
//! `shared()` cluster lives until the process exits; SIGKILL). A missing PostgreSQL
//! fails the test, saying what to install.
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// Where Debian's PostgreSQL 15 keeps its server programs; `PG_BIN` overrides it.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// The passwords of the users above.
pub const SCRAM_PASSWORD: &str = "scram-pw";
pub const MD5_PASSWORD: &str = "md5-pw";
pub const CLEAR_PASSWORD: &str = "clear-pw";

/// A running PostgreSQL cluster of our own.
pub struct PgCluster {
    /// Everything: `data/` (the cluster), `sock/`, `certs/`, `server.log`. Removed last.
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    /// Runs the server programs as `postgres` when we are root.
    as_postgres: bool,
    /// Stops the cluster and removes `dir` if this process dies first: it waits for EOF
    /// on its stdin, whose write end only this process holds.
    watchdog: Option<Child>,
}

/// How to set the cluster up.
#[derive(Debug, Clone)]
pub struct Options {
    /// `fsync` (on by default, as in production; off makes set-up faster).
    pub fsync: bool,
    /// Extra lines for postgresql.conf.
    pub extra_conf: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            fsync: true,
            extra_conf: Vec::new(),
        }
    }
}

/// One cluster per test binary for the tests that do not stop or restart it.
pub fn shared() -> &'static PgCluster {
    static SHARED: OnceLock<PgCluster> = OnceLock::new();
    SHARED.get_or_init(PgCluster::start)
}

impl PgCluster {
    /// A new cluster with the default options.
    pub fn start() -> PgCluster {
        PgCluster::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> PgCluster {
        let bin = pg_bin();
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("pg-test-")
            .tempdir()
            .expect("create a temporary directory for the cluster");
        // `postgres` must reach the directory; only its own data dir is private.
        set_mode(dir.path(), 0o755);
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        for d in [&data, &sock] {
            std::fs::create_dir(d).expect("create a cluster directory");
            if as_postgres {
                chown_postgres(d);
            }
        }
        set_mode(&data, 0o700);
        // pg_ctl (as postgres) appends the server's log here.
        let log = dir.path().join("server.log");
        std::fs::write(&log, "").expect("create the server log");
        if as_postgres {
            chown_postgres(&log);
        }
        let certs = dir.path().join("certs");
        std::fs::create_dir(&certs).expect("create the certificate directory");
        make_certificates(&certs);

        let mut cluster = PgCluster {
            dir,
            bin,
            port: 0,
            as_postgres,
            watchdog: None,
        };
        cluster.run_checked(
            "initdb",
            &[
                "-D",
                &path_str(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // The server's key and certificate inside the data directory, owned by the server's
        // user (PostgreSQL refuses a key others can read).
        for (from, to) in [
            ("server.crt", "server.crt"),
            ("server.key", "server.key"),
            ("ca.crt", "ca.crt"),
        ] {
            let target = data.join(to);
            std::fs::copy(certs.join(from), &target).expect("copy a certificate");
            set_mode(&target, 0o600);
            if as_postgres {
                chown_postgres(&target);
            }
        }
        std::fs::write(data.join("pg_hba.conf"), PG_HBA).expect("write pg_hba.conf");
        if as_postgres {
            chown_postgres(&data.join("pg_hba.conf"));
        }
        cluster.watchdog = Some(cluster.spawn_watchdog());

        // A free port can be taken between our probe and the server's bind: try again.
        let mut last_log = String::new();
        for _ in 0..3 {
            cluster.port = free_port();
            let mut conf = format!(
                "\n# tests/common\nlisten_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\nssl_ca_file = 'ca.crt'\npassword_encryption = 'scram-sha-256'\nmax_connections = 40\ndeadlock_timeout = '200ms'\nfsync = {}\nlog_min_messages = warning\nlog_connections = off\n",
                cluster.port,
                path_str(&sock),
                if options.fsync { "on" } else { "off" },
            );
            for line in &options.extra_conf {
                conf.push_str(line);
                conf.push('\n');
            }
            let mut file = std::fs::OpenOptions::new()
                .append(true)
                .open(data.join("postgresql.conf"))
                .expect("open postgresql.conf");
            file.write_all(conf.as_bytes())
                .expect("write postgresql.conf");
            if cluster.pg_ctl(&["start", "-w", "-t", "60"]) {
                cluster.create_users();
                return cluster;
            }
            last_log = cluster.log();
        }
        panic!("PostgreSQL did not start; its log:\n{last_log}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host the server listens on, as tests connect to it.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The test CA (PEM): what the server's certificate is signed with.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/ca.crt")
    }

    /// A CA that signed nothing here.
    pub fn other_ca_file(&self) -> PathBuf {
        self.dir.path().join("certs/other-ca.crt")
    }

    /// `cert_user`'s certificate and key (PKCS#8 PEM, mode 0600).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("certs/client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("certs/client.key")
    }

    /// The test CA's key (PEM, 0600), to sign more certificates.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.path().join("certs/ca.key")
    }

    /// A directory for a test's own files (converted keys, ...).
    pub fn scratch(&self) -> PathBuf {
        self.dir.path().join("certs")
    }

    /// The names in the server's certificate.
    pub fn server_names(&self) -> [&'static str; 2] {
        ["localhost", "127.0.0.1"]
    }

    /// A `postgresql://` URL for `user` (with `password`, if any) and query parameters
    /// (e.g. `sslmode=verify-full`), for tests that go through a URL parser.
    pub fn url(&self, user: &str, password: Option<&str>, params: &[(&str, &str)]) -> String {
        let auth = match password {
            Some(p) => format!("{user}:{p}"),
            None => user.to_owned(),
        };
        let mut url = format!("postgresql://{auth}@{}:{}/postgres", self.host(), self.port);
        for (i, (k, v)) in params.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&format!("{k}={v}"));
        }
        url
    }

    /// A new database owned by `owner` (e.g. `scram_user`), named uniquely in this
    /// process, so tests sharing a cluster do not see each other's tables. Its name.
    pub fn create_database(&self, owner: &str) -> String {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let name = format!(
            "test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.psql(&format!("CREATE DATABASE {name} OWNER {owner}"));
        name
    }

    /// A program of the PostgreSQL installation (`pgbench`, `pg_isready`, ...).
    pub fn program(&self, name: &str) -> PathBuf {
        self.bin.join(name)
    }

    /// Runs `sql` as the superuser with psql (over the Unix socket) and returns what it
    /// printed, unaligned and without headers. Panics if psql fails.
    pub fn psql(&self, sql: &str) -> String {
        let out = self.psql_output(sql);
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Like `psql`, but returns the failure instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_in("postgres", sql)
    }

    /// `psql` in `database` (as the superuser).
    pub fn psql_in(&self, database: &str, sql: &str) -> String {
        self.try_psql_in(database, sql)
            .unwrap_or_else(|e| panic!("psql failed in {database} on {sql:?}: {e}"))
    }

    /// Like `psql_in`, but returns the failure instead of panicking.
    pub fn try_psql_in(&self, database: &str, sql: &str) -> Result<String, String> {
        let out = self
            .psql_command(database, sql)
            .output()
            .unwrap_or_else(|e| panic!("could not run psql: {e}"));
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// psql, ready to run `sql` in `database` as the superuser over the Unix socket
    /// (unaligned, no headers, stopping at the first error): for a session a test keeps
    /// open, e.g. one holding a lock (`spawn` it, with stdin piped to feed it more).
    pub fn psql_command(&self, database: &str, sql: &str) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        command
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                &path_str(&self.dir.path().join("sock")),
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ])
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE");
        command
    }

    /// Replaces the server's certificate and key (PEM) and reloads the configuration, so
    /// that new connections see the new certificate (PostgreSQL reads its TLS files again
    /// on reload).
    pub fn install_server_certificate(&self, cert_pem: &str, key_pem: &str) {
        for (name, text) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let target = self.data().join(name);
            std::fs::write(&target, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
            set_mode(&target, 0o600);
            if self.as_postgres {
                chown_postgres(&target);
            }
        }
        self.psql("SELECT pg_reload_conf()");
    }

    /// `pg_ctl restart -m fast`: sessions are ended (57P01) and the server comes back on
    /// the same port.
    pub fn restart(&self) {
        assert!(
            self.pg_ctl(&["restart", "-m", "fast", "-w", "-t", "60"]),
            "pg_ctl restart failed; log:\n{}",
            self.log()
        );
    }

    /// `pg_ctl stop -m fast`.
    pub fn stop(&self) {
        assert!(
            self.pg_ctl(&["stop", "-m", "fast", "-w", "-t", "60"]),
            "pg_ctl stop failed; log:\n{}",
            self.log()
        );
    }

    /// Starts a stopped cluster again (same port).
    pub fn start_again(&self) {
        assert!(
            self.pg_ctl(&["start", "-w", "-t", "60"]),
            "pg_ctl start failed; log:\n{}",
            self.log()
        );
    }

    /// The server's main process (from `postmaster.pid`), whose children are the backends:
    /// for measuring the server's CPU from /proc.
    pub fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read(self.dir.path().join("server.log"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `f` returns `Some`, polling; panics with `what` after `deadline`.
    pub fn wait_until<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            if let Some(value) = f() {
                return value;
            }
            assert!(
                start.elapsed() < deadline,
                "timed out after {deadline:?} waiting for {what}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn psql_output(&self, sql: &str) -> std::process::Output {
        self.psql_command("postgres", sql)
            .output()
            .unwrap_or_else(|e| panic!("could not run psql: {e}"))
    }

    fn create_users(&self) {
        self.psql(&format!(
            "CREATE ROLE trust_user LOGIN;
             CREATE ROLE scram_user LOGIN PASSWORD '{SCRAM_PASSWORD}';
             CREATE ROLE clear_user LOGIN PASSWORD '{CLEAR_PASSWORD}';
             CREATE ROLE cert_user LOGIN;
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN PASSWORD '{MD5_PASSWORD}';
             GRANT ALL ON SCHEMA public TO PUBLIC;"
        ));
    }

    /// Runs `pg_ctl` on the cluster (as `postgres` if we are root); true if it succeeded.
    /// Its own complaints go to the server log, where failures are reported from.
    fn pg_ctl(&self, args: &[&str]) -> bool {
        let data = path_str(&self.data());
        let log = path_str(&self.dir.path().join("server.log"));
        let mut full = vec!["-D", &data, "-l", &log];
        full.extend_from_slice(args);
        match self.command("pg_ctl", &full).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&log) {
                    let _ = f.write_all(&out.stdout);
                    let _ = f.write_all(&out.stderr);
                }
                false
            }
            Err(e) => panic!("could not run pg_ctl: {e}"),
        }
    }

    fn run_checked(&self, program: &str, args: &[&str]) {
        let out = self
            .command(program, args)
            .output()
            .unwrap_or_else(|e| panic!("could not run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A server program, run as `postgres` through runuser when we are root (initdb and
    /// the server refuse to run as root).
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path).args(args);
            c
        } else {
            let mut c = Command::new(path);
            c.args(args);
            c
        }
    }

    fn spawn_watchdog(&self) -> Child {
        let pg_ctl = path_str(&self.bin.join("pg_ctl"));
        let data = path_str(&self.data());
        let stop = if self.as_postgres {
            format!("runuser -u postgres -- {pg_ctl} -D {data} stop -m immediate")
        } else {
            format!("{pg_ctl} -D {data} stop -m immediate")
        };
        let script = format!(
            "cat >/dev/null; {stop} >/dev/null 2>&1; rm -rf {}",
            path_str(self.dir.path())
        );
        Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the cluster's watchdog (sh)")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        // Immediate: nothing of a test's cluster needs a clean shutdown, and it is quick.
        self.pg_ctl(&["stop", "-m", "immediate", "-w", "-t", "30"]);
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

/// First match wins. The superuser and `trust_user` need nothing; `cert_user` only over
/// TLS with a certificate; the others by their methods, over TLS or not.
const PG_HBA: &str = "\
local   all  all                       trust
host    all  postgres    127.0.0.1/32  trust
host    all  trust_user  127.0.0.1/32  trust
hostssl all  cert_user   127.0.0.1/32  cert
host    all  md5_user    127.0.0.1/32  md5
host    all  clear_user  127.0.0.1/32  password
host    all  all         127.0.0.1/32  scram-sha-256
";

/// The directory of the server programs; a missing one fails loudly.
fn pg_bin() -> PathBuf {
    let bin = std::env::var_os("PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PG_BIN));
    for program in ["initdb", "pg_ctl", "psql"] {
        assert!(
            bin.join(program).exists(),
            "PostgreSQL's {program} is not in {}: install PostgreSQL 15's server (apt-get install -y postgresql-15) or set PG_BIN to the directory that holds initdb, pg_ctl and psql",
            bin.display()
        );
    }
    if is_root() {
        assert!(
            postgres_ids().is_some(),
            "the tests run as root and there is no `postgres` user to run the server as: install PostgreSQL's server package (apt-get install -y postgresql-15), which creates it"
        );
    }
    bin
}

fn is_root() -> bool {
    // The owner of /proc/self is the process's effective user.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// The uid and gid of `postgres`, from /etc/passwd.
fn postgres_ids() -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"postgres") && fields.len() > 3 {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    })
}

fn chown_postgres(path: &Path) {
    let (uid, gid) = postgres_ids().expect("a postgres user");
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {} to postgres: {e}", path.display()));
}

fn set_mode(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {} {mode:o}: {e}", path.display()));
}

fn path_str(path: &Path) -> String {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
        .to_owned()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// The test CA; the server's certificate for `localhost` and `127.0.0.1`; `cert_user`'s
/// client certificate; an unrelated CA. Keys are PKCS#8 PEM, mode 0600.
fn make_certificates(dir: &Path) {
    let write = |name: &str, text: &str, mode: u32| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {name}: {e}"));
        set_mode(&path, mode);
    };
    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "blocking-postgres test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
    write("ca.crt", &ca_cert.pem(), 0o644);
    // Kept for tests that sign certificates of their own (with openssl: RSA keys).
    write("ca.key", &ca_key.serialize_pem(), 0o600);
    let issuer = Issuer::new(ca, ca_key);

    let leaf = |file: &str, names: &[&str], cn: &str| {
        let key = KeyPair::generate().expect("generate a key");
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names).expect("certificate parameters");
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.signed_by(&key, &issuer).expect("sign a certificate");
        write(&format!("{file}.crt"), &cert.pem(), 0o644);
        write(&format!("{file}.key"), &key.serialize_pem(), 0o600);
    };
    leaf("server", &["localhost", "127.0.0.1"], "localhost");
    leaf("client", &[], "cert_user");

    let other_key = KeyPair::generate().expect("generate a key");
    let mut other = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    other
        .distinguished_name
        .push(DnType::CommonName, "Unrelated CA");
    write(
        "other-ca.crt",
        &other.self_signed(&other_key).expect("self-sign").pem(),
        0o644,
    );
}
