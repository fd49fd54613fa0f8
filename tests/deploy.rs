//! The service files in deploy/ agree with the worker and with each other: the systemd unit
//! is valid (systemd-analyze), sandboxed, and waits longer than a graceful shutdown takes;
//! the Dockerfile ships exactly the binary scripts/build-static.sh builds.

use std::path::Path;
use std::process::Command;

use provision_worker::config::VARIABLES;

const UNIT: &str = include_str!("../deploy/provision-worker.service");
const DOCKERFILE: &str = include_str!("../deploy/Dockerfile");
const DOCKERIGNORE: &str = include_str!("../deploy/Dockerfile.dockerignore");
const BUILD_STATIC: &str = include_str!("../scripts/build-static.sh");

/// After SHUTDOWN_TIMEOUT_SECONDS the poller waits up to 5 s more for interrupted workers
/// (ABORT_GRACE), then commits and leaves the group: a stop needs this much on top.
const AFTER_SHUTDOWN_TIMEOUT_SECS: u64 = 10;

#[test]
fn unit_stop_timeout_outlasts_a_graceful_shutdown() {
    let shutdown: u64 = match unit_values("Environment")
        .iter()
        .find_map(|v| v.strip_prefix("SHUTDOWN_TIMEOUT_SECONDS="))
    {
        Some(v) => v.parse().expect("a whole number of seconds"),
        None => default_of("SHUTDOWN_TIMEOUT_SECONDS")
            .parse()
            .expect("a number"),
    };
    let stop: u64 = unit_value("TimeoutStopSec")
        .parse()
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop >= shutdown + AFTER_SHUTDOWN_TIMEOUT_SECS,
        "TimeoutStopSec={stop} leaves no room after SHUTDOWN_TIMEOUT_SECONDS={shutdown}"
    );
    // The Dockerfile's advice for `docker stop` is the same.
    assert!(
        DOCKERFILE.contains(&format!("--stop-timeout {stop}")),
        "deploy/Dockerfile should advise --stop-timeout {stop}"
    );
}

#[test]
fn unit_restarts_on_failure_but_not_on_bad_configuration_and_is_sandboxed() {
    for (key, value) in [
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "2"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("DynamicUser", "yes"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(unit_value(key), value, "{key}");
    }
    // The database lives in the state directory, the one place the sandbox lets it write.
    let state = unit_value("StateDirectory");
    let url = unit_values("Environment")
        .into_iter()
        .find_map(|v| v.strip_prefix("DATABASE_URL=").map(str::to_owned))
        .expect("the unit sets DATABASE_URL");
    assert!(
        url.starts_with(&format!("sqlite:////var/lib/{state}/")),
        "{url} is outside StateDirectory={state}"
    );
}

#[test]
fn systemd_accepts_the_unit() {
    // systemd-analyze checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().expect("a temporary directory");
    let unit = dir.path().join("provision-worker.service");
    let exec = env!("CARGO_BIN_EXE_provision-worker");
    std::fs::write(&unit, UNIT.replace("/usr/local/bin/provision-worker", exec))
        .expect("write the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run systemd-analyze ({e}); install systemd to check the unit")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");
}

#[test]
fn dockerfile_ships_the_static_binary_into_an_empty_image() {
    let bin = static_binary_path();
    let lines: Vec<&str> = DOCKERFILE
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
        .collect();
    assert_eq!(lines.first(), Some(&"FROM scratch"));
    assert!(
        lines.contains(&format!("COPY {bin} /provision-worker").as_str()),
        "the Dockerfile does not copy {bin}"
    );
    assert!(lines.contains(&"USER 65534:65534"), "runs as root");
    assert!(lines.contains(&"ENV DATABASE_URL=sqlite:////data/poc.db"));
    assert!(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/rootfs/data")
            .is_dir()
    );
    // The build context is the repository root: its ignore file lets in exactly what the
    // COPY lines take.
    for needed in [bin.as_str(), "deploy/rootfs/"] {
        assert!(
            DOCKERIGNORE.lines().any(|l| l == format!("!{needed}")),
            "Dockerfile.dockerignore keeps {needed} out of the build context"
        );
    }
}

/// Where scripts/build-static.sh puts the binary, from its own variables.
fn static_binary_path() -> String {
    let var = |name: &str| {
        BUILD_STATIC
            .lines()
            .find_map(|l| l.strip_prefix(&format!("readonly {name}=")))
            .unwrap_or_else(|| panic!("build-static.sh has no readonly {name}"))
            .trim_matches('"')
            .to_owned()
    };
    var("BIN")
        .replace("$TARGET_DIR", &var("TARGET_DIR"))
        .replace("$TARGET", &var("TARGET"))
}

fn unit_values(key: &str) -> Vec<&'static str> {
    UNIT.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .collect()
}

fn unit_value(key: &str) -> &'static str {
    match unit_values(key).as_slice() {
        [one] => one,
        other => panic!("expected one {key}= in the unit, found {other:?}"),
    }
}

fn default_of(name: &str) -> &'static str {
    VARIABLES
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, default, _)| *default)
        .unwrap_or_else(|| panic!("{name} is not a configuration variable"))
}
