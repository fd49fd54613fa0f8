//! What a configuration leaves exposed although it is allowed: said as warnings when any
//! command starts (the worker's log; the operator commands' stderr, `check` included), so
//! an operator sees them before they matter.
//!
//! - The SASL password sent in clear: PLAIN over `SASL_PLAINTEXT`, which the configuration
//!   refuses unless `KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true` (`config`).
//! - Files holding a secret that other users can read or write: the password file
//!   (`KAFKA_SASL_PASSWORD_FILE`), the client key (`KAFKA_SSL_KEY_LOCATION`), and a `.env`
//!   that sets `KAFKA_SASL_PASSWORD` (the one secret a `.env` can hold). "Other users" as
//!   for the database file (`store`): the mode's "others" bits. Group access is left alone:
//!   it is how a key is shared on purpose (Debian's `ssl-cert` group, a Kubernetes
//!   `fsGroup`).
//!
//! Pure reading: nothing here changes a file or stops the program.
use std::path::Path;

use crate::config::{Config, PasswordSource};

/// Every warning the configuration deserves, one sentence each (what is exposed, and what
/// to do about it). `dotenv` is the `.env` the configuration was read from.
pub fn warnings(config: &Config, dotenv: &Path) -> Vec<String> {
    let mut out = Vec::new();
    if config.security.sends_password_in_clear() {
        out.push(
            "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true: the SASL password goes to the broker in clear (PLAIN over SASL_PLAINTEXT) on every connection and every re-authentication, readable by anyone on the network path; use KAFKA_SECURITY_PROTOCOL=SASL_SSL, or SCRAM-SHA-256/512, outside a network you trust"
                .to_owned(),
        );
    }
    if let Some(sasl) = &config.security.sasl
        && let PasswordSource::File(path) = &sasl.password_source
        && let Some(mode) = open_to_others(path)
    {
        let p = path.display();
        out.push(format!(
            "KAFKA_SASL_PASSWORD_FILE={p} can be read by other users (mode {mode:04o}) and holds the SASL password; restrict it with `chmod o-rwx {p}`"
        ));
    }
    if let Some(id) = config
        .security
        .tls
        .as_ref()
        .and_then(|t| t.client_identity.as_ref())
        && let Some(mode) = open_to_others(&id.key_location)
    {
        let p = id.key_location.display();
        out.push(format!(
            "KAFKA_SSL_KEY_LOCATION={p} can be read by other users (mode {mode:04o}) and holds the client certificate's private key; restrict it with `chmod o-rwx {p}`"
        ));
    }
    if let Some(mode) = open_to_others(dotenv)
        && sets_password(dotenv)
    {
        let p = dotenv.display();
        out.push(format!(
            "{p} can be read by other users (mode {mode:04o}) and holds KAFKA_SASL_PASSWORD; restrict it with `chmod o-rwx {p}`, or put the password in a file named by KAFKA_SASL_PASSWORD_FILE"
        ));
    }
    out
}

/// The file's permission bits when users other than its owner and group may read or write
/// it; `None` when they may not, or the file cannot be looked at (then there is nothing to
/// expose, or the configuration's own reading has already said why).
fn open_to_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o006 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// Whether the `.env` at `path` sets `KAFKA_SASL_PASSWORD` to something (its syntax was
/// checked when the configuration was read; a line that does not parse is skipped here).
fn sets_password(path: &Path) -> bool {
    let Ok(entries) = dotenvy::from_path_iter(path) else {
        return false;
    };
    entries.flatten().any(|(name, mut value)| {
        let set = name == "KAFKA_SASL_PASSWORD" && !value.is_empty();
        // (It may be the password.)
        zeroize::Zeroize::zeroize(&mut value);
        set
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(vars: &[(&str, &str)]) -> Config {
        let vars: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_sources(&|name| vars.get(name).cloned(), None).expect("a valid config")
    }

    #[test]
    fn plain_in_clear_is_warned_about_when_allowed_and_nothing_else_is() {
        let mut vars = vec![
            ("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT"),
            ("KAFKA_SASL_USERNAME", "bob"),
            ("KAFKA_SASL_PASSWORD", "pw"),
            ("KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT", "true"),
        ];
        let none = Path::new("/nonexistent/.env");
        let w = warnings(&load(&vars), none);
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("SASL password goes to the broker in clear"),
            "{w:?}"
        );
        assert!(w[0].contains("SASL_SSL"), "{w:?}");
        vars.push(("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"));
        assert_eq!(warnings(&load(&vars), none), Vec::<String>::new());
        assert_eq!(warnings(&load(&[]), none), Vec::<String>::new());
    }
}
