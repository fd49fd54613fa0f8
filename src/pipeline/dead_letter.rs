//! What a dead letter is: the record produced to the dead-letter topic for an invalid
//! message, or for a valid one the database refused for good (see [`Cause`]), in its full
//! form (cut to `KAFKA_DLQ_MAX_BYTES`) and its cut-down form (for a broker that refused the
//! full one for good). Pure: the poller does the sending.
//!
//! A dead letter of an invalid message carries the original key and value; one of a refused
//! request carries the request as the worker read it, re-encoded as JSON (replayable as it
//! is), and no key. Both have these headers:
//! `x-dlq-reason`, `x-original-topic`, `x-original-partition`, `x-original-offset`; and when
//! the value (or, rarely, anything else) had to be cut: `x-dlq-truncated: true` and
//! `x-original-size: N`, the value's length in the log.
//!
//! The size limit is applied to the uncompressed record batch, as a broker measures a batch
//! against `max.message.bytes` (the producer compresses only when that makes the batch
//! smaller, so what is sent is never larger). Limiting the uncompressed size, not only the
//! compressed one, also keeps a dead letter from being a decompression bomb for whoever
//! reads the dead-letter topic.
use bytes::Bytes;

use blocking_kafka::{Offset, OutRecord, Partition, uncompressed_batch_len};

/// A message waiting to be dead-lettered; its offset is unfinished until then.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub cause: Cause,
    pub partition: Partition,
    pub offset: Offset,
    /// The assignment epoch it was fetched in; dropped if its partition was revoked since.
    pub epoch: u64,
    pub reason: String,
    pub key: Option<Bytes>,
    /// The value as fetched: the whole value, or only its first bytes for a record too
    /// large to hold.
    pub value: Bytes,
    /// The value's length in the log.
    pub original_len: usize,
    /// Set once Kafka refused the full form for good: the cut-down form goes next.
    pub cut_down: bool,
}

/// Why a message is dead-lettered. The record is the same either way (the reason header
/// says the rest); the log says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// Not a valid request.
    Invalid,
    /// A valid request the database refused for good, or whose row is in a status the
    /// worker does not own: replayable once the backend allows it.
    Refused,
}

/// The value of a cut-down dead letter is at most this long: enough to recognise the
/// message (its first fields, its request id), small enough for any broker's limits.
pub const CUT_DOWN_VALUE_BYTES: usize = 4096;

/// The reason header is at most this long. Reasons quote parts of the message (a field
/// name, an unexpected string), so a hostile message could make one as large as itself.
const MAX_REASON_BYTES: usize = 512;

/// How many bytes of the value a "giving up" log line shows.
const LOGGED_BYTES: usize = 64;

impl Cause {
    /// What the log calls such a message: "invalid message", "refused request".
    pub fn describe(self) -> &'static str {
        match self {
            Cause::Invalid => "invalid message",
            Cause::Refused => "refused request",
        }
    }

    /// The same, as a sentence for a log line: "the message was invalid".
    pub fn what_it_was(self) -> &'static str {
        match self {
            Cause::Invalid => "the message was invalid",
            Cause::Refused => "the database refused the request",
        }
    }
}

impl DeadLetter {
    /// The record to produce: the full form, or the cut-down form once `cut_down` is set.
    /// Its uncompressed batch is at most `max_bytes` (at least 1024, as configuration
    /// enforces).
    pub fn record(&self, source_topic: &str, max_bytes: usize) -> OutRecord {
        let value_cap = if self.cut_down {
            CUT_DOWN_VALUE_BYTES
        } else {
            usize::MAX
        };
        self.fit(source_topic, max_bytes, value_cap)
    }

    /// The value's first bytes, escaped so that no byte of it can break or forge a log
    /// line (everything but printable ASCII shows as `\xNN`, quotes and backslashes are
    /// escaped), with the total length when there is more.
    pub fn first_bytes(&self) -> String {
        let shown = &self.value[..self.value.len().min(LOGGED_BYTES)];
        let escaped = shown.escape_ascii().to_string();
        if self.original_len > shown.len() {
            format!("\"{escaped}\"... ({} bytes)", self.original_len)
        } else {
            format!("\"{escaped}\"")
        }
    }

    fn fit(&self, source_topic: &str, max_bytes: usize, value_cap: usize) -> OutRecord {
        let reason = cut_str(&self.reason, MAX_REASON_BYTES);
        let mut record = OutRecord {
            key: self.key.clone(),
            value: Some(self.value.clone()),
            headers: vec![
                (
                    "x-dlq-reason".to_owned(),
                    Some(Bytes::from(reason.to_owned())),
                ),
                (
                    "x-original-topic".to_owned(),
                    Some(Bytes::from(source_topic.to_owned())),
                ),
                (
                    "x-original-partition".to_owned(),
                    Some(Bytes::from(self.partition.to_string())),
                ),
                (
                    "x-original-offset".to_owned(),
                    Some(Bytes::from(self.offset.to_string())),
                ),
            ],
        };
        let whole = self.value.len() >= self.original_len
            && self.value.len() <= value_cap
            && reason.len() == self.reason.len();
        if whole && uncompressed_batch_len(std::slice::from_ref(&record)) <= max_bytes {
            return record;
        }
        record.headers.push((
            "x-dlq-truncated".to_owned(),
            Some(Bytes::from_static(b"true")),
        ));
        record.headers.push((
            "x-original-size".to_owned(),
            Some(Bytes::from(
                self.original_len.max(self.value.len()).to_string(),
            )),
        ));
        let value = self.value.slice(..self.value.len().min(value_cap));
        record.value = Some(value);
        // Cut the value first; the key and the reason only if the value alone cannot make
        // room (a huge key, a limit near its minimum). Removing n bytes of a field shortens
        // the batch by at least n (length prefixes never grow), so one cut each fits.
        let excess = |r: &OutRecord| {
            uncompressed_batch_len(std::slice::from_ref(r)).saturating_sub(max_bytes)
        };
        let over = excess(&record);
        if over > 0 {
            record.value = record.value.map(|v| shorten(&v, over));
        }
        let over = excess(&record);
        if over > 0 {
            record.key = record.key.map(|k| shorten(&k, over));
        }
        let over = excess(&record);
        if over > 0 {
            let shorter = cut_str(reason, reason.len().saturating_sub(over));
            record.headers[0].1 = Some(Bytes::from(shorter.to_owned()));
        }
        record
    }
}

/// `data` without its last `by` bytes (empty when shorter).
fn shorten(data: &Bytes, by: usize) -> Bytes {
    data.slice(..data.len().saturating_sub(by))
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_letter(value: &[u8], original_len: usize) -> DeadLetter {
        DeadLetter {
            cause: Cause::Invalid,
            partition: Partition(2),
            offset: Offset(41),
            epoch: 1,
            reason: "missing field \"gpu_count\"".to_owned(),
            key: Some(Bytes::from_static(b"request-7")),
            value: Bytes::copy_from_slice(value),
            original_len,
            cut_down: false,
        }
    }

    fn header<'a>(r: &'a OutRecord, name: &str) -> Option<&'a [u8]> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.as_deref())
    }

    fn len(r: &OutRecord) -> usize {
        uncompressed_batch_len(std::slice::from_ref(r))
    }

    #[test]
    fn a_small_dead_letter_is_the_original_with_its_four_headers() {
        let dl = dead_letter(b"{\"request_id\":\"r\"}", 18);
        let r = dl.record("provision-requests", 1_000_000);
        assert_eq!(r.key.as_deref(), Some(&b"request-7"[..]));
        assert_eq!(r.value.as_deref(), Some(&b"{\"request_id\":\"r\"}"[..]));
        let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-dlq-reason",
                "x-original-topic",
                "x-original-partition",
                "x-original-offset"
            ]
        );
        assert_eq!(
            header(&r, "x-dlq-reason"),
            Some(&b"missing field \"gpu_count\""[..])
        );
        assert_eq!(
            header(&r, "x-original-topic"),
            Some(&b"provision-requests"[..])
        );
        assert_eq!(header(&r, "x-original-partition"), Some(&b"2"[..]));
        assert_eq!(header(&r, "x-original-offset"), Some(&b"41"[..]));
    }

    #[test]
    fn a_large_value_is_cut_to_the_limit_and_says_so() {
        let value = vec![b'a'; 3_000_000];
        let dl = dead_letter(&value, value.len());
        for max in [1024, 1025, 4096, 65_536, 1_000_000, 2_999_999] {
            let r = dl.record("t", max);
            assert!(len(&r) <= max, "{} > {max}", len(&r));
            assert!(
                len(&r) + 4 >= max,
                "cut far below the limit: {} < {max}",
                len(&r)
            );
            assert_eq!(header(&r, "x-dlq-truncated"), Some(&b"true"[..]));
            assert_eq!(header(&r, "x-original-size"), Some(&b"3000000"[..]));
            assert!(value.starts_with(r.value.as_deref().unwrap()));
            assert_eq!(r.key.as_deref(), Some(&b"request-7"[..]), "the key is kept");
        }
    }

    #[test]
    fn a_value_held_only_in_part_is_marked_truncated_even_when_it_fits() {
        let dl = dead_letter(b"{\"request_id\":", 300_000_000);
        let r = dl.record("t", 1_000_000);
        assert_eq!(r.value.as_deref(), Some(&b"{\"request_id\":"[..]));
        assert_eq!(header(&r, "x-dlq-truncated"), Some(&b"true"[..]));
        assert_eq!(header(&r, "x-original-size"), Some(&b"300000000"[..]));
    }

    #[test]
    fn the_cut_down_form_keeps_a_few_kib_and_every_header() {
        let value = vec![b'z'; 50_000];
        let mut dl = dead_letter(&value, value.len());
        let full = dl.record("t", 1_000_000);
        assert_eq!(full.value.as_ref().map(Bytes::len), Some(50_000));
        assert_eq!(header(&full, "x-dlq-truncated"), None);
        dl.cut_down = true;
        let small = dl.record("t", 1_000_000);
        assert_eq!(
            small.value.as_ref().map(Bytes::len),
            Some(CUT_DOWN_VALUE_BYTES)
        );
        assert_eq!(header(&small, "x-dlq-truncated"), Some(&b"true"[..]));
        assert_eq!(header(&small, "x-original-size"), Some(&b"50000"[..]));
        assert_eq!(header(&small, "x-original-offset"), Some(&b"41"[..]));
        // Under a limit smaller than the cut-down size, the limit still holds.
        assert!(len(&dl.record("t", 1024)) <= 1024);
    }

    #[test]
    fn a_huge_key_or_reason_is_cut_too_when_the_value_cannot_make_room() {
        let mut dl = dead_letter(b"v", 1);
        dl.key = Some(Bytes::from(vec![b'k'; 10_000]));
        dl.reason = "é".repeat(5_000);
        let r = dl.record("t", 1024);
        assert!(len(&r) <= 1024, "{}", len(&r));
        assert_eq!(header(&r, "x-dlq-truncated"), Some(&b"true"[..]));
        let reason = header(&r, "x-dlq-reason").unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES);
        assert!(
            std::str::from_utf8(reason).is_ok(),
            "cut on a character boundary"
        );
    }

    #[test]
    fn logged_first_bytes_cannot_break_a_log_line() {
        let dl = dead_letter(b"a\nFAKE - ERROR - \x1b[31m\"\\\xff", 1 << 20);
        let shown = dl.first_bytes();
        assert!(!shown.contains('\n') && !shown.contains('\x1b'), "{shown}");
        assert_eq!(
            shown,
            "\"a\\nFAKE - ERROR - \\x1b[31m\\\"\\\\\\xff\"... (1048576 bytes)"
        );
        assert_eq!(dead_letter(b"ok", 2).first_bytes(), "\"ok\"");
    }
}
