//! The kubeconfig as real kubeconfig readers see it.
//!
//! Readers of kubeconfigs parse YAML 1.1 (PyYAML under the Python Kubernetes client, go-yaml
//! v2 under kubectl), where `no` is false, `1:30` is 90 and `2026-12-01` is a date; our own
//! tests parse YAML 1.2. Every string the worker writes must read back as the same string
//! under both (DESIGN.md invariant 10). This test renders a generated list of user ids and
//! request ids that YAML 1.1 or 1.2 would read as something other than a string, plus the
//! fault tests' hostile ones, and reads each kubeconfig back three ways: serde_yaml (YAML
//! 1.2), PyYAML's `yaml.safe_load`, and the Kubernetes Python client's
//! `load_kube_config`, whose current context must lead to our user entry and token
//! (tests/interop/kubeconfig_check.py).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use provision_worker::kubeconfig;
use provision_worker::request::ProvisionRequest;
use serde_json::{Value, json};

#[test]
fn yaml_ambiguous_and_hostile_ids_read_back_exactly_with_pyyaml_and_the_kubernetes_client() {
    let ids = ambiguous_ids();
    assert!(ids.len() > 300, "only {} ids", ids.len());
    let token = kubeconfig::new_token();
    let mut cases = Vec::new();
    // Each id as the user id (users, contexts, current-context) and as the request id
    // (cluster and context names).
    for id in &ids {
        cases.push(case(id, "r", &token));
        cases.push(case("u", id, &token));
    }
    for case in &cases {
        check_yaml_1_2(case);
    }
    let failures = read_with_python(&cases);
    let failures = failures.as_array().expect("a JSON list");
    let shown: Vec<String> = failures
        .iter()
        .take(40)
        .map(|f| {
            format!(
                "user {:?}, request {:?}: {}",
                f["user_id"].as_str().unwrap_or("?"),
                f["request_id"].as_str().unwrap_or("?"),
                f["problems"]
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} kubeconfigs do not read back exactly under YAML 1.1 (PyYAML / the Kubernetes \
         client); the first ones:\n{}",
        failures.len(),
        cases.len(),
        shown.join("\n")
    );
    eprintln!(
        "{} ids, {} kubeconfigs read back exactly by serde_yaml, PyYAML and the Kubernetes client",
        ids.len(),
        cases.len()
    );
}

/// One rendered kubeconfig and what it must say, as the Python checker reads it.
fn case(user_id: &str, request_id: &str, token: &str) -> Value {
    let request = ProvisionRequest {
        request_id: request_id.to_owned(),
        user_id: user_id.to_owned(),
        gpu_count: 1,
        duration_hours: 1,
    };
    json!({
        "user_id": user_id,
        "request_id": request_id,
        "token": token,
        "yaml": kubeconfig::render(&request, token),
    })
}

/// The same strings under a YAML 1.2 parser.
fn check_yaml_1_2(case: &Value) {
    let text = case["yaml"].as_str().expect("yaml");
    let user = case["user_id"].as_str().expect("user_id");
    let cluster = format!("gpu-{}", case["request_id"].as_str().expect("request_id"));
    let context = format!("{user}@{cluster}");
    let doc: serde_yaml::Value = serde_yaml::from_str(text).unwrap_or_else(|e| {
        panic!("YAML 1.2 cannot read the kubeconfig of {user:?} ({e}):\n{text}")
    });
    for (path, want) in [
        (&["users", "0", "name"][..], user),
        (
            &["users", "0", "user", "token"],
            case["token"].as_str().expect("token"),
        ),
        (&["contexts", "0", "context", "user"], user),
        (&["contexts", "0", "context", "cluster"], &cluster),
        (&["contexts", "0", "name"], &context),
        (&["clusters", "0", "name"], &cluster),
        (&["current-context"], &context),
    ] {
        let mut value = &doc;
        for step in path {
            value = match step.parse::<usize>() {
                Ok(i) => &value[i],
                Err(_) => &value[*step],
            };
        }
        assert_eq!(
            value.as_str(),
            Some(want),
            "YAML 1.2 reads {path:?} of {user:?} differently:\n{text}"
        );
    }
}

/// Runs tests/interop/kubeconfig_check.py over every case; its list of failures.
fn read_with_python(cases: &[Value]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/kubeconfig_check.py");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {python} {}: {e}", script.display()));
    let input = serde_json::to_vec(cases).expect("JSON");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    // From its own thread, so a full stdout pipe cannot deadlock against our write.
    let writer = std::thread::spawn(move || pipe.write_all(&input));
    let out = child
        .wait_with_output()
        .expect("wait for kubeconfig_check.py");
    writer
        .join()
        .expect("stdin writer")
        .expect("write kubeconfig_check.py's stdin");
    assert!(
        out.status.success(),
        "kubeconfig_check.py failed ({}):\n{}\n(PyYAML and kubernetes come from \
         python3 -m pip install -r tests/requirements.txt)",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "kubeconfig_check.py printed no JSON ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Strings YAML 1.1 or 1.2 would read as something else, or that would break a naive emitter.
fn ambiguous_ids() -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    let mut add = |s: &str| ids.push(s.to_owned());
    // Booleans of YAML 1.1 (and 1.2's true/false), in each spelling the specs list.
    for word in ["y", "yes", "n", "no", "true", "false", "on", "off"] {
        let mut capital = word.to_owned();
        capital[..1].make_ascii_uppercase();
        for spelling in [word.to_owned(), capital, word.to_ascii_uppercase()] {
            add(&spelling);
        }
    }
    // Null and empty-looking. Not the empty string itself: the worker refuses an empty user
    // id, and the Kubernetes client treats a context whose user is "" as having none.
    for s in ["null", "Null", "NULL", "~", " ", "  ", "''", "\"\""] {
        add(s);
    }
    // Integers: decimal, signs, octal of both versions, hex, binary, underscores,
    // sexagesimal.
    for s in [
        "0",
        "1",
        "-0",
        "+1",
        "-1",
        "+0",
        "017",
        "0o17",
        "0O17",
        "0x1F",
        "0x1f",
        "0X1F",
        "0b101",
        "1_000",
        "+1_000",
        "-1_0",
        "0b1_0",
        "0x_1F",
        "1:30",
        "-1:30",
        "190:20:30",
        "1:00:00",
        "12345678901234567890",
    ] {
        add(s);
    }
    // Floats: infinities and NaN in every case, exponents, underscores, sexagesimal.
    for s in [
        ".inf",
        ".Inf",
        ".INF",
        "-.inf",
        "+.inf",
        "-.Inf",
        ".nan",
        ".NaN",
        ".NAN",
        "1e3",
        "1E3",
        "1e+3",
        "1e-3",
        "6.8523015e+5",
        "685.230_15e+03",
        "685_230.15",
        "190:20:30.15",
        "1.0",
        "-1.5",
        ".5",
        "1.",
        "0.",
        "+12.3e4",
    ] {
        add(s);
    }
    // Dates and timestamps.
    for s in [
        "2026-12-01",
        "2001-12-14t21:59:43.10-05:00",
        "2001-12-14T21:59:43.10-05:00",
        "2001-12-14 21:59:43.10 -5",
        "2001-12-15T02:59:43.1Z",
        "2002-1-1 1:2:3",
    ] {
        add(s);
    }
    // Indicators and syntax: merge key, value key, tags, anchors, aliases, block scalars,
    // directives, comments, quotes, flow collections, document markers.
    for s in [
        "=",
        "<<",
        "-",
        "?",
        ":",
        "!",
        "&a",
        "*a",
        "|",
        ">",
        "%",
        "@",
        "`",
        "#",
        "'",
        "\"",
        ",",
        "[",
        "]",
        "{",
        "}",
        "- a",
        "? a",
        ": a",
        "a: b",
        "a:",
        "a #b",
        "a#b",
        "!!str",
        "!!int 1",
        "!x y",
        "!<tag:yaml.org,2002:str> x",
        "&a x",
        "*a x",
        "|-",
        ">+",
        "%TAG ! tag:x,2000:",
        "%YAML 1.1",
        "---",
        "--- x",
        "...",
        "... x",
        "<<: *a",
        "'quoted'",
        "\"quoted\"",
        "it's",
        "say \"hi\"",
        "\\",
        "\\n",
        "\\/",
        "\\x41",
        "\\N",
        "\\\"",
    ] {
        add(s);
    }
    // Whitespace and line breaks of both versions.
    for s in [
        " lead",
        "trail ",
        " both ",
        "\t",
        "\ttab",
        "tab\t",
        "a\tb",
        "\n",
        "a\nb",
        "a\n",
        "\na",
        "a\n\nb",
        "\r",
        "a\r\nb",
        "a\u{85}b",
        "\u{85}",
        "a\u{2028}b",
        "a\u{2029}b",
        "\u{2028}",
        "\u{feff}",
        "\u{feff}a",
        "a\u{feff}",
        "\u{a0}",
        "a\u{a0}",
        "\u{3000}",
    ] {
        add(s);
    }
    // Every C0 and C1 control character and DEL, alone and inside text.
    for c in (0u32..0x20).chain([0x7f]).chain(0x80..0xa0) {
        let c = char::from_u32(c).expect("a control character");
        add(&c.to_string());
        add(&format!("x{c}y"));
    }
    // Non-characters, private use, the edges of the ranges YAML calls printable, bidi.
    for s in [
        "\u{fffe}",
        "\u{ffff}",
        "\u{fdd0}",
        "\u{fdef}",
        "a\u{1fffe}",
        "\u{10ffff}",
        "\u{10fffe}",
        "\u{e000}",
        "\u{d7ff}",
        "\u{fffd}",
        "\u{10000}",
        "\u{202e}rtl",
        "e\u{301}",
        "日本語 😀 ﷽",
        "Ünïcödé",
    ] {
        add(s);
    }
    // The fault tests' hostile user ids.
    for s in common::hostile_ids::TRICKY_USERS {
        add(s);
    }
    // The longest user id the worker accepts (256 characters), mixing multi-byte text.
    add(&common::hostile_ids::LONG_USER_CHARS.repeat(32));
    ids
}
