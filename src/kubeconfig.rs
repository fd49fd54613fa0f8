//! Rendering the mock kubeconfig handed back for a completed request (pure).
//!
//! The document has one fixed shape, so it is written by a small emitter here rather than a
//! general YAML serializer. What matters is how the strings are written: the user id and the
//! request id are arbitrary text (quotes, newlines, `: `, `#`, `!!`, ...), and the programs
//! that read kubeconfigs parse YAML 1.1 (PyYAML under the Python Kubernetes client, go-yaml
//! v2 under kubectl), where a plain `no` is false, `1:30` is 90, `2026-12-01` a date and `<<`
//! a merge key, while YAML 1.2 parsers read those as strings. So every string value is written
//! double-quoted, where neither version resolves types, with only the escapes both versions
//! define (see [`push_escaped`]): it reads back as the same string under YAML 1.1 and 1.2
//! (DESIGN.md invariant 10; tests/kubeconfig.rs checks it with PyYAML and the Kubernetes
//! client).
//!
//! Architecture Invariant: this module has no log calls, because everything it handles
//! includes the bearer token.

use std::fmt::Write as _;
use std::sync::LazyLock;

use rand::Rng;

use crate::request::ProvisionRequest;

/// Length of the bearer token from [`new_token`].
pub const TOKEN_CHARS: usize = 48;

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
///
/// The keys and their order follow the kubeconfig documentation (and what kubectl writes):
/// one cluster `gpu-<request id>`, one user named by the user id with a bearer token, one
/// context `<user id>@gpu-<request id>` joining them, which is the current context.
pub fn render(request: &ProvisionRequest, token: &str) -> String {
    let id = request.request_id.as_str();
    let user = request.user_id.as_str();
    // The fixed text is about 560 bytes with the certificate; names appear twice or three
    // times, and escapes can lengthen them.
    let mut out = String::with_capacity(640 + 3 * id.len() + 3 * user.len() + token.len());
    out.push_str("apiVersion: v1\nkind: Config\nclusters:\n- name: \"gpu-");
    push_escaped(&mut out, id);
    out.push_str("\"\n  cluster:\n    server: \"");
    push_server_url(&mut out, id);
    out.push_str("\"\n    certificate-authority-data: \"");
    out.push_str(&CA_DATA);
    out.push_str("\"\nusers:\n- name: \"");
    push_escaped(&mut out, user);
    out.push_str("\"\n  user:\n    token: \"");
    push_escaped(&mut out, token);
    out.push_str("\"\ncontexts:\n- name: \"");
    push_context_name(&mut out, user, id);
    out.push_str("\"\n  context:\n    cluster: \"gpu-");
    push_escaped(&mut out, id);
    out.push_str("\"\n    user: \"");
    push_escaped(&mut out, user);
    out.push_str("\"\ncurrent-context: \"");
    push_context_name(&mut out, user, id);
    // `{}` is what kubectl writes for "no preferences".
    out.push_str("\"\npreferences: {}\n");
    out
}

/// A self-evidently fake CA certificate: clients need the field to be present and base64,
/// nothing more, since the server it vouches for does not exist.
const FAKE_CA_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
MOCKCERTIFICATEFORTHEPROVISIONWORKERNOTAREALCERTIFICATEAUTHORITY0\n\
-----END CERTIFICATE-----\n";

/// The certificate as `certificate-authority-data` holds it, encoded once.
static CA_DATA: LazyLock<String> = LazyLock::new(|| base64(FAKE_CA_PEM.as_bytes()));

/// The API server port every mock cluster listens on.
const API_PORT: u16 = 6443;

/// The body of a double-quoted scalar for `user@gpu-request_id` (escaping each part escapes
/// the whole, since every escape stands for one character).
fn push_context_name(out: &mut String, user: &str, request_id: &str) {
    push_escaped(out, user);
    out.push_str("@gpu-");
    push_escaped(out, request_id);
}

/// Appends `s` as the body of a YAML double-quoted scalar that YAML 1.1 and 1.2 both read
/// back as exactly `s`.
///
/// Left literal: printable characters, which both versions take as they are inside double
/// quotes (no type is ever resolved for a quoted scalar). Escaped, with escapes that exist in
/// both versions (not `\/`, which only 1.2 has): `"` and `\`; tab, newline and carriage
/// return (a literal line break would be folded into a space); the other C0 controls, DEL and
/// the C1 controls (not printable, so a parser refuses them literally); U+0085, U+2028 and
/// U+2029 as `\N`, `\L`, `\P` (line breaks in YAML 1.1 but not in 1.2, so a literal one reads
/// differently under each); the byte order mark U+FEFF; and the Unicode non-characters
/// (U+FDD0..U+FDEF and U+xFFFE/U+xFFFF of every plane), which YAML 1.1 does not list as
/// printable.
fn push_escaped(out: &mut String, s: &str) {
    let bytes = s.as_bytes();
    let mut plain_from = 0;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        // Printable ASCII other than `"` and `\` (nearly every byte of an id) is copied as a
        // run; only the rest is decoded and looked at as a character.
        if (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\' {
            i += 1;
            continue;
        }
        // `i` is always on a character boundary: it moves by whole characters.
        let Some(c) = s[i..].chars().next() else {
            break;
        };
        if needs_escape(c) {
            out.push_str(&s[plain_from..i]);
            push_escape(out, c);
            plain_from = i + c.len_utf8();
        }
        i += c.len_utf8();
    }
    out.push_str(&s[plain_from..]);
}

fn needs_escape(c: char) -> bool {
    match c {
        '"' | '\\' => true,
        ' '..='~' => false,
        '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' => true,
        '\u{2028}' | '\u{2029}' | '\u{feff}' => true,
        _ => is_noncharacter(c),
    }
}

fn is_noncharacter(c: char) -> bool {
    let c = u32::from(c);
    (0xfdd0..=0xfdef).contains(&c) || c & 0xfffe == 0xfffe
}

fn push_escape(out: &mut String, c: char) {
    let short = match c {
        '"' => "\\\"",
        '\\' => "\\\\",
        '\0' => "\\0",
        '\t' => "\\t",
        '\n' => "\\n",
        '\r' => "\\r",
        '\u{85}' => "\\N",
        '\u{2028}' => "\\L",
        '\u{2029}' => "\\P",
        _ => "",
    };
    if !short.is_empty() {
        out.push_str(short);
        return;
    }
    // Writing to a String cannot fail.
    let code = u32::from(c);
    let _ = if code <= 0xff {
        write!(out, "\\x{code:02X}")
    } else if code <= 0xffff {
        write!(out, "\\u{code:04X}")
    } else {
        write!(out, "\\U{code:08X}")
    };
}

/// Appends `https://gpu-<label>.provision.local:6443`, where the label is the first 8 ASCII
/// letters or digits of the request id, lower-cased, or `cluster` if it has none; whatever
/// the id holds, the host stays a valid DNS name (and needs no escape).
fn push_server_url(out: &mut String, request_id: &str) {
    out.push_str("https://gpu-");
    let before = out.len();
    out.extend(
        request_id
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .take(8)
            .map(|c| c.to_ascii_lowercase()),
    );
    if out.len() == before {
        out.push_str("cluster");
    }
    let _ = write!(out, ".provision.local:{API_PORT}");
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
        let yaml = render(request, token);
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
    fn renders_the_kubeconfig_layout_with_every_string_double_quoted() {
        let yaml = render(&request("r-1", "alice"), "TOKEN");
        let ca = base64(FAKE_CA_PEM.as_bytes());
        let expected = [
            "apiVersion: v1",
            "kind: Config",
            "clusters:",
            "- name: \"gpu-r-1\"",
            "  cluster:",
            "    server: \"https://gpu-r1.provision.local:6443\"",
            &format!("    certificate-authority-data: \"{ca}\""),
            "users:",
            "- name: \"alice\"",
            "  user:",
            "    token: \"TOKEN\"",
            "contexts:",
            "- name: \"alice@gpu-r-1\"",
            "  context:",
            "    cluster: \"gpu-r-1\"",
            "    user: \"alice\"",
            "current-context: \"alice@gpu-r-1\"",
            "preferences: {}",
            "",
        ]
        .join("\n");
        assert_eq!(yaml, expected);
    }

    #[test]
    fn escapes_only_what_needs_it_with_escapes_of_both_yaml_versions() {
        for (raw, body) in [
            (
                "plain text: # & * ! | > ' % @ ` {} [] , ?",
                "plain text: # & * ! | > ' % @ ` {} [] , ?",
            ),
            ("\"quoted\" back\\slash /", "\\\"quoted\\\" back\\\\slash /"),
            ("nul\0tab\tlf\ncr\r", "nul\\0tab\\tlf\\ncr\\r"),
            (
                "\u{1}\u{1b}\u{1f}\u{7f}\u{80}\u{9f}",
                "\\x01\\x1B\\x1F\\x7F\\x80\\x9F",
            ),
            ("\u{85}\u{2028}\u{2029}", "\\N\\L\\P"),
            (
                "\u{feff}\u{fdd0}\u{fffe}\u{ffff}",
                "\\uFEFF\\uFDD0\\uFFFE\\uFFFF",
            ),
            ("\u{1fffe}\u{10ffff}", "\\U0001FFFE\\U0010FFFF"),
            // Printable non-ASCII stays literal, including the edges of YAML's printable set.
            (
                "\u{a0}é日本語😀\u{d7ff}\u{e000}\u{fffd}\u{10000}",
                "\u{a0}é日本語😀\u{d7ff}\u{e000}\u{fffd}\u{10000}",
            ),
        ] {
            let mut out = String::new();
            push_escaped(&mut out, raw);
            assert_eq!(out, body, "{raw:?}");
        }
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
