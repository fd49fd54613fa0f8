//! Log lines in the Python worker's format, through simplelog:
//! `2026-02-12 12:00:00 - provision_worker::provision - INFO - Processing ...`
//!
//! simplelog always writes the level as `[INFO]` before the target, so it is told to write
//! only the time; this wrapper puts ` - <module> - <LEVEL> - ` in front of each message.
use log::{LevelFilter, Log, Metadata, Record};
use simplelog::{ConfigBuilder, WriteLogger, format_description};

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// The worker logs to stdout, as the Python worker did.
    Stdout,
    /// The operator commands print their results on stdout (`id=$(provision-worker send ...)`),
    /// so their log lines, warnings included, go to stderr.
    Stderr,
}

pub fn init(level: LevelFilter, destination: Destination) {
    let mut builder = ConfigBuilder::new();
    builder
        .set_time_format_custom(format_description!(
            "[year]-[month]-[day] [hour]:[minute]:[second] -"
        ))
        .set_level_padding(simplelog::LevelPadding::Off)
        .set_thread_level(LevelFilter::Off)
        .set_target_level(LevelFilter::Off)
        .set_location_level(LevelFilter::Off)
        .set_max_level(LevelFilter::Off);
    // The Python worker logged local time. This must happen before any thread starts: the
    // time crate refuses to read the local offset once a process has several threads.
    let _ = builder.set_time_offset_to_local();
    let config = builder.build();
    let inner: Box<dyn Log> = match destination {
        Destination::Stdout => WriteLogger::new(level, config, std::io::stdout()),
        Destination::Stderr => WriteLogger::new(level, config, std::io::stderr()),
    };
    let logger = SeedFormat { inner };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

struct SeedFormat {
    inner: Box<dyn Log>,
}

impl Log for SeedFormat {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        let level = record.level();
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        self.inner.log(
            &Record::builder()
                .args(format_args!(
                    "{} - {} - {}",
                    record.target(),
                    level_name(record.level()),
                    record.args()
                ))
                .level(level)
                .target(record.target())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Python's names for the levels.
fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "ERROR",
        log::Level::Warn => "WARNING",
        log::Level::Info => "INFO",
        log::Level::Debug => "DEBUG",
        log::Level::Trace => "TRACE",
    }
}
