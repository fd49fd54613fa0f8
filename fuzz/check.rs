//! The invariants checked for every input, shared by the fuzz target
//! (`fuzz/fuzz_targets/parse_render.rs`) and the regular test `tests/fuzz_corpus.rs`,
//! which both include this file with `#[path]`: the seed corpus is checked in every
//! `cargo test` by exactly the code the fuzzer runs. A violated invariant panics, which
//! the fuzzer reports as a crash and saves under `fuzz/artifacts/`.
//!
//! The invariants, per input:
//! - `ProvisionRequest::parse` never panics, whatever the bytes;
//! - an accepted message obeys every rule of the README's "Message format" (size, UTF-8,
//!   field lengths and ranges, no control characters in `request_id`), agrees with a plain
//!   JSON reading of the same bytes, and survives serialize → parse unchanged;
//! - a rejection's reason is short, printable (it goes into a log line, a Kafka header and
//!   `error_message`), lower-case and without a trailing period, and the request id it
//!   names is itself a valid one;
//! - the kubeconfig of an accepted request renders, parses back as YAML, and gives back
//!   `user_id`, `request_id` and the token byte-exact, with a valid DNS host name.

use provision_worker::kubeconfig;
use provision_worker::request::{
    MAX_DURATION_HOURS, MAX_GPU_COUNT, MAX_MESSAGE_BYTES, MAX_REQUEST_ID_CHARS, MAX_USER_ID_CHARS,
    ProvisionRequest, Rejected, RequestError,
};

/// A fixed bearer token (48 alphanumerics, like a real one): rendering under test must not
/// depend on randomness, or a crash could not be replayed.
pub const TOKEN: &str = "FuzzT0kenFuzzT0kenFuzzT0kenFuzzT0kenFuzzT0ken123";

/// Longest reason a rejection may give (a duplicate field name is shortened to 64
/// characters, escaped).
const MAX_REASON_BYTES: usize = 1024;

/// Checks every invariant for one message; returns the request if it was accepted.
pub fn check(data: &[u8]) -> Option<ProvisionRequest> {
    match ProvisionRequest::parse(data) {
        Ok(request) => {
            check_accepted(data, &request);
            check_render(&request);
            Some(request)
        }
        Err(rejected) => {
            check_rejected(data, &rejected);
            None
        }
    }
}

/// Uses the bytes, when they are UTF-8, as a `user_id` in an otherwise valid message: the
/// shortest path for the fuzzer from arbitrary text to the YAML emitter.
pub fn check_user_id(data: &[u8]) {
    let Ok(user) = std::str::from_utf8(data) else {
        return;
    };
    let message = serde_json::json!({
        "request_id": "fuzz-user",
        "user_id": user,
        "gpu_count": 1,
        "duration_hours": 1,
    })
    .to_string();
    let chars = user.chars().count();
    let parsed = check(message.as_bytes());
    if chars == 0 || chars > MAX_USER_ID_CHARS || message.len() > MAX_MESSAGE_BYTES {
        assert!(parsed.is_none(), "user id {user:?} accepted");
    } else if let Some(request) = parsed {
        assert_eq!(request.user_id, user, "user id not kept byte-exact");
    } else if !user.trim().is_empty() {
        // (A whitespace-only user id is left out: the README calls it blank, the code
        // accepts it; see the report on issue 4.)
        panic!("valid user id {user:?} rejected");
    }
}

fn check_accepted(data: &[u8], request: &ProvisionRequest) {
    assert!(
        data.len() <= MAX_MESSAGE_BYTES,
        "accepted {} bytes",
        data.len()
    );
    assert!(std::str::from_utf8(data).is_ok(), "accepted invalid UTF-8");
    check_request_id(&request.request_id);
    let user_chars = request.user_id.chars().count();
    assert!(
        (1..=MAX_USER_ID_CHARS).contains(&user_chars),
        "accepted a user id of {user_chars} characters"
    );
    assert!((1..=MAX_GPU_COUNT).contains(&request.gpu_count));
    assert!((1..=MAX_DURATION_HOURS).contains(&request.duration_hours));

    // A plain JSON reading agrees (when serde_json can build the whole value: it stops at
    // 128 levels of nesting, which the worker skips in fields it ignores).
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        assert_eq!(
            value["request_id"].as_str(),
            Some(request.request_id.as_str())
        );
        assert_eq!(value["user_id"].as_str(), Some(request.user_id.as_str()));
        assert_eq!(
            value["gpu_count"].as_u64(),
            Some(u64::from(request.gpu_count))
        );
        assert_eq!(
            value["duration_hours"].as_u64(),
            Some(u64::from(request.duration_hours))
        );
    }

    // The wire form (what `provision-worker send` publishes) parses back to the same.
    let wire = serde_json::to_vec(request).expect("a request serializes");
    assert_eq!(
        ProvisionRequest::parse(&wire).as_ref(),
        Ok(request),
        "serialize → parse changed the request"
    );
}

fn check_rejected(data: &[u8], rejected: &Rejected) {
    let reason = rejected.to_string();
    assert!(!reason.is_empty(), "empty reason");
    assert!(
        reason.len() <= MAX_REASON_BYTES,
        "reason of {} bytes: {reason:?}",
        reason.len()
    );
    assert!(
        !reason.chars().any(char::is_control),
        "reason with a control character (it goes into log lines and headers): {reason:?}"
    );
    assert!(
        !reason.starts_with(char::is_uppercase) && !reason.ends_with('.'),
        "reason not in the project's error style: {reason:?}"
    );
    if data.len() > MAX_MESSAGE_BYTES {
        assert!(
            matches!(rejected.reason, RequestError::TooLarge { .. }),
            "{} bytes rejected for another reason: {reason}",
            data.len()
        );
    }
    if let Some(id) = &rejected.request_id {
        check_request_id(id);
    }
}

fn check_request_id(id: &str) {
    let chars = id.chars().count();
    assert!(
        (1..=MAX_REQUEST_ID_CHARS).contains(&chars),
        "request id of {chars} characters"
    );
    assert!(!id.trim().is_empty(), "blank request id {id:?}");
    assert!(
        !id.chars().any(char::is_control),
        "request id with a control character: {id:?}"
    );
}

fn check_render(request: &ProvisionRequest) {
    let yaml = kubeconfig::render(request, TOKEN);
    let doc: serde_yaml::Value = serde_yaml::from_str(&yaml)
        .unwrap_or_else(|e| panic!("the kubeconfig does not parse back ({e}):\n{yaml}"));
    let text = |path: &[&str]| -> &str {
        let mut value = &doc;
        for step in path {
            value = match step.parse::<usize>() {
                Ok(index) => &value[index],
                Err(_) => &value[*step],
            };
        }
        value
            .as_str()
            .unwrap_or_else(|| panic!("{path:?} is not a string in:\n{yaml}"))
    };
    let cluster = format!("gpu-{}", request.request_id);
    let context = format!("{}@{cluster}", request.user_id);
    assert_eq!(text(&["apiVersion"]), "v1");
    assert_eq!(text(&["kind"]), "Config");
    assert_eq!(text(&["users", "0", "name"]), request.user_id);
    assert_eq!(text(&["users", "0", "user", "token"]), TOKEN);
    assert_eq!(text(&["contexts", "0", "context", "user"]), request.user_id);
    assert_eq!(text(&["contexts", "0", "context", "cluster"]), cluster);
    assert_eq!(text(&["clusters", "0", "name"]), cluster);
    assert_eq!(text(&["contexts", "0", "name"]), context);
    assert_eq!(text(&["current-context"]), context);
    let server = text(&["clusters", "0", "cluster", "server"]);
    let host = server
        .strip_prefix("https://gpu-")
        .and_then(|rest| rest.strip_suffix(".provision.local:6443"))
        .unwrap_or_else(|| panic!("unexpected server {server:?}"));
    assert!(
        (1..=8).contains(&host.len())
            && host
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()),
        "server host label {host:?} is not a valid DNS label"
    );
    assert_eq!(
        doc.as_mapping().map(serde_yaml::Mapping::len),
        Some(7),
        "unexpected top-level keys:\n{yaml}"
    );
}
