//! SIGTERM, SIGINT and SIGHUP: the first asks for a graceful shutdown, a later one made on
//! purpose asks to exit at once.
//!
//! Signals that arrive together are one request. `timeout(1)` sends SIGTERM to the child and
//! then to its whole process group, and supervisors such as some init systems and container
//! runtimes do the same, so a worker sees two SIGTERMs a few milliseconds apart for a single
//! "please stop". Treating the second as "exit now" would abandon every request in flight.
//! Only a signal more than [`REPEAT_WINDOW`] after the first means a person (or a supervisor's
//! second stage) insists.
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

/// Signals within this time of the first are the same shutdown request.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(1);

/// The exit code after a second, deliberate signal: 128 + SIGINT, as shells report Ctrl-C.
pub const EXIT_AT_ONCE: u8 = 130;

/// What one more signal means, given when the first arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meaning {
    /// The first signal: shut down gracefully.
    Shutdown,
    /// Arrived with the first (within the window): the same request, nothing more to do.
    Echo,
    /// A second request, made on purpose: exit at once.
    ExitNow,
}

/// Decides what each signal means; pure, so the rule is unit-tested without signals.
#[derive(Debug, Default)]
pub struct Signals {
    first: Option<Instant>,
}

impl Signals {
    pub fn on_signal(&mut self, now: Instant) -> Meaning {
        match self.first {
            None => {
                self.first = Some(now);
                Meaning::Shutdown
            }
            Some(first) if now.saturating_duration_since(first) <= REPEAT_WINDOW => Meaning::Echo,
            Some(_) => Meaning::ExitNow,
        }
    }
}

/// Installs the handler for SIGTERM, SIGINT and SIGHUP: the first sends on `shutdown`, an
/// echo is logged at DEBUG, and a deliberate second signal exits the process with
/// [`EXIT_AT_ONCE`].
pub fn install(shutdown: Sender<()>) -> Result<(), ctrlc::Error> {
    let signals = Mutex::new(Signals::default());
    ctrlc::set_handler(move || {
        // ctrlc runs this on its own thread, not in signal context, so a lock is fine.
        let meaning = signals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .on_signal(Instant::now());
        match meaning {
            Meaning::Shutdown => {
                log::info!(
                    "Shutdown signal received; finishing in-flight requests (send it again after a second to exit at once)"
                );
                let _ = shutdown.try_send(());
            }
            Meaning::Echo => {
                log::debug!("Signal repeated within a second; it is the same shutdown request")
            }
            Meaning::ExitNow => {
                log::warn!("Second signal received; exiting at once");
                std::process::exit(i32::from(EXIT_AT_ONCE));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(offsets_ms: &[u64], expected: &[Meaning]) {
        let start = Instant::now();
        let mut signals = Signals::default();
        let actual: Vec<Meaning> = offsets_ms
            .iter()
            .map(|ms| signals.on_signal(start + Duration::from_millis(*ms)))
            .collect();
        assert_eq!(actual, expected, "signals at {offsets_ms:?} ms");
    }

    #[test]
    fn signals_arriving_together_are_one_shutdown_request() {
        use Meaning::*;
        check(&[0], &[Shutdown]);
        // timeout(1): one to the child, one to its process group, milliseconds apart.
        check(&[0, 3], &[Shutdown, Echo]);
        check(&[0, 3, 1000], &[Shutdown, Echo, Echo]);
    }

    #[test]
    fn a_signal_more_than_a_second_later_exits_at_once() {
        use Meaning::*;
        check(&[0, 1001], &[Shutdown, ExitNow]);
        check(&[0, 5, 2500], &[Shutdown, Echo, ExitNow]);
    }
}
