//! How much decoding may hold and do: per record ([`RecordLimits`]), per fetch ([`Budget`]),
//! and in work ([`MAX_EXPANSION`]). What each bound means for the records that pass it is
//! told in `decoder`.

/// How far decoding one batch (or one fetch) may expand data. Far above a real batch
/// (brokers cap one at about 1 MiB compressed by default), above the 300 MiB records of
/// the memory tests, which are streamed past and dead-lettered by size. Its cost in time
/// (measured on a busy 2-core machine): a bomb of a few KB reaches it in 0.2 s (zstd) to
/// 0.5 s (gzip); text-like data at ordinary ratios in 3 to 5 s, but needs 90 to 120 MiB of
/// compressed batch for that, which only a first batch far above the fetch size carries.
/// Either stays within the default 10 s session, so the group keeps the member.
pub const MAX_EXPANSION: u64 = 512 * 1024 * 1024;
/// What a message costs beyond the bytes it holds (the struct, its job, its bookkeeping).
pub(super) const MESSAGE_COST: usize = 128;
/// What a header costs beyond its bytes (the tuple, the name's allocation).
pub(super) const HEADER_COST: usize = 64;

/// How much of one record is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordLimits {
    /// Keys and values up to this many bytes are held whole: the largest the caller uses.
    pub whole: usize,
    /// Of a key or value longer than both limits, only the first this-many bytes are held.
    pub prefix: usize,
}

impl Default for RecordLimits {
    /// Kafka's default `max.message.bytes` (1 MiB) for both.
    fn default() -> RecordLimits {
        RecordLimits {
            whole: 1024 * 1024,
            prefix: 1024 * 1024,
        }
    }
}

impl RecordLimits {
    /// Fields up to this long are held whole.
    pub(super) fn hold(&self) -> usize {
        self.whole.max(self.prefix)
    }

    /// How much of a field of `len` bytes is held.
    pub(super) fn kept(&self, len: usize) -> usize {
        if len <= self.hold() { len } else { self.prefix }
    }
}

/// What one fetch may still decode, shared by all of its partitions.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    /// Bytes the handed-over messages may still hold.
    left: usize,
    /// Bytes decompressed or streamed past in this fetch.
    pub(super) expanded: u64,
    /// Whether a message was handed over yet (the first one always is).
    pub(super) handed: bool,
    /// Set when decoding stopped for this fetch: the rest waits for the next one.
    pub(super) exhausted: bool,
    /// [`MAX_EXPANSION`], smaller in tests.
    pub(super) max_expansion: u64,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> Budget {
        Budget::with_expansion(bytes, MAX_EXPANSION)
    }

    pub(super) fn with_expansion(bytes: usize, max_expansion: u64) -> Budget {
        Budget {
            left: bytes,
            expanded: 0,
            handed: false,
            exhausted: false,
            max_expansion,
        }
    }

    pub(crate) fn exhausted(&self) -> bool {
        self.exhausted
    }

    /// Whether anything was handed over in this fetch.
    pub(crate) fn handed(&self) -> bool {
        self.handed
    }

    /// Takes `cost` if it fits (or if nothing was handed over yet); else stops the fetch.
    pub(super) fn admit(&mut self, cost: usize) -> bool {
        if self.handed && cost > self.left {
            self.exhausted = true;
            return false;
        }
        self.left = self.left.saturating_sub(cost);
        self.handed = true;
        true
    }
}
