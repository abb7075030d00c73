//! Kafka's standard consumer protocol (protocol type `consumer`), version 0 of its Subscription
//! (member metadata) and Assignment (what the leader hands each member), so that
//! `kafka-consumer-groups.sh`, librdkafka and other Kafka tooling can read what our sink tasks
//! put in their group.
//!
//! Layout (`ConsumerProtocolSubscription.json` / `ConsumerProtocolAssignment.json`):
//! ```text
//! subscription: version int16 (0), [topic string], user_data nullable bytes
//! assignment:   version int16 (0), [topic string, [partition int32]], user_data nullable bytes
//! ```
//! Later versions only append fields, so decoding reads the version-0 fields of any version and
//! ignores what follows.
//!
//! ```
//! use connector_core::kafka::group::consumer_protocol;
//! use connector_core::TopicPartition;
//!
//! let b = consumer_protocol::encode_assignment(&[TopicPartition::new("t", 0), TopicPartition::new("t", 2)]);
//! let back = consumer_protocol::decode_assignment(&b).unwrap();
//! assert_eq!(back, vec![TopicPartition::new("t", 0), TopicPartition::new("t", 2)]);
//! assert_eq!(consumer_protocol::decode_subscription(&consumer_protocol::encode_subscription(&["t".into()])).unwrap(), vec!["t"]);
//! ```

use bytes::{BufMut, Bytes, BytesMut};

use super::codec::MAX_ARRAY;
use super::GroupError;
use crate::TopicPartition;

/// The protocol type of Kafka's consumer groups.
pub const PROTOCOL_TYPE: &str = "consumer";

fn put_string(b: &mut BytesMut, s: &str) {
    // Topic names are at most 249 bytes; longer strings are cut at the i16 limit rather than
    // written with a wrong length.
    let n = s.len().min(i16::MAX as usize);
    b.put_i16(n as i16);
    b.put_slice(&s.as_bytes()[..n]);
}

/// A Subscription v0 of `topics`, without user data.
pub fn encode_subscription(topics: &[String]) -> Bytes {
    encode_subscription_with_user_data(topics, None)
}

/// A Subscription v0 of `topics` carrying `user_data` (`None`: null), the bytes a group's leader
/// reads besides the topics; standard tools still read the topics.
///
/// ```
/// use connector_core::kafka::group::consumer_protocol as cp;
///
/// let b = cp::encode_subscription_with_user_data(&["t".into()], Some(b"hi"));
/// assert_eq!(cp::decode_subscription(&b).unwrap(), vec!["t"]);
/// assert_eq!(cp::subscription_user_data(&b).unwrap().as_deref(), Some(&b"hi"[..]));
/// ```
pub fn encode_subscription_with_user_data(topics: &[String], user_data: Option<&[u8]>) -> Bytes {
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(i32::try_from(topics.len()).unwrap_or(i32::MAX));
    for t in topics {
        put_string(&mut b, t);
    }
    put_bytes(&mut b, user_data);
    b.freeze()
}

fn put_bytes(b: &mut BytesMut, data: Option<&[u8]>) {
    match data {
        Some(d) => {
            b.put_i32(i32::try_from(d.len()).unwrap_or(i32::MAX));
            b.put_slice(d);
        }
        None => b.put_i32(-1),
    }
}

/// An Assignment v0 of `partitions` (grouped by topic in order of first appearance), without
/// user data.
pub fn encode_assignment(partitions: &[TopicPartition]) -> Bytes {
    encode_assignment_with_user_data(partitions, None)
}

/// An Assignment v0 of `partitions` carrying `user_data` (`None`: null); standard tools still
/// read the partitions.
///
/// ```
/// use connector_core::kafka::group::consumer_protocol as cp;
/// use connector_core::TopicPartition;
///
/// let b = cp::encode_assignment_with_user_data(&[TopicPartition::new("t", 1)], Some(b"x"));
/// assert_eq!(cp::decode_assignment(&b).unwrap(), vec![TopicPartition::new("t", 1)]);
/// assert_eq!(cp::assignment_user_data(&b).unwrap().as_deref(), Some(&b"x"[..]));
/// ```
pub fn encode_assignment_with_user_data(
    partitions: &[TopicPartition],
    user_data: Option<&[u8]>,
) -> Bytes {
    let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
    for tp in partitions {
        match topics.iter_mut().find(|(t, _)| *t == &*tp.topic) {
            Some((_, ps)) => ps.push(tp.partition),
            None => topics.push((&tp.topic, vec![tp.partition])),
        }
    }
    let mut b = BytesMut::new();
    b.put_i16(0);
    b.put_i32(i32::try_from(topics.len()).unwrap_or(i32::MAX));
    for (t, ps) in topics {
        put_string(&mut b, t);
        b.put_i32(i32::try_from(ps.len()).unwrap_or(i32::MAX));
        for p in ps {
            b.put_i32(p);
        }
    }
    put_bytes(&mut b, user_data);
    b.freeze()
}

/// The topics of a Subscription (any version).
///
/// # Errors
/// [`GroupError::Malformed`] when the bytes are not a Subscription.
pub fn decode_subscription(b: &[u8]) -> Result<Vec<String>, GroupError> {
    let mut r = Reader { b, what: "consumer protocol subscription" };
    r.version()?;
    let n = r.len()?;
    let mut topics = Vec::with_capacity(n);
    for _ in 0..n {
        topics.push(r.string()?);
    }
    Ok(topics)
}

/// The partitions of an Assignment (any version). An empty blob (what a leader that assigned
/// nothing to a member sends) is an empty assignment.
///
/// # Errors
/// [`GroupError::Malformed`] when the bytes are not an Assignment.
pub fn decode_assignment(b: &[u8]) -> Result<Vec<TopicPartition>, GroupError> {
    if b.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Reader { b, what: "consumer protocol assignment" };
    r.version()?;
    let n = r.len()?;
    let mut out = Vec::new();
    for _ in 0..n {
        let topic: std::sync::Arc<str> = r.string()?.into();
        let m = r.len()?;
        for _ in 0..m {
            out.push(TopicPartition { topic: topic.clone(), partition: r.i32()? });
        }
    }
    Ok(out)
}

/// The user data of a Subscription (any version; `None` when null).
///
/// # Errors
/// [`GroupError::Malformed`] when the bytes are not a Subscription.
pub fn subscription_user_data(b: &[u8]) -> Result<Option<Vec<u8>>, GroupError> {
    let mut r = Reader { b, what: "consumer protocol subscription" };
    r.version()?;
    let n = r.len()?;
    for _ in 0..n {
        r.string()?;
    }
    r.bytes()
}

/// The user data of an Assignment (any version; `None` when null or the blob is empty).
///
/// # Errors
/// [`GroupError::Malformed`] when the bytes are not an Assignment.
pub fn assignment_user_data(b: &[u8]) -> Result<Option<Vec<u8>>, GroupError> {
    if b.is_empty() {
        return Ok(None);
    }
    let mut r = Reader { b, what: "consumer protocol assignment" };
    r.version()?;
    let n = r.len()?;
    for _ in 0..n {
        r.string()?;
        let m = r.len()?;
        for _ in 0..m {
            r.i32()?;
        }
    }
    r.bytes()
}

struct Reader<'a> {
    b: &'a [u8],
    what: &'static str,
}

impl Reader<'_> {
    fn malformed(&self, detail: impl Into<String>) -> GroupError {
        GroupError::Malformed { what: self.what, detail: detail.into() }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], GroupError> {
        if self.b.len() < n {
            return Err(
                self.malformed(format!("ends after {} more bytes, needed {n}", self.b.len()))
            );
        }
        let (head, tail) = self.b.split_at(n);
        self.b = tail;
        Ok(head)
    }

    fn i16(&mut self) -> Result<i16, GroupError> {
        let s = self.take(2)?;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }

    fn i32(&mut self) -> Result<i32, GroupError> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }

    fn version(&mut self) -> Result<i16, GroupError> {
        let v = self.i16()?;
        if v < 0 {
            return Err(self.malformed(format!("version {v}")));
        }
        Ok(v)
    }

    fn len(&mut self) -> Result<usize, GroupError> {
        let n = self.i32()?;
        if n == -1 {
            return Ok(0);
        }
        match usize::try_from(n) {
            Ok(n) if n <= MAX_ARRAY => Ok(n),
            _ => Err(self.malformed(format!("array of {n} elements"))),
        }
    }

    /// Nullable bytes (absent at the end of the blob: null).
    fn bytes(&mut self) -> Result<Option<Vec<u8>>, GroupError> {
        if self.b.is_empty() {
            return Ok(None);
        }
        let n = self.i32()?;
        if n == -1 {
            return Ok(None);
        }
        let n = usize::try_from(n).map_err(|_| self.malformed(format!("bytes of length {n}")))?;
        Ok(Some(self.take(n)?.to_vec()))
    }

    fn string(&mut self) -> Result<String, GroupError> {
        let n = self.i16()?;
        let n = usize::try_from(n).map_err(|_| self.malformed(format!("string of length {n}")))?;
        let s = self.take(n)?.to_vec();
        String::from_utf8(s).map_err(|_| self.malformed("a string that is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_and_assignment_v0_are_laid_out_as_kafka_does() {
        let s = encode_subscription(&["ab".into()]);
        assert_eq!(&s[..], &[0, 0, 0, 0, 0, 1, 0, 2, b'a', b'b', 255, 255, 255, 255]);
        let a = encode_assignment(&[
            TopicPartition::new("t", 1),
            TopicPartition::new("u", 0),
            TopicPartition::new("t", 3),
        ]);
        let want: Vec<u8> = [
            &[0u8, 0, 0, 0, 0, 2][..],
            &[0, 1, b't', 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 3],
            &[0, 1, b'u', 0, 0, 0, 1, 0, 0, 0, 0],
            &[255, 255, 255, 255],
        ]
        .concat();
        assert_eq!(&a[..], &want[..]);
        assert_eq!(
            decode_assignment(&a).unwrap(),
            vec![
                TopicPartition::new("t", 1),
                TopicPartition::new("t", 3),
                TopicPartition::new("u", 0)
            ]
        );
    }

    #[test]
    fn later_versions_decode_and_garbage_is_an_error() {
        // v1 subscription: owned_partitions appended after user_data.
        let mut s = encode_subscription(&["t".into()]).to_vec();
        s[1] = 1;
        s.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(decode_subscription(&s).unwrap(), vec!["t"]);
        assert!(decode_assignment(&[]).unwrap().is_empty());
        assert!(decode_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]).is_err());
        assert!(decode_subscription(&[0, 0, 0, 0, 0, 1, 0, 9, b'x']).is_err());
    }
}
