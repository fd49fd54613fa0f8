//! Waiting between attempts the way the Java client does: exponential from an initial
//! delay to a maximum, each delay jittered by ±20 % so that many clients (or many
//! connections of one) that failed together do not retry together (`retry.backoff.ms` →
//! `retry.backoff.max.ms`, KIP-580; `reconnect.backoff.ms` → `reconnect.backoff.max.ms`).
//! Pure: the caller decides how to wait. Beside `error` and `types` at the bottom.
use std::time::Duration;

/// The initial and the largest delay of a backoff: `initial`, doubling up to `max`, each
/// delay ±20 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffSettings {
    /// The first delay after a failure.
    pub initial: Duration,
    /// The delay never grows past this (before jitter).
    pub max: Duration,
}

/// Successive delays after failures: `initial`, doubling up to `max`, each ±20 %.
#[derive(Debug, Clone)]
pub struct Backoff {
    settings: BackoffSettings,
    /// Failures since the last success.
    failures: u32,
}

impl BackoffSettings {
    /// The Java client's `retry.backoff.ms` (100) and `retry.backoff.max.ms` (1000).
    pub const RETRY: BackoffSettings = BackoffSettings {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(1),
    };
    /// The Java client's `reconnect.backoff.ms` (50) and `reconnect.backoff.max.ms` (1000).
    pub const RECONNECT: BackoffSettings = BackoffSettings {
        initial: Duration::from_millis(50),
        max: Duration::from_secs(1),
    };
}

impl Backoff {
    /// A backoff that has seen no failure yet.
    pub fn new(settings: BackoffSettings) -> Backoff {
        Backoff {
            settings,
            failures: 0,
        }
    }

    /// The delay before the next attempt, after one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let exponent = self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let base = self
            .settings
            .initial
            .saturating_mul(1 << exponent)
            .min(self.settings.max)
            .max(self.settings.initial.min(self.settings.max));
        jitter(base, rand::random::<f64>())
    }

    /// An attempt succeeded: the next failure waits the initial delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `base` scaled by a factor between 0.8 and 1.2 (`random` in 0..1).
fn jitter(base: Duration, random: f64) -> Duration {
    base.mul_f64(0.8 + 0.4 * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_initial_to_the_maximum_within_the_jitter() {
        let mut b = Backoff::new(BackoffSettings {
            initial: Duration::from_millis(100),
            max: Duration::from_millis(1000),
        });
        for want in [100, 200, 400, 800, 1000, 1000, 1000] {
            let got = b.next_delay();
            let want = Duration::from_millis(want);
            assert!(
                got >= want.mul_f64(0.8) && got <= want.mul_f64(1.2),
                "{got:?} is not {want:?} ± 20 %"
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(120));
    }

    #[test]
    fn jitter_spans_twenty_percent_either_way() {
        let base = Duration::from_secs(1);
        assert_eq!(jitter(base, 0.0), Duration::from_millis(800));
        assert_eq!(jitter(base, 0.5), Duration::from_millis(1000));
        assert_eq!(jitter(base, 1.0), Duration::from_millis(1200));
    }

    #[test]
    fn a_maximum_below_the_initial_delay_wins() {
        let mut b = Backoff::new(BackoffSettings {
            initial: Duration::from_secs(2),
            max: Duration::from_secs(1),
        });
        assert!(b.next_delay() <= Duration::from_millis(1200));
    }
}
