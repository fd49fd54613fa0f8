//! The brokers a client knows, shared by its threads: the bootstrap servers, every broker
//! the last metadata named, and how each has been doing lately. Any thread that needs "a
//! broker" (metadata, FindCoordinator, a producer id) asks here for the candidates, best
//! first: not the bootstrap list only, so a cluster whose bootstrap broker is away is still
//! reached through the others; and not a broker that just failed or answers slowly, while
//! another would do.
//!
//! Only addresses and notes live here: no socket. Each thread opens its own connections.
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// An answer slower than this (beyond what the broker may hold it) marks its broker slow.
pub const SLOW_ANSWER: Duration = Duration::from_secs(2);
/// How long a slow answer keeps its broker at the back of the list.
const SLOW_FOR: Duration = Duration::from_secs(30);

/// Known brokers and their health; shared (`Arc`) by one client's threads.
#[derive(Debug)]
pub struct BrokerBook {
    inner: Mutex<Book>,
}

#[derive(Debug, Default)]
struct Book {
    bootstrap: Vec<String>,
    /// Broker id to "host:port", from the last metadata answer (and coordinator answers).
    brokers: BTreeMap<i32, String>,
    health: HashMap<String, Health>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Health {
    /// Failures since the last answer.
    failures: u32,
    /// When the last failure was.
    failed_at: Option<Instant>,
    /// Answered slowly lately: tried after the others until then.
    slow_until: Option<Instant>,
}

impl BrokerBook {
    /// A book that knows only the bootstrap servers.
    pub fn new(bootstrap: Vec<String>) -> BrokerBook {
        BrokerBook {
            inner: Mutex::new(Book {
                bootstrap,
                ..Book::default()
            }),
        }
    }

    /// The bootstrap servers, comma-separated (for messages).
    pub fn servers(&self) -> String {
        self.lock().bootstrap.join(",")
    }

    /// The brokers of a metadata answer, replacing those of the last one.
    pub fn learn(&self, brokers: BTreeMap<i32, String>) {
        self.lock().brokers = brokers;
    }

    /// One broker, from a coordinator answer.
    pub fn remember(&self, id: i32, addr: String) {
        self.lock().brokers.insert(id, addr);
    }

    /// "host:port" of a broker by id.
    pub fn addr(&self, id: i32) -> Option<String> {
        self.lock().brokers.get(&id).cloned()
    }

    /// A connection to `addr` failed, or a request on it did.
    pub fn failed(&self, addr: &str) {
        let mut book = self.lock();
        let h = book.health.entry(addr.to_owned()).or_default();
        h.failures = h.failures.saturating_add(1);
        h.failed_at = Some(Instant::now());
    }

    /// `addr` answered, after `took` (beyond any time the broker was allowed to hold it).
    pub fn answered(&self, addr: &str, took: Duration) {
        let mut book = self.lock();
        let h = book.health.entry(addr.to_owned()).or_default();
        h.failures = 0;
        h.failed_at = None;
        if took >= SLOW_ANSWER {
            h.slow_until = Some(Instant::now() + SLOW_FOR);
        }
    }

    /// Whether `addr` failed since it last answered.
    pub fn is_failing(&self, addr: &str) -> bool {
        self.lock().health.get(addr).is_some_and(|h| h.failures > 0)
    }

    /// Every address worth trying, best first: brokers and bootstrap servers that are doing
    /// well (in random order, to spread the load), then slow ones, then those that failed
    /// (the longest ago first).
    pub fn candidates(&self) -> Vec<String> {
        let book = self.lock();
        let now = Instant::now();
        let mut all: Vec<String> = book.brokers.values().cloned().collect();
        for b in &book.bootstrap {
            if !all.contains(b) {
                all.push(b.clone());
            }
        }
        let mut ranked: Vec<(u8, Option<Instant>, u64, String)> = all
            .into_iter()
            .map(|addr| {
                let h = book.health.get(&addr).copied().unwrap_or_default();
                let class = if h.failures > 0 {
                    2
                } else if h.slow_until.is_some_and(|t| t > now) {
                    1
                } else {
                    0
                };
                (class, h.failed_at, rand::random::<u64>(), addr)
            })
            .collect();
        ranked.sort();
        ranked.into_iter().map(|(_, _, _, addr)| addr).collect()
    }

    fn lock(&self) -> MutexGuard<'_, Book> {
        // Only plain data behind it: a thread that panicked holding it left it consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn candidates_are_every_known_broker_and_the_bootstrap_failing_ones_last() {
        let book = BrokerBook::new(strings(&["boot:1"]));
        assert_eq!(book.candidates(), strings(&["boot:1"]));
        book.learn(BTreeMap::from([
            (1, "boot:1".into()),
            (2, "b2:1".into()),
            (3, "b3:1".into()),
        ]));
        let mut all = book.candidates();
        all.sort();
        assert_eq!(
            all,
            strings(&["b2:1", "b3:1", "boot:1"]),
            "no address twice"
        );

        book.failed("boot:1");
        book.failed("b2:1");
        book.failed("b2:1");
        let c = book.candidates();
        assert_eq!(c[0], "b3:1", "the healthy one first: {c:?}");
        assert_eq!(
            c[1..],
            strings(&["boot:1", "b2:1"]),
            "then the longest failed: {c:?}"
        );
        assert!(book.is_failing("b2:1"));

        book.answered("b2:1", Duration::ZERO);
        assert!(!book.is_failing("b2:1"));
        assert_eq!(book.candidates()[2], "boot:1");
    }

    #[test]
    fn a_slow_broker_comes_after_the_healthy_and_before_the_failing() {
        let book = BrokerBook::new(strings(&["a:1", "b:1", "c:1"]));
        book.answered("a:1", SLOW_ANSWER);
        book.failed("b:1");
        assert_eq!(book.candidates(), strings(&["c:1", "a:1", "b:1"]));
    }
}
