//! Small helpers: errors, clocks, statistics, request generation.
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Every failure is a sentence for the person running the bench.
pub type Res<T> = Result<T, String>;

/// Wall-clock seconds since the epoch: the clock SQLite's `unixepoch('subsec')` reads in the
/// worker's triggers, so produce times and transition times compare directly.
pub fn wall_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// UTC `YYYY-MM-DD HH:MM:SS.ffffff`, the text the backend (SQLAlchemy) and the worker write.
pub fn utc_text(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO);
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, dd) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{dd:02} {:02}:{:02}:{:02}.{:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_micros()
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Sleeps until `deadline` (no-op if it has passed).
pub fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// Nearest-rank percentile of an ascending slice; `q` in 0..=1.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// (median, min, max) of the values; the median of an even count is the mean of the middle two.
pub fn median_min_max(values: &[f64]) -> (f64, f64, f64) {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// A request as the backend makes it: a pending row and the same fields as a Kafka message.
#[derive(Clone, Debug)]
pub struct Req {
    pub id: String,
    pub user: String,
    pub gpus: u32,
    pub hours: u32,
}

impl Req {
    pub fn json(&self) -> String {
        serde_json::json!({
            "request_id": self.id,
            "user_id": self.user,
            "gpu_count": self.gpus,
            "duration_hours": self.hours,
        })
        .to_string()
    }
}

/// xorshift64*: deterministic per seed, good enough for ids and field values.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// `n` requests with uuid4-shaped ids (as the backend's `uuid.uuid4()` gives).
pub fn make_requests(n: usize, seed: u64) -> Vec<Req> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let (a, b) = (rng.next(), rng.next());
            Req {
                id: format!(
                    "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                    a >> 32,
                    (a >> 16) & 0xffff,
                    a & 0xfff,
                    0x8000 | (b >> 48) & 0x3fff,
                    b & 0xffff_ffff_ffff
                ),
                user: format!("bench-user-{}", i % 97),
                gpus: 1 + (rng.next() % 8) as u32,
                hours: 1 + (rng.next() % 24) as u32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_text_matches_known_dates() {
        let t = UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(utc_text(t), "2023-11-14 22:13:20.123456");
        assert_eq!(utc_text(UNIX_EPOCH), "1970-01-01 00:00:00.000000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(&utc_text(leap)[..10], "2000-02-29");
    }

    #[test]
    fn percentiles_and_medians() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(median_min_max(&[3.0, 1.0, 2.0]), (2.0, 1.0, 3.0));
        assert_eq!(median_min_max(&[4.0, 1.0, 2.0, 3.0]), (2.5, 1.0, 4.0));
    }

    #[test]
    fn ids_are_unique_and_uuid_shaped() {
        let reqs = make_requests(10_000, 7);
        let ids: std::collections::HashSet<_> = reqs.iter().map(|r| r.id.clone()).collect();
        assert_eq!(ids.len(), reqs.len());
        assert!(reqs.iter().all(|r| r.id.len() == 36));
    }
}
