//! Rendering the mock kubeconfig handed back for a completed request (pure).
//!
//! The document is built from serde structs and serialized by serde_yaml, never by string
//! formatting: the user id is arbitrary text (quotes, newlines, `: `, `#`, `!!`, …), and only a
//! real YAML emitter quotes every such value correctly.
//!
//! Architecture Invariant: this module has no log calls, because everything it handles
//! includes the bearer token.

use std::collections::BTreeMap;
use std::fmt;

use rand::Rng;
use serde::Serialize;

use crate::request::ProvisionRequest;

/// Length of the bearer token from [`new_token`].
pub const TOKEN_CHARS: usize = 48;

/// Why a kubeconfig could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeconfigError {
    /// serde_yaml refused the document (its message); the document is plain strings, so this
    /// is a bug.
    Serialize(String),
}

/// A random [`TOKEN_CHARS`]-character `[A-Za-z0-9]` bearer token.
pub fn new_token() -> String {
    // `rand::rng()` is a cryptographically secure generator reseeded from the OS, which a
    // bearer token needs even in a mock: the format is the one real tokens will have.
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(TOKEN_CHARS)
        .map(char::from)
        .collect()
}

/// Renders the kubeconfig YAML giving `request.user_id` access to the request's cluster.
pub fn render(request: &ProvisionRequest, token: &str) -> Result<String, KubeconfigError> {
    let cluster_name = format!("gpu-{}", request.request_id);
    let context_name = format!("{}@{cluster_name}", request.user_id);
    let document = Kubeconfig {
        api_version: "v1",
        kind: "Config",
        clusters: vec![Named {
            name: &cluster_name,
            cluster: Cluster {
                server: server_url(&request.request_id),
                certificate_authority_data: base64(FAKE_CA_PEM.as_bytes()),
            },
        }],
        users: vec![NamedUser {
            name: &request.user_id,
            user: User { token },
        }],
        contexts: vec![NamedContext {
            name: &context_name,
            context: Context {
                cluster: &cluster_name,
                user: &request.user_id,
            },
        }],
        current_context: &context_name,
        preferences: BTreeMap::new(),
    };
    serde_yaml::to_string(&document).map_err(|err| KubeconfigError::Serialize(err.to_string()))
}

impl fmt::Display for KubeconfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KubeconfigError::Serialize(message) => write!(
                f,
                "cannot render the kubeconfig as YAML ({message}); this is a bug, please report it with the request"
            ),
        }
    }
}

impl std::error::Error for KubeconfigError {}

/// A self-evidently fake CA certificate: clients need the field to be present and base64,
/// nothing more, since the server it vouches for does not exist.
const FAKE_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MOCKCERTIFICATEFORTHEPROVISIONWORKERNOTAREALCERTIFICATEAUTHORITY0\n\
-----END CERTIFICATE-----\n";

/// The API server port every mock cluster listens on.
const API_PORT: u16 = 6443;

/// Field order here is the order in the YAML, following the kubeconfig documentation.
#[derive(Serialize)]
struct Kubeconfig<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: Vec<Named<'a>>,
    users: Vec<NamedUser<'a>>,
    contexts: Vec<NamedContext<'a>>,
    #[serde(rename = "current-context")]
    current_context: &'a str,
    /// Serializes as `{}`, which kubectl writes for "no preferences".
    preferences: BTreeMap<String, String>,
}

#[derive(Serialize)]
struct Named<'a> {
    name: &'a str,
    cluster: Cluster,
}

#[derive(Serialize)]
struct Cluster {
    server: String,
    #[serde(rename = "certificate-authority-data")]
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User<'a>,
}

#[derive(Serialize)]
struct User<'a> {
    token: &'a str,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: &'a str,
    context: Context<'a>,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

/// `https://gpu-<label>.provision.local:6443`, where the label is the first 8 ASCII letters
/// or digits of the request id, lower-cased, or `cluster` if it has none; whatever the id
/// holds, the host stays a valid DNS name.
fn server_url(request_id: &str) -> String {
    let label: String = request_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(8)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let label = if label.is_empty() {
        "cluster".to_string()
    } else {
        label
    };
    format!("https://gpu-{label}.provision.local:{API_PORT}")
}

/// Standard base64 with padding; a dozen lines instead of a dependency for one constant.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut encoded = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let group = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let index = (group >> (18 - 6 * i)) & 0x3f;
                encoded.push(char::from(ALPHABET[index as usize]));
            } else {
                encoded.push('=');
            }
        }
    }
    encoded
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_yaml::Value;

    fn request(request_id: &str, user_id: &str) -> ProvisionRequest {
        ProvisionRequest {
            request_id: request_id.to_string(),
            user_id: user_id.to_string(),
            gpu_count: 4,
            duration_hours: 2,
        }
    }

    fn parse_back(request: &ProvisionRequest, token: &str) -> Value {
        let yaml = render(request, token).unwrap();
        serde_yaml::from_str(&yaml).unwrap_or_else(|err| panic!("{err}\n{yaml}"))
    }

    /// The path through mappings (by key) and sequences (by index) to a string leaf.
    fn at<'v>(value: &'v Value, path: &[&str]) -> &'v str {
        let mut current = value;
        for step in path {
            current = match step.parse::<usize>() {
                Ok(index) => &current[index],
                Err(_) => &current[*step],
            };
        }
        current
            .as_str()
            .unwrap_or_else(|| panic!("{path:?} is not a string: {current:?}"))
    }

    fn check_server(request_id: &str, expected: &str) {
        let doc = parse_back(&request(request_id, "u"), "t");
        assert_eq!(
            at(&doc, &["clusters", "0", "cluster", "server"]),
            expected,
            "{request_id:?}"
        );
    }

    #[test]
    fn renders_every_field() {
        let request = request("550e8400-e29b-41d4-a716-446655440000", "alice");
        let doc = parse_back(&request, "secret-token");
        let cluster = "gpu-550e8400-e29b-41d4-a716-446655440000";
        let context = "alice@gpu-550e8400-e29b-41d4-a716-446655440000";

        assert_eq!(at(&doc, &["apiVersion"]), "v1");
        assert_eq!(at(&doc, &["kind"]), "Config");
        assert_eq!(doc["clusters"].as_sequence().unwrap().len(), 1);
        assert_eq!(at(&doc, &["clusters", "0", "name"]), cluster);
        assert_eq!(
            at(&doc, &["clusters", "0", "cluster", "server"]),
            "https://gpu-550e8400.provision.local:6443"
        );
        assert_eq!(
            at(
                &doc,
                &["clusters", "0", "cluster", "certificate-authority-data"]
            ),
            base64(FAKE_CA_PEM.as_bytes())
        );
        assert_eq!(doc["users"].as_sequence().unwrap().len(), 1);
        assert_eq!(at(&doc, &["users", "0", "name"]), "alice");
        assert_eq!(at(&doc, &["users", "0", "user", "token"]), "secret-token");
        assert_eq!(doc["contexts"].as_sequence().unwrap().len(), 1);
        assert_eq!(at(&doc, &["contexts", "0", "name"]), context);
        assert_eq!(at(&doc, &["contexts", "0", "context", "cluster"]), cluster);
        assert_eq!(at(&doc, &["contexts", "0", "context", "user"]), "alice");
        assert_eq!(at(&doc, &["current-context"]), context);
        assert_eq!(doc["preferences"], Value::Mapping(Default::default()));
        assert_eq!(doc.as_mapping().unwrap().len(), 7);
    }

    #[test]
    fn server_host_is_valid_whatever_the_request_id() {
        check_server("abc-123", "https://gpu-abc123.provision.local:6443");
        check_server("ABCDEFGHIJ", "https://gpu-abcdefgh.provision.local:6443");
        check_server("日本-é_x/../y", "https://gpu-xy.provision.local:6443");
        check_server("---", "https://gpu-cluster.provision.local:6443");
        check_server("😀 @:#", "https://gpu-cluster.provision.local:6443");
    }

    #[test]
    fn certificate_is_base64_of_a_pem() {
        assert!(FAKE_CA_PEM.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(FAKE_CA_PEM.ends_with("-----END CERTIFICATE-----\n"));
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("\u{ff}\u{fe}", "w7/Dvg=="),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
    }

    #[test]
    fn tricky_user_ids_survive_yaml() {
        for user_id in [
            "a: b",
            "# comment",
            "&anchor",
            "*alias",
            "!!binary",
            "- item",
            "null",
            "~",
            "yes",
            "0x1F",
            "1e3",
            "'single'",
            "\"double\"",
            "line\nbreak",
            "trailing\n",
            " padded ",
            "tab\there",
            "nul\0bell\u{7}del\u{7f}",
            "\u{85}\u{2028}\u{feff}",
            "---",
            "...",
            "{flow: map}",
            "[flow, seq]",
            "%YAML 1.2",
            "@at",
            "`tick`",
            "|",
            ">",
            "日本語 😀",
        ] {
            let doc = parse_back(&request("r", user_id), "t");
            assert_eq!(at(&doc, &["users", "0", "name"]), user_id);
            assert_eq!(at(&doc, &["contexts", "0", "context", "user"]), user_id);
            assert_eq!(at(&doc, &["current-context"]), format!("{user_id}@gpu-r"));
        }
    }

    #[test]
    fn tokens_are_48_random_alphanumerics() {
        let first = new_token();
        assert_eq!(first.len(), TOKEN_CHARS);
        assert!(first.chars().all(|c| c.is_ascii_alphanumeric()), "{first}");
        assert_ne!(first, new_token());
    }

    #[test]
    fn error_says_it_is_a_bug() {
        let message = KubeconfigError::Serialize("boom".into()).to_string();
        assert!(message.starts_with("cannot render"), "{message}");
        assert!(!message.ends_with('.'), "{message}");
    }

    proptest! {
        #[test]
        fn any_user_id_and_request_id_roundtrip(
            user_id in any::<String>(),
            request_id in any::<String>(),
            token in "[A-Za-z0-9]{48}",
        ) {
            let doc = parse_back(&request(&request_id, &user_id), &token);
            let cluster = format!("gpu-{request_id}");
            let context = format!("{user_id}@{cluster}");
            prop_assert_eq!(at(&doc, &["users", "0", "name"]), user_id.as_str());
            prop_assert_eq!(at(&doc, &["users", "0", "user", "token"]), token.as_str());
            prop_assert_eq!(at(&doc, &["contexts", "0", "context", "user"]), user_id.as_str());
            prop_assert_eq!(at(&doc, &["contexts", "0", "context", "cluster"]), cluster.as_str());
            prop_assert_eq!(at(&doc, &["clusters", "0", "name"]), cluster.as_str());
            prop_assert_eq!(at(&doc, &["contexts", "0", "name"]), context.as_str());
            prop_assert_eq!(at(&doc, &["current-context"]), context.as_str());
            let server = at(&doc, &["clusters", "0", "cluster", "server"]);
            let host = server
                .strip_prefix("https://gpu-")
                .and_then(|rest| rest.strip_suffix(".provision.local:6443"))
                .unwrap_or_else(|| panic!("{server}"));
            prop_assert!(!host.is_empty() && host.len() <= 8);
            prop_assert!(host.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        }

        #[test]
        fn user_ids_from_yaml_special_characters_roundtrip(
            user_id in "[-:#&*!|>'\"%@`{}\\[\\],?\n\t \u{0}\u{1b}\u{85}\u{feff}\u{2028}a0~.]{0,24}",
        ) {
            let doc = parse_back(&request("r", &user_id), "t");
            prop_assert_eq!(at(&doc, &["users", "0", "name"]), user_id.as_str());
        }
    }
}
