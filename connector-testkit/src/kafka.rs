//! Helpers to write and read test records on a real broker.

use std::time::{Duration, Instant};

use connector_core::kafka::{FetchResult, Isolation, KafkaClient, OffsetSpec, ProducerRecord};
use connector_core::{RecordMetadata, SinkRecord};

use crate::error::{Result, TestkitError};

/// Writes `records` and waits for Kafka's acknowledgement of all of them.
///
/// # Errors
/// The first delivery error.
pub async fn produce(
    client: &KafkaClient,
    records: Vec<ProducerRecord>,
) -> Result<Vec<RecordMetadata>> {
    Ok(client.produce(records).await?)
}

/// Runs `op` again (up to 20 times, 250 ms apart) while it fails with a retriable error, as a
/// broker restart or a cut connection causes.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = connector_core::Result<T>>,
{
    let mut attempts = 0;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_retriable() && attempts < 20 => {
                attempts += 1;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Every record currently in `topic` (all partitions, earliest to the high watermark), ordered by
/// partition then offset. A missing topic has no records. Retriable failures are retried.
///
/// # Errors
/// When the broker does not answer.
pub async fn consume_all(client: &KafkaClient, topic: &str) -> Result<Vec<SinkRecord>> {
    retrying(|| consume_all_once(client, topic, Isolation::ReadUncommitted)).await
}

/// Every committed record of `topic` as a `read_committed` consumer sees it (all partitions,
/// earliest to the last stable offset; records of aborted transactions and transaction markers
/// left out), ordered by partition then offset.
///
/// # Errors
/// When the broker does not answer.
pub async fn consume_all_committed(client: &KafkaClient, topic: &str) -> Result<Vec<SinkRecord>> {
    retrying(|| consume_all_once(client, topic, Isolation::ReadCommitted)).await
}

async fn consume_all_once(
    client: &KafkaClient,
    topic: &str,
    isolation: Isolation,
) -> connector_core::Result<Vec<SinkRecord>> {
    let Some(meta) = client.refresh_topic(topic).await? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for partition in 0..meta.partition_count() {
        let end = client.end_offset_isolated(topic, partition, isolation).await?;
        let mut offset = client.list_offset(topic, partition, OffsetSpec::Earliest).await?;
        while offset < end {
            let wait = Duration::from_millis(100);
            match client.fetch_isolated(topic, partition, offset, wait, isolation).await? {
                FetchResult::Records(f) => {
                    out.extend(f.records.into_iter().filter(|r| r.offset < end));
                    if f.next_offset <= offset {
                        break;
                    }
                    offset = f.next_offset;
                }
                FetchResult::OffsetOutOfRange => break,
            }
        }
    }
    Ok(out)
}

/// Waits until `topic` holds at least `count` records, then returns them all.
///
/// # Errors
/// [`TestkitError::Timeout`] (saying how many arrived) when `timeout` passes first.
pub async fn consume_at_least(
    client: &KafkaClient,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Result<Vec<SinkRecord>> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = consume_all(client, topic).await?;
        if records.len() >= count {
            return Ok(records);
        }
        if Instant::now() >= deadline {
            return Err(TestkitError::Timeout(format!(
                "{topic} holds {} records, expected at least {count} within {timeout:?}",
                records.len()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Number of records in `topic` (sum over partitions of high watermark minus earliest offset).
/// Retriable failures are retried.
///
/// # Errors
/// When the broker does not answer.
pub async fn count(client: &KafkaClient, topic: &str) -> Result<u64> {
    retrying(|| count_once(client, topic)).await
}

async fn count_once(client: &KafkaClient, topic: &str) -> connector_core::Result<u64> {
    let Some(meta) = client.refresh_topic(topic).await? else {
        return Ok(0);
    };
    let mut n = 0u64;
    for p in 0..meta.partition_count() {
        let end = client.end_offset(topic, p).await?;
        let start = client.list_offset(topic, p, OffsetSpec::Earliest).await?;
        n += u64::try_from(end - start).unwrap_or(0);
    }
    Ok(n)
}
