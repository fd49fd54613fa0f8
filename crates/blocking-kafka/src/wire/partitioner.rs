//! Which partition a keyed record goes to: the Java client's default partitioner, so that a
//! key lands where a Java producer (or librdkafka with `partitioner=murmur2_random`) would
//! put it, and records of one key stay in order behind each other whoever produced them.
//!
//! `partition = (murmur2(key) & 0x7fffffff) % partition_count`, with Kafka's murmur2
//! (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils.murmur2` computes it.
use crate::types::Partition;

/// The partition of a keyed record in a topic of `count` partitions (`count` > 0).
pub fn partition_for_key(key: &[u8], count: usize) -> Partition {
    let positive = (murmur2(key) & 0x7fff_ffff) as u32;
    let count = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    // Invariant: the remainder is below `count`, which came from a partition count (i32).
    Partition(i32::try_from(positive % count).unwrap_or(0))
}

/// Kafka's murmur2: 32-bit MurmurHash2 with seed 0x9747b28c, little-endian 4-byte blocks.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apache Kafka's own vectors (clients `UtilsTest.testMurmur2`), and librdkafka's
    /// (`rdmurmur2.c` unit test) for "kafka".
    #[test]
    fn murmur2_matches_the_java_client() {
        for (key, want) in [
            (&b"21"[..], -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
            (b"kafka", 0xd067_cf64_u32 as i32),
        ] {
            assert_eq!(murmur2(key), want, "{}", String::from_utf8_lossy(key));
        }
    }

    #[test]
    fn partitions_are_the_positive_hash_modulo_the_count() {
        // murmur2("foobar") = -790332482; & 0x7fffffff = 1357151166.
        assert_eq!(
            partition_for_key(b"foobar", 3),
            Partition(1_357_151_166 % 3)
        );
        assert_eq!(partition_for_key(b"foobar", 1), Partition(0));
        for count in 1..20 {
            assert!(partition_for_key(b"21", count).0 < count as i32);
        }
        // An empty key is a key (hashed), not a null key.
        assert_eq!(
            partition_for_key(b"", 7),
            Partition((murmur2(b"") & 0x7fff_ffff) % 7)
        );
    }
}
