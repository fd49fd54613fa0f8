//! The command line: `run` (the default), `--help`, `--version`, and the operator commands.
//!
//! Parsed by hand rather than with clap to keep the binary small; the grammar is a handful of
//! commands with a few flags each. Arguments are turned once into a validated [`Command`], so
//! the code that carries a command out never re-checks them. Flags take their value either as
//! the next argument or after `=` (`--gpus 4`, `--gpus=4`), and `-h`/`--help` anywhere asks
//! for help.

use std::fmt;

use crate::config::VARIABLES;
use crate::request::{MAX_DURATION_HOURS, MAX_GPU_COUNT, ProvisionRequest};

/// What the user asked the program to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Consume and provision requests until stopped (no arguments, or `run`).
    Run,
    /// `-h`, `--help`, `help`.
    Help,
    /// `-V`, `--version`.
    Version,
    /// `send --user alice --gpus 4 --hours 2 [--request-id ID]`: publish one request. The
    /// values already satisfy the same rules the worker applies to a message.
    Send {
        user: String,
        gpus: u32,
        hours: u32,
        request_id: Option<String>,
    },
    /// `status <request_id> [--kubeconfig]`: show a request's row.
    Status {
        request_id: String,
        kubeconfig: bool,
    },
    /// `check`: validate configuration, database and broker, then exit.
    Check,
    /// `offsets [--reset earliest|latest|<offset>]`: show or move the group's offsets.
    Offsets { reset: Option<ResetTo> },
}

/// Where `offsets --reset` moves the group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    Earliest,
    Latest,
    /// A specific offset, never negative.
    Offset(i64),
}

/// Why the arguments do not form a command. `Display` ends by pointing at `--help`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CliError {
    UnknownCommand {
        command: String,
    },
    UnknownFlag {
        command: &'static str,
        flag: String,
    },
    /// A flag that takes a value came last, or with `=` and nothing after it.
    MissingValue {
        flag: &'static str,
    },
    /// A flag that takes no value was given one with `=`.
    UnexpectedValue {
        flag: &'static str,
    },
    MissingFlag {
        command: &'static str,
        flag: &'static str,
    },
    RepeatedFlag {
        flag: &'static str,
    },
    MissingArgument {
        command: &'static str,
        what: &'static str,
    },
    UnexpectedArgument {
        command: &'static str,
        argument: String,
    },
    /// A value the flag or argument does not accept; `expected` says what it does.
    InvalidValue {
        flag: &'static str,
        value: String,
        expected: String,
    },
}

/// Parses the arguments, WITHOUT the program name.
pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Command, CliError> {
    let args: Vec<String> = args.into_iter().collect();
    // Help wins over everything else, so `send --help` explains instead of complaining
    // about the missing flags.
    if args.iter().any(|arg| arg == "-h" || arg == "--help") {
        return Ok(Command::Help);
    }
    let Some((command, rest)) = args.split_first() else {
        return Ok(Command::Run);
    };
    match command.as_str() {
        "run" => no_arguments("run", rest).map(|()| Command::Run),
        "help" => Ok(Command::Help),
        "-V" | "--version" => no_arguments("--version", rest).map(|()| Command::Version),
        "check" => no_arguments("check", rest).map(|()| Command::Check),
        "send" => parse_send(rest),
        "status" => parse_status(rest),
        "offsets" => parse_offsets(rest),
        _ if command.starts_with('-') => Err(CliError::UnknownFlag {
            command: "provision-worker",
            flag: command.clone(),
        }),
        _ => Err(CliError::UnknownCommand {
            command: command.clone(),
        }),
    }
}

/// The `--help` text: usage, commands, every configuration variable with its default, exit codes.
pub fn help_text() -> String {
    let mut text = format!(
        "provision-worker {version}
{description}

USAGE:
    provision-worker [run]
    provision-worker send --user <USER> --gpus <N> --hours <N> [--request-id <ID>]
    provision-worker status <REQUEST_ID> [--kubeconfig]
    provision-worker check
    provision-worker offsets [--reset earliest|latest|<OFFSET>]
    provision-worker --help | --version

COMMANDS:
    run        consume provisioning requests until SIGINT or SIGTERM (the default)
    send       publish one request to KAFKA_TOPIC; --gpus 1 to {MAX_GPU_COUNT}, --hours 1 to {MAX_DURATION_HOURS};
               a request id is generated unless --request-id is given
    status     show a request's row from the database; --kubeconfig prints only its kubeconfig
    check      validate the configuration, open the database, reach the broker, then exit
    offsets    show the group's committed offsets; --reset moves them (stop every worker first)
    help       show this text (also -h, --help); --version (-V) shows the version

CONFIGURATION:
    Read from the environment, then from .env in the working directory for variables the
    environment lacks. An empty value means the default, except where noted.

",
        version = env!("CARGO_PKG_VERSION"),
        description = env!("CARGO_PKG_DESCRIPTION"),
    );
    let name_width = VARIABLES
        .iter()
        .map(|(name, _, _)| name.len())
        .max()
        .unwrap_or(0);
    for (name, default, description) in VARIABLES {
        let default = if default.is_empty() {
            "(empty)"
        } else {
            default
        };
        text.push_str(&format!(
            "    {name:<name_width$}  default: {default}\n    {:<name_width$}  {description}\n",
            ""
        ));
    }
    text.push_str(
        "
EXIT CODES:
    0      success
    1      runtime error (database, broker, ...)
    2      bad configuration or usage
    130    a second SIGINT or SIGTERM, more than a second after the first, stopped the worker without waiting
",
    );
    text
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::UnknownCommand { command } => write!(f, "unknown command {command:?}"),
            CliError::UnknownFlag { command, flag } => {
                write!(f, "unknown flag {flag:?} for {command}")
            }
            CliError::MissingValue { flag } => write!(f, "{flag} needs a value"),
            CliError::UnexpectedValue { flag } => write!(f, "{flag} takes no value"),
            CliError::MissingFlag { command, flag } => write!(f, "{command} needs {flag}"),
            CliError::RepeatedFlag { flag } => write!(f, "{flag} is given more than once"),
            CliError::MissingArgument { command, what } => write!(f, "{command} needs {what}"),
            CliError::UnexpectedArgument { command, argument } => {
                write!(f, "unexpected argument {argument:?} for {command}")
            }
            CliError::InvalidValue {
                flag,
                value,
                expected,
            } => write!(f, "invalid {flag} {value:?}: expected {expected}"),
        }?;
        write!(f, "; see provision-worker --help")
    }
}

impl std::error::Error for CliError {}

/// One argument after the command, as the flag loops see it.
enum Arg<'a> {
    /// `--name` or `--name=value`; `value` is only what followed `=`.
    Flag {
        name: &'a str,
        value: Option<&'a str>,
    },
    Positional(&'a str),
}

/// Walks the arguments after a command, handing out flags and their values.
struct Args<'a> {
    command: &'static str,
    rest: std::slice::Iter<'a, String>,
}

impl<'a> Args<'a> {
    fn new(command: &'static str, rest: &'a [String]) -> Self {
        Args {
            command,
            rest: rest.iter(),
        }
    }

    fn next(&mut self) -> Option<Arg<'a>> {
        let arg = self.rest.next()?;
        // A lone `-` or a negative number is a value, not a flag.
        let is_flag = arg.starts_with('-') && arg != "-" && arg.parse::<i64>().is_err();
        if !is_flag {
            return Some(Arg::Positional(arg));
        }
        Some(match arg.split_once('=') {
            Some((name, value)) => Arg::Flag {
                name,
                value: Some(value),
            },
            None => Arg::Flag {
                name: arg,
                value: None,
            },
        })
    }

    /// The value of `flag`: after `=`, or else the next argument (whatever it looks like, so
    /// a user id may start with a dash).
    fn value(&mut self, flag: &'static str, inline: Option<&'a str>) -> Result<&'a str, CliError> {
        match inline {
            Some("") => Err(CliError::MissingValue { flag }),
            Some(value) => Ok(value),
            None => self
                .rest
                .next()
                .map(String::as_str)
                .ok_or(CliError::MissingValue { flag }),
        }
    }

    fn unknown_flag(&self, name: &str) -> CliError {
        CliError::UnknownFlag {
            command: self.command,
            flag: name.to_string(),
        }
    }

    fn unexpected(&self, argument: &str) -> CliError {
        CliError::UnexpectedArgument {
            command: self.command,
            argument: argument.to_string(),
        }
    }
}

fn no_arguments(command: &'static str, rest: &[String]) -> Result<(), CliError> {
    match rest.first() {
        None => Ok(()),
        Some(arg) if arg.starts_with('-') => Err(CliError::UnknownFlag {
            command,
            flag: arg.clone(),
        }),
        Some(arg) => Err(CliError::UnexpectedArgument {
            command,
            argument: arg.clone(),
        }),
    }
}

fn parse_send(rest: &[String]) -> Result<Command, CliError> {
    let mut args = Args::new("send", rest);
    let (mut user, mut gpus, mut hours, mut request_id) = (None, None, None, None);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg {
            Arg::Flag { name, value } => (name, value),
            Arg::Positional(value) => return Err(args.unexpected(value)),
        };
        let (flag, slot) = match name {
            "--user" => ("--user", &mut user),
            "--gpus" => ("--gpus", &mut gpus),
            "--hours" => ("--hours", &mut hours),
            "--request-id" => ("--request-id", &mut request_id),
            _ => return Err(args.unknown_flag(name)),
        };
        if slot.is_some() {
            return Err(CliError::RepeatedFlag { flag });
        }
        *slot = Some(args.value(flag, inline)?.to_string());
    }
    let required = |value: Option<String>, flag| {
        value.ok_or(CliError::MissingFlag {
            command: "send",
            flag,
        })
    };
    let user = required(user, "--user")?;
    let gpus = count("--gpus", &required(gpus, "--gpus")?, MAX_GPU_COUNT)?;
    let hours = count("--hours", &required(hours, "--hours")?, MAX_DURATION_HOURS)?;
    check_with_worker_rules(&user, request_id.as_deref())?;
    Ok(Command::Send {
        user,
        gpus,
        hours,
        request_id,
    })
}

fn parse_status(rest: &[String]) -> Result<Command, CliError> {
    let mut args = Args::new("status", rest);
    let mut request_id = None;
    let mut kubeconfig = false;
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag {
                name: "--kubeconfig",
                value,
            } => {
                if value.is_some() {
                    return Err(CliError::UnexpectedValue {
                        flag: "--kubeconfig",
                    });
                }
                if kubeconfig {
                    return Err(CliError::RepeatedFlag {
                        flag: "--kubeconfig",
                    });
                }
                kubeconfig = true;
            }
            Arg::Flag { name, .. } => return Err(args.unknown_flag(name)),
            Arg::Positional(id) if request_id.is_none() => request_id = Some(id.to_string()),
            Arg::Positional(extra) => return Err(args.unexpected(extra)),
        }
    }
    let request_id = request_id.ok_or(CliError::MissingArgument {
        command: "status",
        what: "a request id",
    })?;
    Ok(Command::Status {
        request_id,
        kubeconfig,
    })
}

fn parse_offsets(rest: &[String]) -> Result<Command, CliError> {
    let mut args = Args::new("offsets", rest);
    let mut reset = None;
    while let Some(arg) = args.next() {
        match arg {
            Arg::Flag {
                name: "--reset",
                value,
            } => {
                if reset.is_some() {
                    return Err(CliError::RepeatedFlag { flag: "--reset" });
                }
                reset = Some(reset_to(args.value("--reset", value)?)?);
            }
            Arg::Flag { name, .. } => return Err(args.unknown_flag(name)),
            Arg::Positional(extra) => return Err(args.unexpected(extra)),
        }
    }
    Ok(Command::Offsets { reset })
}

fn reset_to(value: &str) -> Result<ResetTo, CliError> {
    match value.to_ascii_lowercase().as_str() {
        "earliest" => return Ok(ResetTo::Earliest),
        "latest" => return Ok(ResetTo::Latest),
        _ => {}
    }
    match value.parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(ResetTo::Offset(offset)),
        _ => Err(CliError::InvalidValue {
            flag: "--reset",
            value: value.to_string(),
            expected: "earliest, latest or an offset from 0 up".to_string(),
        }),
    }
}

fn count(flag: &'static str, value: &str, max: u32) -> Result<u32, CliError> {
    match value.parse::<u32>() {
        Ok(number) if (1..=max).contains(&number) => Ok(number),
        _ => Err(CliError::InvalidValue {
            flag,
            value: value.to_string(),
            expected: format!("a whole number from 1 to {max}"),
        }),
    }
}

/// Runs the user and request id through the worker's own message validation, so `send` can
/// never publish a request the worker would reject.
fn check_with_worker_rules(user: &str, request_id: Option<&str>) -> Result<(), CliError> {
    // A stand-in id when none was given: only the user is being checked then.
    let probe = ProvisionRequest {
        request_id: request_id.unwrap_or("probe").to_string(),
        user_id: user.to_string(),
        gpu_count: 1,
        duration_hours: 1,
    };
    let reason = match serde_json::to_vec(&probe) {
        Ok(bytes) => match ProvisionRequest::parse(&bytes) {
            Ok(_) => return Ok(()),
            Err(rejected) => rejected.reason,
        },
        // Serializing a struct of strings and numbers cannot fail; if it ever did, the worker
        // would reject the message anyway, so let it through to the real error.
        Err(_) => return Ok(()),
    };
    let (flag, value) = match &reason {
        crate::request::RequestError::Blank { field }
        | crate::request::RequestError::TooLong { field, .. }
        | crate::request::RequestError::ControlCharacter { field, .. }
            if *field == "request_id" =>
        {
            ("--request-id", request_id.unwrap_or_default())
        }
        _ => ("--user", user),
    };
    Err(CliError::InvalidValue {
        flag,
        value: value.to_string(),
        expected: format!("a value the worker accepts ({reason})"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str], expected: Result<Command, CliError>) {
        let actual = parse(args.iter().map(|arg| arg.to_string()));
        assert_eq!(actual, expected, "args {args:?}");
    }

    fn send(
        user: &str,
        gpus: u32,
        hours: u32,
        request_id: Option<&str>,
    ) -> Result<Command, CliError> {
        Ok(Command::Send {
            user: user.to_string(),
            gpus,
            hours,
            request_id: request_id.map(str::to_string),
        })
    }

    fn invalid(flag: &'static str, value: &str, expected: &str) -> Result<Command, CliError> {
        Err(CliError::InvalidValue {
            flag,
            value: value.to_string(),
            expected: expected.to_string(),
        })
    }

    #[test]
    fn no_arguments_or_run_runs_the_worker() {
        check(&[], Ok(Command::Run));
        check(&["run"], Ok(Command::Run));
        check(
            &["run", "extra"],
            Err(CliError::UnexpectedArgument {
                command: "run",
                argument: "extra".into(),
            }),
        );
        check(
            &["run", "--fast"],
            Err(CliError::UnknownFlag {
                command: "run",
                flag: "--fast".into(),
            }),
        );
    }

    #[test]
    fn help_and_version() {
        for args in [
            &["-h"][..],
            &["--help"],
            &["help"],
            &["send", "--help"],
            &["status", "-h"],
        ] {
            check(args, Ok(Command::Help));
        }
        check(&["-V"], Ok(Command::Version));
        check(&["--version"], Ok(Command::Version));
    }

    #[test]
    fn send_takes_flags_in_any_order_and_either_form() {
        check(
            &["send", "--user", "alice", "--gpus", "4", "--hours", "2"],
            send("alice", 4, 2, None),
        );
        check(
            &[
                "send",
                "--hours=2",
                "--request-id",
                "abc-1",
                "--gpus=1024",
                "--user=bob",
            ],
            send("bob", 1024, 2, Some("abc-1")),
        );
        // Values may look like flags or hold `=`: they are taken whole.
        check(
            &[
                "send",
                "--user",
                "--odd=name",
                "--gpus",
                "1",
                "--hours",
                "8760",
            ],
            send("--odd=name", 1, 8760, None),
        );
        check(
            &["send", "--user=a=b", "--gpus", "1", "--hours", "1"],
            send("a=b", 1, 1, None),
        );
    }

    #[test]
    fn send_errors() {
        check(
            &["send", "--gpus", "4", "--hours", "2"],
            Err(CliError::MissingFlag {
                command: "send",
                flag: "--user",
            }),
        );
        check(
            &["send", "--user", "a", "--hours", "2"],
            Err(CliError::MissingFlag {
                command: "send",
                flag: "--gpus",
            }),
        );
        check(
            &["send", "--user", "a", "--gpus", "2"],
            Err(CliError::MissingFlag {
                command: "send",
                flag: "--hours",
            }),
        );
        check(
            &["send", "--user", "a", "--gpus"],
            Err(CliError::MissingValue { flag: "--gpus" }),
        );
        check(
            &["send", "--user=", "--gpus", "1", "--hours", "1"],
            Err(CliError::MissingValue { flag: "--user" }),
        );
        check(
            &["send", "--user", "a", "--user", "b"],
            Err(CliError::RepeatedFlag { flag: "--user" }),
        );
        check(
            &["send", "--user", "a", "--cpus", "2"],
            Err(CliError::UnknownFlag {
                command: "send",
                flag: "--cpus".into(),
            }),
        );
        check(
            &["send", "alice"],
            Err(CliError::UnexpectedArgument {
                command: "send",
                argument: "alice".into(),
            }),
        );
        let whole = |max| format!("a whole number from 1 to {max}");
        for bad in ["0", "1025", "-1", "four", "2.5", ""] {
            check(
                &["send", "--user", "a", "--gpus", bad, "--hours", "1"],
                invalid("--gpus", bad, &whole(1024)),
            );
        }
        check(
            &["send", "--user", "a", "--gpus", "1", "--hours", "8761"],
            invalid("--hours", "8761", &whole(8760)),
        );
    }

    #[test]
    fn send_applies_the_worker_rules_to_ids() {
        check(
            &["send", "--user", "", "--gpus", "1", "--hours", "1"],
            invalid(
                "--user",
                "",
                "a value the worker accepts (field \"user_id\" must not be empty or only whitespace)",
            ),
        );
        let long = "x".repeat(257);
        let result =
            parse(["send", "--user", &long, "--gpus", "1", "--hours", "1"].map(String::from));
        assert!(
            matches!(&result, Err(CliError::InvalidValue { flag: "--user", .. })),
            "{result:?}"
        );
        check(
            &[
                "send",
                "--user",
                "a",
                "--gpus",
                "1",
                "--hours",
                "1",
                "--request-id",
                " ",
            ],
            invalid(
                "--request-id",
                " ",
                "a value the worker accepts (field \"request_id\" must not be empty or only whitespace)",
            ),
        );
        let result = parse(
            [
                "send",
                "--user",
                "a",
                "--gpus",
                "1",
                "--hours",
                "1",
                "--request-id",
                "a\nb",
            ]
            .map(String::from),
        );
        assert!(
            matches!(
                &result,
                Err(CliError::InvalidValue {
                    flag: "--request-id",
                    ..
                })
            ),
            "{result:?}"
        );
        // Anything else goes in a user id, as in a message.
        check(
            &["send", "--user", "a: b\n#c", "--gpus", "1", "--hours", "1"],
            send("a: b\n#c", 1, 1, None),
        );
    }

    #[test]
    fn status() {
        check(
            &["status", "abc"],
            Ok(Command::Status {
                request_id: "abc".into(),
                kubeconfig: false,
            }),
        );
        check(
            &["status", "--kubeconfig", "abc"],
            Ok(Command::Status {
                request_id: "abc".into(),
                kubeconfig: true,
            }),
        );
        check(
            &["status", "abc", "--kubeconfig"],
            Ok(Command::Status {
                request_id: "abc".into(),
                kubeconfig: true,
            }),
        );
        check(
            &["status"],
            Err(CliError::MissingArgument {
                command: "status",
                what: "a request id",
            }),
        );
        check(
            &["status", "--kubeconfig"],
            Err(CliError::MissingArgument {
                command: "status",
                what: "a request id",
            }),
        );
        check(
            &["status", "a", "b"],
            Err(CliError::UnexpectedArgument {
                command: "status",
                argument: "b".into(),
            }),
        );
        check(
            &["status", "a", "--kubeconfig=yes"],
            Err(CliError::UnexpectedValue {
                flag: "--kubeconfig",
            }),
        );
        check(
            &["status", "a", "--kubeconfig", "--kubeconfig"],
            Err(CliError::RepeatedFlag {
                flag: "--kubeconfig",
            }),
        );
        check(
            &["status", "a", "--json"],
            Err(CliError::UnknownFlag {
                command: "status",
                flag: "--json".into(),
            }),
        );
    }

    #[test]
    fn check_command() {
        check(&["check"], Ok(Command::Check));
        check(
            &["check", "now"],
            Err(CliError::UnexpectedArgument {
                command: "check",
                argument: "now".into(),
            }),
        );
    }

    #[test]
    fn offsets() {
        check(&["offsets"], Ok(Command::Offsets { reset: None }));
        for (value, reset) in [
            ("earliest", ResetTo::Earliest),
            ("LATEST", ResetTo::Latest),
            ("0", ResetTo::Offset(0)),
            ("42", ResetTo::Offset(42)),
            ("9223372036854775807", ResetTo::Offset(i64::MAX)),
        ] {
            check(
                &["offsets", "--reset", value],
                Ok(Command::Offsets { reset: Some(reset) }),
            );
            let inline = format!("--reset={value}");
            check(
                &["offsets", &inline],
                Ok(Command::Offsets { reset: Some(reset) }),
            );
        }
        let expected = "earliest, latest or an offset from 0 up";
        for bad in ["-1", "first", "1.5", "9223372036854775808"] {
            check(
                &["offsets", "--reset", bad],
                invalid("--reset", bad, expected),
            );
        }
        check(
            &["offsets", "--reset"],
            Err(CliError::MissingValue { flag: "--reset" }),
        );
        check(
            &["offsets", "--reset", "earliest", "--reset", "latest"],
            Err(CliError::RepeatedFlag { flag: "--reset" }),
        );
        check(
            &["offsets", "earliest"],
            Err(CliError::UnexpectedArgument {
                command: "offsets",
                argument: "earliest".into(),
            }),
        );
        check(
            &["offsets", "--rest", "0"],
            Err(CliError::UnknownFlag {
                command: "offsets",
                flag: "--rest".into(),
            }),
        );
    }

    #[test]
    fn unknown_commands_and_flags() {
        check(
            &["start"],
            Err(CliError::UnknownCommand {
                command: "start".into(),
            }),
        );
        check(
            &["--verbose"],
            Err(CliError::UnknownFlag {
                command: "provision-worker",
                flag: "--verbose".into(),
            }),
        );
        check(
            &["-v"],
            Err(CliError::UnknownFlag {
                command: "provision-worker",
                flag: "-v".into(),
            }),
        );
    }

    #[test]
    fn every_error_points_at_help() {
        let errors = [
            CliError::UnknownCommand {
                command: "start".into(),
            },
            CliError::UnknownFlag {
                command: "send",
                flag: "--x".into(),
            },
            CliError::MissingValue { flag: "--gpus" },
            CliError::UnexpectedValue {
                flag: "--kubeconfig",
            },
            CliError::MissingFlag {
                command: "send",
                flag: "--user",
            },
            CliError::RepeatedFlag { flag: "--user" },
            CliError::MissingArgument {
                command: "status",
                what: "a request id",
            },
            CliError::UnexpectedArgument {
                command: "run",
                argument: "x".into(),
            },
            CliError::InvalidValue {
                flag: "--gpus",
                value: "0".into(),
                expected: "a whole number from 1 to 1024".into(),
            },
        ];
        for err in errors {
            let message = err.to_string();
            assert!(
                message.ends_with("; see provision-worker --help"),
                "{message}"
            );
            assert!(
                message.starts_with(|c: char| !c.is_uppercase()),
                "{message}"
            );
        }
        assert_eq!(
            CliError::UnknownCommand {
                command: "start".into()
            }
            .to_string(),
            "unknown command \"start\"; see provision-worker --help"
        );
    }

    #[test]
    fn help_lists_commands_variables_and_exit_codes() {
        let help = help_text();
        for command in ["run", "send", "status", "check", "offsets", "--version"] {
            assert!(help.contains(command), "{command}");
        }
        for (name, default, description) in VARIABLES {
            let line = help
                .lines()
                .position(|line| line.trim_start().starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{name} missing"));
            let row = help.lines().nth(line).unwrap();
            let default = if default.is_empty() {
                "(empty)"
            } else {
                default
            };
            assert!(row.ends_with(&format!("default: {default}")), "{row}");
            assert_eq!(help.lines().nth(line + 1).unwrap().trim(), *description);
        }
        for code in ["0 ", "1 ", "2 ", "130 "] {
            assert!(
                help.lines().any(|line| line.trim_start().starts_with(code)),
                "exit code {code}"
            );
        }
        assert!(help.contains(env!("CARGO_PKG_VERSION")));
    }
}
