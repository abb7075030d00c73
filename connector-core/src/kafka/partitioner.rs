//! Partition choice for records without an explicit partition.
//!
//! Keyed records go to `toPositive(murmur2(key)) % partitions`, exactly as Kafka's Java
//! `BuiltInPartitioner` and librdkafka's `murmur2_random` do, so a key lands on the same partition
//! whichever client wrote it. Unkeyed records stick to one partition until its batch is sent
//! (Kafka's sticky partitioner), which keeps batches large.

/// Kafka's 32-bit murmur2 hash (`org.apache.kafka.common.utils.Utils.murmur2`).
///
/// ```
/// use connector_core::kafka::murmur2;
/// // From Kafka's UtilsTest.
/// assert_eq!(murmur2(b"21"), -973932308);
/// assert_eq!(murmur2(b"foobar"), -790332482);
/// ```
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java computes this on ints; wrapping u32 arithmetic gives the same bits. The length is
    // truncated to 32 bits exactly as Java's int length would be.
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
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

/// The partition Kafka's Java client picks for `key` in a topic with `partitions` partitions.
///
/// ```
/// use connector_core::kafka::partition_for_key;
/// assert_eq!(partition_for_key(b"car-7", 12), partition_for_key(b"car-7", 12));
/// assert!(partition_for_key(b"car-7", 12) < 12);
/// ```
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafka_utils_test() {
        // org.apache.kafka.common.utils.UtilsTest#testMurmur2
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input), expected, "murmur2({:?})", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn keyed_partition_is_positive_modulo_of_the_hash() {
        // -790332482 & 0x7fffffff = 1357151166; % 10 = 6
        assert_eq!(partition_for_key(b"foobar", 10), 6);
        for n in 1..50 {
            let p = partition_for_key(b"a-little-bit-longer-string", n);
            assert!((0..n).contains(&p));
        }
        assert_eq!(partition_for_key(b"x", 0), 0);
    }
}
