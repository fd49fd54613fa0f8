//! What a configuration leaves exposed although it is allowed: said as warnings when any
//! command starts (the worker's log; the operator commands' stderr, `check` included), so
//! an operator sees them before they matter.
//!
//! - The SASL password sent in clear: PLAIN over `SASL_PLAINTEXT`, which the configuration
//!   refuses unless `KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true` (`config`).
//!
//! Pure reading: nothing here changes a file or stops the program.
use crate::config::Config;

/// Every warning the configuration deserves, one sentence each (what is exposed, and what
/// to do about it).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    if config.security.sends_password_in_clear() {
        out.push(
            "KAFKA_SASL_PLAIN_ALLOW_CLEARTEXT=true: the SASL password goes to the broker in clear (PLAIN over SASL_PLAINTEXT) on every connection and every re-authentication, readable by anyone on the network path; use KAFKA_SECURITY_PROTOCOL=SASL_SSL, or SCRAM-SHA-256/512, outside a network you trust"
                .to_owned(),
        );
    }
    out
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
        let w = warnings(&load(&vars));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("SASL password goes to the broker in clear"),
            "{w:?}"
        );
        assert!(w[0].contains("SASL_SSL"), "{w:?}");
        vars.push(("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"));
        assert_eq!(warnings(&load(&vars)), Vec::<String>::new());
        assert_eq!(warnings(&load(&[])), Vec::<String>::new());
    }
}
