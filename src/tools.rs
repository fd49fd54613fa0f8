//! The operator commands: `send`, `status`, `check`, `offsets`.
use std::process::ExitCode;

use crate::cli::Command;
use crate::config::Config;

/// Runs one operator command and returns its exit code.
pub fn run(_config: &Config, command: Command) -> ExitCode {
    eprintln!("provision-worker: {command:?} is not available yet");
    ExitCode::from(2)
}
