//! [`Connector`] (a validated configuration, TLS files read once) and [`Client`] (one
//! connection): the start-up (TCP, SSLRequest and the TLS handshake, the start-up message,
//! authentication, the server's parameters), the simple query protocol, prepared
//! statements on the extended protocol (parsed once per connection, bound and executed
//! many times), and the bookkeeping that keeps a connection usable after the server
//! refuses something (read up to ReadyForQuery) or marks it broken when it cannot be.
use std::collections::HashMap;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::IsNull;
use postgres_protocol::message::backend::{
    CommandCompleteBody, DataRowBody, ErrorFields, Message, RowDescriptionBody,
};
use postgres_protocol::message::frontend;

use crate::auth::{self, Binding, Scram};
use crate::config::{ChannelBinding, Config, SslMode};
use crate::error::{DbError, Error};
use crate::row::{self, Row, SimpleRow, Statement};
use crate::tls::{self, Stream, TlsInfo, TlsSetup};
use crate::types::{ToSql, Type};
use crate::wire::Wire;

/// A configuration checked once (certificate files read, `sslmode` combinations refused)
/// from which connections are opened. Cheap to share between threads.
#[derive(Debug)]
pub struct Connector {
    config: Config,
    tls: Option<Arc<TlsSetup>>,
}

/// One connection to PostgreSQL. Blocking; use it from one thread at a time (it is `Send`,
/// so a pool can hand it from thread to thread).
///
/// After an error of the server (an ErrorResponse) the connection stays usable; after a
/// lost connection, a timeout or a protocol violation it is broken ([`Client::is_broken`])
/// and every call returns [`Error::Closed`]: open a new one.
pub struct Client {
    wire: Wire,
    /// Unique in the process: statements remember which connection prepared them.
    id: u64,
    /// Set when the connection can no longer be trusted to be in step with the server.
    broken: bool,
    status: TransactionStatus,
    /// The server's ParameterStatus values (`server_version`, `TimeZone`, ...).
    parameters: HashMap<String, String>,
    backend_pid: i32,
    session: Session,
    /// Statements prepared by `prepare_cached`, by SQL text. Never evicted: meant for the
    /// fixed set of statements a program runs.
    cache: HashMap<String, Statement>,
    next_statement: u64,
    max_result_bytes: usize,
}

/// Who we are connected as, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub user: String,
    /// `None` for a plaintext connection.
    pub tls: Option<TlsInfo>,
    pub auth: AuthMethod,
}

/// How the server authenticated us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// No password asked: `trust`, or a client certificate (`cert`), or `peer`.
    NoPassword,
    Cleartext,
    Md5,
    ScramSha256,
    /// SCRAM bound to the TLS session (`tls-server-end-point`).
    ScramSha256Plus,
}

/// The transaction state the server reported last (ReadyForQuery).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionStatus {
    Idle,
    InTransaction,
    /// In a transaction that failed: everything until ROLLBACK is refused.
    Failed,
}

/// A transaction isolation level for [`Client::transaction_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    ReadCommitted,
    RepeatableRead,
    Serializable,
}

/// What `execute` and `query` accept: a prepared [`Statement`], or SQL text, prepared
/// (once per connection) through [`Client::prepare_cached`].
pub trait ToStatement {
    fn to_statement(&self, client: &mut Client) -> Result<Statement, Error>;
}

/// Distinct ids for connections, so a statement is never run on a connection that did
/// not prepare it.
static NEXT_CLIENT_ID: AtomicU64 = AtomicU64::new(1);

/// Beyond this many distinct ParameterStatus names, further ones are ignored (the server
/// sends about fifteen): a server must not grow our memory without bound.
const MAX_PARAMETERS: usize = 64;

impl Connector {
    /// Checks `config` and reads its TLS files. Errors name the setting and what to do.
    pub fn new(config: Config) -> Result<Connector, Error> {
        if config.host.is_empty() {
            return Err(Error::Config {
                setting: "host",
                detail: "it is empty: name the server's host or IP address".to_owned(),
            });
        }
        if config.user.is_empty() {
            return Err(Error::Config {
                setting: "user",
                detail: "it is empty: name the database user".to_owned(),
            });
        }
        if config.channel_binding == ChannelBinding::Require && config.sslmode == SslMode::Disable {
            return Err(Error::Config {
                setting: "channel_binding=require",
                detail: "channel binding needs TLS and sslmode=disable forbids it: choose sslmode=require or stronger".to_owned(),
            });
        }
        let tls = TlsSetup::new(&config)?.map(Arc::new);
        Ok(Connector { config, tls })
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Opens a connection: TCP, TLS as `sslmode` says, authentication, start-up, all
    /// within `connect_timeout`.
    ///
    /// With `sslmode=prefer`, as libpq does, a TLS handshake that fails (a certificate the
    /// root file does not vouch for) and a server that refuses the user over TLS (28000: a
    /// `hostnossl` line in pg_hba.conf) are retried once without TLS.
    pub fn connect(&self) -> Result<Client, Error> {
        let deadline = Instant::now() + self.config.connect_timeout;
        match self.attempt(deadline, self.tls.clone()) {
            Ok(client) => Ok(client),
            Err((error, true))
                if self.config.sslmode == SslMode::Prefer
                    && (matches!(error, Error::Tls { .. }) || error.code() == Some("28000")) =>
            {
                log::debug!(
                    "PostgreSQL at {}: {error}; retrying without TLS (sslmode=prefer)",
                    self.config.addr()
                );
                self.attempt(deadline, None).map_err(|(e, _)| e)
            }
            Err((error, _)) => Err(error),
        }
    }

    /// One connection attempt; the error says whether TLS was in use when it happened.
    fn attempt(
        &self,
        deadline: Instant,
        tls: Option<Arc<TlsSetup>>,
    ) -> Result<Client, (Error, bool)> {
        let config = &self.config;
        let addr = config.addr();
        let mut tcp = self.tcp(deadline).map_err(|e| (e, false))?;
        let over_tls = tls.is_some();
        // Socket errors before `Wire` exists do not know the limit they ran into.
        let fail = |e: Error| match e {
            Error::Timeout { addr, what, .. } => (
                Error::Timeout {
                    addr,
                    what,
                    after: config.connect_timeout,
                },
                over_tls,
            ),
            other => (other, over_tls),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        tcp.set_read_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .and_then(|()| {
                tcp.set_write_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            })
            .map_err(|e| fail(tls::io_error(&addr, "the connection", e)))?;
        let (stream, tls) = match tls {
            None => (Stream::Plain(tcp), None),
            Some(setup) => {
                let mut request = BytesMut::new();
                frontend::ssl_request(&mut request);
                std::io::Write::write_all(&mut tcp, &request)
                    .map_err(|e| fail(tls::io_error(&addr, "the TLS negotiation", e)))?;
                match Wire::read_ssl_answer(&mut tcp, &addr).map_err(fail)? {
                    b'S' => {
                        let stream = setup.connect(tcp, &config.host, &addr).map_err(fail)?;
                        (Stream::Tls(Box::new(stream)), Some(setup))
                    }
                    b'N' if config.sslmode.requires_tls() => {
                        return Err(fail(Error::TlsRefused {
                            addr,
                            sslmode: config.sslmode.as_str(),
                        }));
                    }
                    b'N' => (Stream::Plain(tcp), None),
                    other => {
                        return Err(fail(Error::Protocol {
                            addr,
                            detail: format!(
                                "it answered the TLS request with {:?} instead of 'S' or 'N'",
                                char::from(other)
                            ),
                        }));
                    }
                }
            }
        };
        let wire = Wire::new(
            stream,
            addr,
            config.host.clone(),
            tls.clone(),
            deadline,
            config.connect_timeout,
        );
        let mut client = Client {
            wire,
            id: NEXT_CLIENT_ID.fetch_add(1, Ordering::Relaxed),
            broken: false,
            status: TransactionStatus::Idle,
            parameters: HashMap::new(),
            backend_pid: 0,
            session: Session {
                user: config.user.clone(),
                tls: None,
                auth: AuthMethod::NoPassword,
            },
            cache: HashMap::new(),
            next_statement: 1,
            max_result_bytes: config.max_result_bytes,
        };
        if let (Some(setup), Some(conn)) = (&tls, client.wire.stream().tls()) {
            client.session.tls = Some(tls::session_info(conn, setup.verify));
        }
        client.start_up(config).map_err(fail)?;
        Ok(client)
    }

    /// The TCP connection, to `hostaddr` or to each address `host` resolves to in turn.
    fn tcp(&self, deadline: Instant) -> Result<TcpStream, Error> {
        let config = &self.config;
        let addr = config.addr();
        let candidates: Vec<SocketAddr> = match config.hostaddr {
            Some(ip) => vec![SocketAddr::new(ip, config.port)],
            None => (config.host.as_str(), config.port)
                .to_socket_addrs()
                .map_err(|source| Error::Connect {
                    addr: addr.clone(),
                    source,
                })?
                .collect(),
        };
        let mut last = None;
        for candidate in candidates {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match TcpStream::connect_timeout(&candidate, left) {
                Ok(tcp) => {
                    // Requests are small and answered one at a time: Nagle would only delay.
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                Error::Timeout {
                    addr,
                    what: "the TCP connection",
                    after: config.connect_timeout,
                }
            }
            Some(source) => Error::Connect { addr, source },
            None => Error::Timeout {
                addr,
                what: "the TCP connection",
                after: config.connect_timeout,
            },
        })
    }
}

/// Where a password exchange stands, so that an AuthenticationOk is accepted only when it
/// may be: a server (or anyone in between) saying "OK" before it proved it knows the
/// password must not be believed when we asked for proof.
enum AuthState {
    /// Nothing asked yet: an OK now means `trust` (or a client certificate).
    Start,
    /// SCRAM started; the server has not sent its challenge.
    ScramStarted(Box<Scram>),
    /// Our proof is sent; the server has not proven itself.
    ScramProved(Box<Scram>),
    /// The server proved it knows the password.
    ScramVerified(AuthMethod),
    /// A cleartext or MD5 password was sent: the server proves nothing in these methods.
    PasswordSent(AuthMethod),
}

impl Client {
    /// Opens a connection with `config` (a shortcut for `Connector::new(config)?.connect()`).
    pub fn connect(config: Config) -> Result<Client, Error> {
        Connector::new(config)?.connect()
    }

    /// Start-up message, authentication, and the server's parameters up to the first
    /// ReadyForQuery.
    fn start_up(&mut self, config: &Config) -> Result<(), Error> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", config.user.as_str()),
            // Text values are UTF-8 whatever the database's encoding: the server converts.
            ("client_encoding", "UTF8"),
        ];
        if let Some(db) = &config.dbname {
            params.push(("database", db));
        }
        if let Some(name) = &config.application_name {
            params.push(("application_name", name));
        }
        if let Some(options) = &config.options {
            params.push(("options", options));
        }
        frontend::startup_message(params, &mut self.wire.out).map_err(|_| Error::Config {
            setting: "user, dbname, application_name or options",
            detail: "it holds a NUL character".to_owned(),
        })?;
        self.wire.send("start-up", false)?;
        self.authenticate(config)?;
        self.wire.authenticated(config.max_message_len);
        loop {
            match self.next("start-up")? {
                Message::BackendKeyData(body) => self.backend_pid = body.process_id(),
                Message::ReadyForQuery(body) => {
                    self.status = transaction_status(body.status());
                    break;
                }
                Message::ErrorResponse(body) => {
                    self.broken = true;
                    return Err(self.db_error(body.fields()).into());
                }
                other => return Err(self.unexpected("start-up", &other)),
            }
        }
        self.wire.started(config.io_timeout)
    }

    fn authenticate(&mut self, config: &Config) -> Result<(), Error> {
        let over_tls = self.wire.stream().tls().is_some();
        let addr = self.wire.addr.clone();
        let refuse = |reason: String| Error::Auth {
            addr: addr.clone(),
            reason,
        };
        let password = || {
            config.password.as_ref().map(|p| p.get()).ok_or_else(|| {
                refuse(format!(
                    "the server asks for the password of {:?} and none is configured: set the password",
                    config.user
                ))
            })
        };
        let cb_required = config.channel_binding == ChannelBinding::Require;
        let no_binding = |method: &str| {
            refuse(format!(
                "the server asks for {method}, and channel_binding=require accepts only SCRAM-SHA-256-PLUS: set channel_binding=prefer, or change the server's pg_hba.conf method to scram-sha-256 over TLS"
            ))
        };
        let mut state = AuthState::Start;
        loop {
            let message = self.next("authentication")?;
            state = match (message, state) {
                (Message::AuthenticationOk, AuthState::Start) => {
                    if cb_required {
                        return Err(no_binding("no password (trust or a certificate)"));
                    }
                    self.session.auth = AuthMethod::NoPassword;
                    return Ok(());
                }
                (
                    Message::AuthenticationOk,
                    AuthState::ScramVerified(method) | AuthState::PasswordSent(method),
                ) => {
                    self.session.auth = method;
                    return Ok(());
                }
                (Message::AuthenticationOk, _) => {
                    return Err(refuse(
                        "the server accepted us in the middle of SCRAM, before proving that it knows the password: it is not the server we meant to reach (or something between us forged the answer)".to_owned(),
                    ));
                }
                (Message::AuthenticationCleartextPassword, AuthState::Start) => {
                    if cb_required {
                        return Err(no_binding("a cleartext password"));
                    }
                    if !over_tls && !config.allow_cleartext_password_without_tls {
                        return Err(refuse(
                            "the server asks for the password in clear over a connection without TLS, where anyone on the path could read it; refused without sending it: use TLS (sslmode=require or stronger), or change the server's pg_hba.conf method to scram-sha-256 (or allow_cleartext_password_without_tls for a trusted network)".to_owned(),
                        ));
                    }
                    let password = password()?;
                    frontend::password_message(password.as_bytes(), &mut self.wire.out)
                        .map_err(|_| refuse("the password holds a NUL character".to_owned()))?;
                    self.wire.send("authentication", true)?;
                    AuthState::PasswordSent(AuthMethod::Cleartext)
                }
                (Message::AuthenticationMd5Password(body), AuthState::Start) => {
                    if cb_required {
                        return Err(no_binding("MD5"));
                    }
                    let password = password()?;
                    let response = auth::md5_response(&config.user, &password, body.salt());
                    frontend::password_message(response.as_bytes(), &mut self.wire.out)
                        .map_err(|_| refuse("the password holds a NUL character".to_owned()))?;
                    self.wire.send("authentication", true)?;
                    AuthState::PasswordSent(AuthMethod::Md5)
                }
                (Message::AuthenticationSasl(body), AuthState::Start) => {
                    let mut offered = Vec::new();
                    let mut mechanisms = body.mechanisms();
                    while let Some(m) = mechanisms.next().map_err(|e| Error::Protocol {
                        addr: addr.clone(),
                        detail: format!("a malformed SASL mechanism list ({e})"),
                    })? {
                        if offered.len() < 16 {
                            offered.push(m.to_owned());
                        }
                    }
                    let binding = self.choose_binding(config, &offered, &refuse)?;
                    if !offered.iter().any(|m| m == binding.mechanism()) {
                        return Err(refuse(format!(
                            "the server offers the SASL mechanisms {} and we speak SCRAM-SHA-256 and SCRAM-SHA-256-PLUS",
                            offered.join(", ")
                        )));
                    }
                    let password = password()?;
                    let scram = Scram::new(&password, binding.clone());
                    frontend::sasl_initial_response(
                        binding.mechanism(),
                        scram.client_first().as_bytes(),
                        &mut self.wire.out,
                    )
                    .map_err(|e| refuse(e.to_string()))?;
                    self.wire.send("authentication", false)?;
                    AuthState::ScramStarted(Box::new(scram))
                }
                (Message::AuthenticationSaslContinue(body), AuthState::ScramStarted(mut scram)) => {
                    let client_final = scram.client_final(body.data()).map_err(&refuse)?;
                    frontend::sasl_response(client_final.as_bytes(), &mut self.wire.out)
                        .map_err(|e| refuse(e.to_string()))?;
                    self.wire.send("authentication", true)?;
                    AuthState::ScramProved(scram)
                }
                (Message::AuthenticationSaslFinal(body), AuthState::ScramProved(scram)) => {
                    scram.verify_server_final(body.data()).map_err(&refuse)?;
                    let method = if scram_was_bound(&scram) {
                        AuthMethod::ScramSha256Plus
                    } else {
                        AuthMethod::ScramSha256
                    };
                    AuthState::ScramVerified(method)
                }
                (Message::ErrorResponse(body), _) => {
                    self.broken = true;
                    return Err(self.db_error(body.fields()).into());
                }
                (
                    Message::AuthenticationGss
                    | Message::AuthenticationSspi
                    | Message::AuthenticationKerberosV5
                    | Message::AuthenticationGssContinue(_),
                    _,
                ) => {
                    return Err(refuse(
                        "the server asks for GSSAPI/Kerberos or SSPI, which this client does not speak: change the server's pg_hba.conf method for this user to scram-sha-256 (or cert)".to_owned(),
                    ));
                }
                (Message::AuthenticationScmCredential, _) => {
                    return Err(refuse(
                        "the server asks for SCM credentials, which only Unix sockets carry"
                            .to_owned(),
                    ));
                }
                (other, _) => return Err(self.unexpected("authentication", &other)),
            };
        }
    }

    /// Which SCRAM variant to use, by libpq's `channel_binding` rules.
    fn choose_binding(
        &self,
        config: &Config,
        offered: &[String],
        refuse: &dyn Fn(String) -> Error,
    ) -> Result<Binding, Error> {
        let plus_offered = offered.iter().any(|m| m == auth::SCRAM_SHA_256_PLUS);
        let conn = self.wire.stream().tls();
        Ok(match (config.channel_binding, conn) {
            (ChannelBinding::Disable, _) => Binding::Unsupported,
            (ChannelBinding::Require, None) => {
                return Err(refuse(
                    "channel_binding=require needs TLS, and this connection is not encrypted (the server refused TLS with sslmode=prefer)".to_owned(),
                ));
            }
            (ChannelBinding::Prefer, None) => Binding::Unsupported,
            (mode, Some(conn)) if plus_offered => match tls::end_point_hash(conn) {
                Some(hash) => Binding::TlsServerEndPoint(hash),
                None if mode == ChannelBinding::Require => {
                    return Err(refuse(
                        "channel_binding=require, and the server's certificate is signed with an algorithm that has no tls-server-end-point hash (Ed25519 or RSA-PSS): use an RSA or ECDSA certificate, or channel_binding=prefer".to_owned(),
                    ));
                }
                None => Binding::Unsupported,
            },
            (ChannelBinding::Require, Some(_)) => {
                return Err(refuse(
                    "channel_binding=require, and the server does not offer SCRAM-SHA-256-PLUS: its pg_hba.conf method for this user must be scram-sha-256 (and the password stored as SCRAM)".to_owned(),
                ));
            }
            (ChannelBinding::Prefer, Some(_)) => Binding::NotOffered,
        })
    }

    /// Marks the connection unusable (a transaction that could not be rolled back).
    pub(crate) fn mark_broken(&mut self) {
        self.broken = true;
    }

    /// Whether this connection is still in step with the server. A broken one returns
    /// [`Error::Closed`] from every call.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Checks that the server still answers: an empty query, one round trip.
    pub fn is_valid(&mut self) -> Result<(), Error> {
        self.simple_query("").map(|_| ())
    }

    /// The transaction state after the last command.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.status
    }

    /// A parameter the server reported (`server_version`, `server_encoding`, `TimeZone`,
    /// `integer_datetimes`, `application_name`, ...). `SHOW` reads any other setting.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// `server_version`, e.g. "15.8 (Debian 15.8-0+deb12u1)".
    pub fn server_version(&self) -> Option<&str> {
        self.parameter("server_version")
    }

    /// The server process serving this connection (`pg_backend_pid()`).
    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// Who we are connected as, over which TLS, authenticated how.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The value of a setting: `SHOW name` (e.g. `synchronous_commit`). `name` must be a
    /// setting's name (letters, digits, `_` and `.`), not SQL.
    pub fn show(&mut self, name: &str) -> Result<String, Error> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        {
            return Err(Error::Usage {
                detail: format!("{name:?} is not the name of a setting"),
            });
        }
        let rows = self.simple_query(&format!("SHOW {name}"))?;
        rows.into_iter()
            .next()
            .and_then(|row| row.values.into_iter().next().flatten())
            .ok_or_else(|| Error::Protocol {
                addr: self.wire.addr.clone(),
                detail: format!("SHOW {name} returned no value"),
            })
    }

    /// Runs `sql` with the simple query protocol: any number of statements separated by
    /// `;`, no parameters, values as text. For DDL, `BEGIN`/`COMMIT`, `SET`, `SHOW`.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleRow>, Error> {
        self.simple(sql).map(|(rows, _)| rows)
    }

    /// Runs `sql` (statements separated by `;`) and discards any rows.
    pub fn batch_execute(&mut self, sql: &str) -> Result<(), Error> {
        self.simple(sql).map(|_| ())
    }

    /// Prepares `sql` on this connection (Parse and Describe, one round trip). Parameters
    /// are `$1`, `$2`, ...; their types are what the server infers (cast them in SQL to
    /// choose: `$1::int8`).
    pub fn prepare(&mut self, sql: &str) -> Result<Statement, Error> {
        self.usable()?;
        let name = format!("bp{}", self.next_statement);
        self.next_statement += 1;
        let encoded = frontend::parse(&name, sql, [], &mut self.wire.out)
            .and_then(|()| frontend::describe(b'S', &name, &mut self.wire.out));
        if encoded.is_err() {
            self.wire.out.clear();
            return Err(Error::Usage {
                detail: "the SQL holds a NUL character".to_owned(),
            });
        }
        frontend::sync(&mut self.wire.out);
        self.send("preparing a statement")?;
        let what = "preparing a statement";
        let mut params = None;
        let mut columns = None;
        let mut failure = None;
        loop {
            match self.next(what)? {
                Message::ParseComplete => {}
                Message::ParameterDescription(body) => {
                    let mut types = Vec::new();
                    let mut iter = body.parameters();
                    while let Some(oid) = iter.next().map_err(|e| {
                        self.protocol(format!("a malformed parameter description ({e})"))
                    })? {
                        types.push(Type(oid));
                    }
                    params = Some(types);
                }
                Message::RowDescription(body) => {
                    columns = Some(row::columns(&body).map_err(|d| self.protocol(d))?);
                }
                Message::NoData => columns = Some(Vec::new()),
                Message::ErrorResponse(body) => {
                    let db = self.db_error(body.fields());
                    if db.ends_session() {
                        self.broken = true;
                        return Err(db.into());
                    }
                    failure = Some(db);
                }
                Message::ReadyForQuery(body) => {
                    self.status = transaction_status(body.status());
                    break;
                }
                other => return Err(self.unexpected(what, &other)),
            }
        }
        if let Some(db) = failure {
            return Err(db.into());
        }
        match (params, columns) {
            (Some(params), Some(columns)) => Ok(Statement::new(
                name,
                self.id,
                sql.to_owned(),
                params,
                columns.into(),
            )),
            _ => {
                Err(self
                    .protocol("the server did not describe the statement it prepared".to_owned()))
            }
        }
    }

    /// Like `prepare`, but once per connection for each SQL text: later calls return the
    /// statement prepared the first time, without a round trip.
    pub fn prepare_cached(&mut self, sql: &str) -> Result<Statement, Error> {
        if let Some(statement) = self.cache.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.prepare(sql)?;
        self.cache.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }

    /// Runs a statement and returns the number of rows it affected (inserted, updated,
    /// deleted, or selected). One round trip: Bind, Execute, Sync.
    pub fn execute<S: ToStatement + ?Sized>(
        &mut self,
        statement: &S,
        params: &[&dyn ToSql],
    ) -> Result<u64, Error> {
        let statement = statement.to_statement(self)?;
        self.run(&statement, params, None)
    }

    /// Runs a statement and returns its rows.
    pub fn query<S: ToStatement + ?Sized>(
        &mut self,
        statement: &S,
        params: &[&dyn ToSql],
    ) -> Result<Vec<Row>, Error> {
        let statement = statement.to_statement(self)?;
        let mut rows = Vec::new();
        self.run(&statement, params, Some(&mut rows))?;
        Ok(rows)
    }

    /// Runs a statement that returns at most one row.
    pub fn query_opt<S: ToStatement + ?Sized>(
        &mut self,
        statement: &S,
        params: &[&dyn ToSql],
    ) -> Result<Option<Row>, Error> {
        let mut rows = self.query(statement, params)?;
        if rows.len() > 1 {
            return Err(Error::Usage {
                detail: format!(
                    "the query returned {} rows where at most one was expected",
                    rows.len()
                ),
            });
        }
        Ok(rows.pop())
    }

    /// Runs a statement that returns exactly one row.
    pub fn query_one<S: ToStatement + ?Sized>(
        &mut self,
        statement: &S,
        params: &[&dyn ToSql],
    ) -> Result<Row, Error> {
        self.query_opt(statement, params)?
            .ok_or_else(|| Error::Usage {
                detail: "the query returned no row where one was expected".to_owned(),
            })
    }

    /// Starts a transaction (`BEGIN`). It is rolled back when dropped without `commit`.
    pub fn transaction(&mut self) -> Result<crate::Transaction<'_>, Error> {
        self.begin("BEGIN")
    }

    /// Starts a transaction at an isolation level.
    pub fn transaction_with(
        &mut self,
        isolation: Isolation,
    ) -> Result<crate::Transaction<'_>, Error> {
        self.begin(match isolation {
            Isolation::ReadCommitted => "BEGIN ISOLATION LEVEL READ COMMITTED",
            Isolation::RepeatableRead => "BEGIN ISOLATION LEVEL REPEATABLE READ",
            Isolation::Serializable => "BEGIN ISOLATION LEVEL SERIALIZABLE",
        })
    }

    fn begin(&mut self, sql: &str) -> Result<crate::Transaction<'_>, Error> {
        if self.status != TransactionStatus::Idle {
            return Err(Error::Usage {
                detail:
                    "a transaction is already open on this connection: commit or roll it back first"
                        .to_owned(),
            });
        }
        self.batch_execute(sql)?;
        Ok(crate::Transaction::new(self))
    }

    /// Closes the connection politely (Terminate), reporting a failure to do so.
    pub fn close(mut self) -> Result<(), Error> {
        self.terminate()
    }

    /// The simple query protocol: rows of every statement, and the command tags.
    pub(crate) fn simple(&mut self, sql: &str) -> Result<(Vec<SimpleRow>, Vec<String>), Error> {
        self.usable()?;
        if frontend::query(sql, &mut self.wire.out).is_err() {
            self.wire.out.clear();
            return Err(Error::Usage {
                detail: "the SQL holds a NUL character".to_owned(),
            });
        }
        let what = "a simple query";
        self.send(what)?;
        let mut rows = Vec::new();
        let mut tags = Vec::new();
        let mut columns: Arc<[String]> = Arc::from(Vec::new());
        self.answers(what, false, true, |answer| {
            match answer {
                Answer::Columns(body) => {
                    columns = row::columns(&body)?.into_iter().map(|c| c.name).collect();
                }
                Answer::Row(body) => rows.push(row::simple_row(columns.clone(), &body)?),
                Answer::Done(body) => tags.push(command_tag(&body)?.to_owned()),
            }
            Ok(())
        })?;
        Ok((rows, tags))
    }

    /// Bind, Execute, Sync for `statement`; rows into `rows` if given. The affected count.
    fn run(
        &mut self,
        statement: &Statement,
        params: &[&dyn ToSql],
        mut rows: Option<&mut Vec<Row>>,
    ) -> Result<u64, Error> {
        self.usable()?;
        if statement.client_id() != self.id {
            return Err(Error::Usage {
                detail: format!(
                    "the statement {:?} was prepared on another connection: prepare it on this one (prepare_cached does it once per connection)",
                    statement.sql()
                ),
            });
        }
        let types = statement.params();
        if params.len() != types.len() {
            return Err(Error::Usage {
                detail: format!(
                    "the statement takes {} parameter(s) and {} were given: {:?}",
                    types.len(),
                    params.len(),
                    statement.sql()
                ),
            });
        }
        let mut conversion = None;
        let bound = frontend::bind(
            "",
            statement.name(),
            std::iter::repeat_n(1i16, params.len()),
            params.iter().zip(types).enumerate(),
            |(index, (param, ty)), buf| match param.to_sql(*ty, buf) {
                Ok(true) => Ok(IsNull::No),
                Ok(false) => Ok(IsNull::Yes),
                Err(detail) => {
                    let detail = format!("parameter ${}: {detail}", index + 1);
                    conversion = Some(detail.clone());
                    Err(detail.into())
                }
            },
            [1i16],
            &mut self.wire.out,
        );
        if bound.is_err() {
            self.wire.out.clear();
            return Err(Error::Conversion {
                detail: conversion.unwrap_or_else(|| {
                    "the parameters do not fit in one message (more than 2 GiB or 32767 parameters)".to_owned()
                }),
            });
        }
        // Unreachable error: the portal name is empty, so it holds no NUL.
        let _ = frontend::execute("", 0, &mut self.wire.out);
        frontend::sync(&mut self.wire.out);
        let what = "a query";
        self.send(what)?;
        let columns = statement.shared_columns();
        let mut affected = 0;
        // Only rows that are kept count against max_result_bytes: `execute` drops them.
        let keep = rows.is_some();
        self.answers(what, true, keep, |answer| {
            match answer {
                Answer::Columns(_) => {
                    return Err("a row description the query did not ask for".to_owned());
                }
                Answer::Row(body) => {
                    if let Some(rows) = rows.as_deref_mut() {
                        rows.push(Row::new(columns.clone(), body)?);
                    }
                }
                Answer::Done(body) => affected = affected_rows(command_tag(&body)?),
            }
            Ok(())
        })?;
        Ok(affected)
    }

    /// Reads a query's answers up to ReadyForQuery, handing row descriptions, rows and
    /// command tags to `handle` (whose `Err` is a protocol violation). A refusal (the
    /// server's error, `ResultTooLarge` past `max_result_bytes` when `count_rows`, COPY)
    /// is held until ReadyForQuery, so the connection stays in step, then returned; rows
    /// after it are dropped. `extended`: the query was sent with the extended protocol.
    fn answers(
        &mut self,
        what: &'static str,
        extended: bool,
        count_rows: bool,
        mut handle: impl FnMut(Answer) -> Result<(), String>,
    ) -> Result<(), Error> {
        let mut bytes = 0usize;
        let mut failure: Option<Error> = None;
        loop {
            let answer = match self.next(what)? {
                Message::BindComplete | Message::EmptyQueryResponse => continue,
                Message::RowDescription(body) => Answer::Columns(body),
                Message::DataRow(body) => {
                    if count_rows {
                        bytes += body.buffer().len();
                        if bytes > self.max_result_bytes {
                            failure.get_or_insert(Error::ResultTooLarge {
                                limit: self.max_result_bytes,
                            });
                        }
                    }
                    Answer::Row(body)
                }
                Message::CommandComplete(body) => Answer::Done(body),
                Message::ErrorResponse(body) => {
                    let db = self.db_error(body.fields());
                    if db.ends_session() {
                        self.broken = true;
                        return Err(db.into());
                    }
                    failure = Some(db.into());
                    continue;
                }
                Message::ReadyForQuery(body) => {
                    self.status = transaction_status(body.status());
                    return failure.map_or(Ok(()), Err);
                }
                other => {
                    if self.refuse_copy(&other, extended)? {
                        failure.get_or_insert_with(copy_unsupported);
                        continue;
                    }
                    return Err(self.unexpected(what, &other));
                }
            };
            if failure.is_none() {
                handle(answer).map_err(|detail| self.protocol(detail))?;
            }
        }
    }

    /// COPY is not supported: a CopyInResponse is answered with CopyFail (and, in the
    /// extended protocol, a Sync, since the one sent before was swallowed by copy mode);
    /// CopyOut data is read and dropped. True if `message` was one of those.
    fn refuse_copy(&mut self, message: &Message, extended: bool) -> Result<bool, Error> {
        match message {
            Message::CopyInResponse(_) => {
                let _ =
                    frontend::copy_fail("COPY is not supported by this client", &mut self.wire.out);
                if extended {
                    frontend::sync(&mut self.wire.out);
                }
                self.send("refusing COPY")?;
                Ok(true)
            }
            Message::CopyOutResponse(_) | Message::CopyData(_) | Message::CopyDone => Ok(true),
            _ => Ok(false),
        }
    }

    /// Fails fast on a broken connection.
    fn usable(&self) -> Result<(), Error> {
        if self.broken {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    /// Sends what is queued; a failure breaks the connection.
    fn send(&mut self, what: &'static str) -> Result<(), Error> {
        self.wire
            .send(what, false)
            .inspect_err(|_| self.broken = true)
    }

    /// The next message that is an answer, after handling those the server may send at
    /// any time: notices (logged at debug level and otherwise ignored), parameter changes
    /// (recorded), notifications (ignored: we never LISTEN). Any failure breaks the
    /// connection.
    fn next(&mut self, what: &'static str) -> Result<Message, Error> {
        loop {
            let message = self
                .wire
                .read_message(what)
                .inspect_err(|_| self.broken = true)?;
            match message {
                Message::NoticeResponse(body) => {
                    let notice = self.db_error(body.fields());
                    log::debug!("PostgreSQL notice: {notice}");
                }
                Message::ParameterStatus(body) => {
                    if let (Ok(name), Ok(value)) = (body.name(), body.value())
                        && (self.parameters.len() < MAX_PARAMETERS
                            || self.parameters.contains_key(name))
                    {
                        self.parameters.insert(name.to_owned(), value.to_owned());
                    }
                }
                Message::NotificationResponse(_) => {}
                other => return Ok(other),
            }
        }
    }

    /// An ErrorResponse's (or NoticeResponse's) fields as a `DbError`. Lenient: a field
    /// that is not UTF-8 is shown lossily; a malformed list keeps what was read.
    fn db_error(&self, mut fields: ErrorFields<'_>) -> DbError {
        db_error_from(&mut fields)
    }

    fn protocol(&mut self, detail: String) -> Error {
        self.broken = true;
        Error::Protocol {
            addr: self.wire.addr.clone(),
            detail,
        }
    }

    fn unexpected(&mut self, what: &str, message: &Message) -> Error {
        self.protocol(format!(
            "an unexpected {} message during {what}",
            message_name(message)
        ))
    }

    fn terminate(&mut self) -> Result<(), Error> {
        if self.broken {
            return Ok(());
        }
        self.broken = true;
        frontend::terminate(&mut self.wire.out);
        self.wire.send("closing the connection", false)
    }
}

impl Drop for Client {
    /// Says goodbye (Terminate), so the server logs a clean disconnect; errors ignored.
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.wire.addr)
            .field("backend_pid", &self.backend_pid)
            .field("session", &self.session)
            .field("status", &self.status)
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

impl ToStatement for Statement {
    fn to_statement(&self, _client: &mut Client) -> Result<Statement, Error> {
        Ok(self.clone())
    }
}

impl ToStatement for str {
    fn to_statement(&self, client: &mut Client) -> Result<Statement, Error> {
        client.prepare_cached(self)
    }
}

impl ToStatement for String {
    fn to_statement(&self, client: &mut Client) -> Result<Statement, Error> {
        client.prepare_cached(self)
    }
}

impl std::fmt::Display for AuthMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthMethod::NoPassword => "no password (trust or certificate)",
            AuthMethod::Cleartext => "cleartext password",
            AuthMethod::Md5 => "MD5",
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
            AuthMethod::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
        })
    }
}

/// What `Client::answers` hands on.
enum Answer {
    Columns(RowDescriptionBody),
    Row(DataRowBody),
    Done(CommandCompleteBody),
}

fn command_tag(body: &CommandCompleteBody) -> Result<&str, String> {
    body.tag()
        .map_err(|e| format!("a command tag that is not UTF-8 ({e})"))
}

fn copy_unsupported() -> Error {
    Error::Usage {
        detail: "COPY is not supported by this client: use INSERT or SELECT".to_owned(),
    }
}

fn scram_was_bound(scram: &Scram) -> bool {
    scram.mechanism() == auth::SCRAM_SHA_256_PLUS
}

fn transaction_status(byte: u8) -> TransactionStatus {
    match byte {
        b'T' => TransactionStatus::InTransaction,
        b'E' => TransactionStatus::Failed,
        _ => TransactionStatus::Idle,
    }
}

/// The row count of a command tag: `INSERT 0 5`, `UPDATE 3`, `SELECT 2`, `DELETE 0`.
fn affected_rows(tag: &str) -> u64 {
    tag.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn db_error_from(fields: &mut ErrorFields<'_>) -> DbError {
    let mut db = DbError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
        schema: None,
        table: None,
        column: None,
        constraint: None,
        context: None,
    };
    let mut localized_severity = String::new();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => db.severity = value,
            b'S' => localized_severity = value,
            b'C' => db.code = value,
            b'M' => db.message = value,
            b'D' => db.detail = Some(value),
            b'H' => db.hint = Some(value),
            b's' => db.schema = Some(value),
            b't' => db.table = Some(value),
            b'c' => db.column = Some(value),
            b'n' => db.constraint = Some(value),
            b'W' => db.context = Some(value),
            _ => {}
        }
    }
    if db.severity.is_empty() {
        db.severity = localized_severity;
    }
    if db.code.is_empty() {
        // XX000 internal_error: the server sent no SQLSTATE, which it always does.
        db.code = "XX000".to_owned();
    }
    db
}

fn message_name(message: &Message) -> &'static str {
    match message {
        Message::AuthenticationOk
        | Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_)
        | Message::AuthenticationGss
        | Message::AuthenticationGssContinue(_)
        | Message::AuthenticationKerberosV5
        | Message::AuthenticationScmCredential
        | Message::AuthenticationSspi => "Authentication",
        Message::BackendKeyData(_) => "BackendKeyData",
        Message::BindComplete => "BindComplete",
        Message::CloseComplete => "CloseComplete",
        Message::CommandComplete(_) => "CommandComplete",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::DataRow(_) => "DataRow",
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::ErrorResponse(_) => "ErrorResponse",
        Message::NoData => "NoData",
        Message::NoticeResponse(_) => "NoticeResponse",
        Message::NotificationResponse(_) => "NotificationResponse",
        Message::ParameterDescription(_) => "ParameterDescription",
        Message::ParameterStatus(_) => "ParameterStatus",
        Message::ParseComplete => "ParseComplete",
        Message::PortalSuspended => "PortalSuspended",
        Message::ReadyForQuery(_) => "ReadyForQuery",
        Message::RowDescription(_) => "RowDescription",
        _ => "unknown",
    }
}

/// Runs every decoder of ours over `message`, for the framing fuzz test: whatever the
/// server sends, decoding returns a value or an error and never panics.
#[cfg(test)]
pub(crate) fn exercise(message: Message) {
    use crate::row::Column;
    match message {
        Message::ErrorResponse(body) => {
            let _ = db_error_from(&mut body.fields()).to_string();
        }
        Message::NoticeResponse(body) => {
            let _ = db_error_from(&mut body.fields());
        }
        Message::RowDescription(body) => {
            let _ = row::columns(&body);
        }
        Message::DataRow(body) => {
            let columns: Arc<[Column]> = (0..3)
                .map(|i| Column {
                    name: format!("c{i}"),
                    type_: [Type::INT4, Type::TEXT, Type::TIMESTAMP][i],
                })
                .collect();
            let _ = row::simple_row(Arc::from(vec!["a".to_owned()]), &body);
            if let Ok(row) = Row::new(columns, body) {
                let _ = row.get::<Option<i32>>(0);
                let _ = row.get::<Option<String>>(1);
                let _ = row.get::<Option<crate::Timestamp>>(2);
            }
        }
        Message::CommandComplete(body) => {
            if let Ok(tag) = body.tag() {
                let _ = affected_rows(tag);
            }
        }
        Message::AuthenticationSasl(body) => {
            let mut m = body.mechanisms();
            while let Ok(Some(_)) = m.next() {}
        }
        Message::AuthenticationSaslContinue(body) => {
            let mut scram = Scram::new("pw", Binding::Unsupported);
            let _ = scram.client_final(body.data());
        }
        Message::AuthenticationSaslFinal(body) => {
            let scram = Scram::new("pw", Binding::Unsupported);
            let _ = scram.verify_server_final(body.data());
        }
        Message::ParameterDescription(body) => {
            let mut p = body.parameters();
            while let Ok(Some(_)) = p.next() {}
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_tags_give_the_affected_rows() {
        assert_eq!(affected_rows("INSERT 0 5"), 5);
        assert_eq!(affected_rows("UPDATE 3"), 3);
        assert_eq!(affected_rows("SELECT 0"), 0);
        assert_eq!(affected_rows("BEGIN"), 0);
        assert_eq!(affected_rows(""), 0);
    }
}
