//! Reading one partition: the fetch loop (long-poll when caught up, reset on an offset out of
//! range, retry on retriable errors) feeding the sink runtime's bounded channel, and where a
//! partition without a committed offset starts.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::backoff::Backoff;
use crate::kafka::{FetchResult, Isolation, KafkaClient, OffsetSpec};
use crate::record::{SinkRecord, TopicPartition};
use crate::runtime::stats::PartitionLag;
use crate::sink::StartFrom;
use crate::{Error, Result};

pub(super) enum FetchMsg {
    Records(TopicPartition, Vec<SinkRecord>),
    Failed(Error),
}

/// How a sink reads: [`Isolation::ReadCommitted`] for a connector that asks for it.
pub(super) fn isolation(read_committed: bool) -> Isolation {
    if read_committed {
        Isolation::ReadCommitted
    } else {
        Isolation::ReadUncommitted
    }
}

/// Where to start a partition without a committed offset (`latest` at `read_committed`: the
/// last stable offset, so a transaction still open is read once committed).
pub(super) async fn initial_offset(
    client: &KafkaClient,
    tp: &TopicPartition,
    start: StartFrom,
    isolation: Isolation,
) -> Result<i64> {
    let mut backoff = Backoff::new(client.config().retry_backoff);
    loop {
        let result = match start {
            StartFrom::Earliest => {
                client.list_offset(&tp.topic, tp.partition, OffsetSpec::Earliest).await
            }
            StartFrom::Latest => {
                client.end_offset_isolated(&tp.topic, tp.partition, isolation).await
            }
        };
        match result {
            Ok(o) => return Ok(o),
            Err(e) if e.is_retriable() && backoff.attempts() < 10 => {
                debug!(%tp, error = %e.report(), "start offset not available yet");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Broker wait of a fetch while the partition has records past the fetch position.
pub(super) const CATCH_UP_FETCH_WAIT: Duration = Duration::from_millis(1);

#[allow(clippy::too_many_arguments)]
pub(super) async fn fetch_loop(
    client: KafkaClient,
    tp: TopicPartition,
    mut offset: i64,
    (start, isolation): (StartFrom, Isolation),
    tx: mpsc::Sender<FetchMsg>,
    stop: CancellationToken,
    lag: Option<Arc<PartitionLag>>,
) {
    let long_poll = Duration::from_millis(client.config().fetch_max_wait_ms);
    let mut backoff = Backoff::new(client.config().retry_backoff);
    // Long-poll only when caught up. While behind the high watermark, records are waiting: ask the
    // broker not to wait. Kafka answers at once either way, but some brokers (Tansu 0.6) hold
    // every fetch for part of its max wait even with data ready, which would cap a catching-up
    // partition at one fetch per half max wait.
    let mut behind = true;
    while !stop.is_cancelled() {
        let max_wait = if behind { CATCH_UP_FETCH_WAIT } else { long_poll };
        let result = tokio::select! {
            () = stop.cancelled() => return,
            r = client.fetch_isolated(&tp.topic, tp.partition, offset, max_wait, isolation) => r,
        };
        match result {
            Ok(FetchResult::Records(fetched)) => {
                backoff.reset();
                offset = fetched.next_offset.max(offset);
                behind = fetched.high_watermark > offset;
                if let Some(lag) = &lag {
                    lag.set_high_watermark(fetched.high_watermark);
                }
                if fetched.records.is_empty() {
                    continue;
                }
                if tx.send(FetchMsg::Records(tp.clone(), fetched.records)).await.is_err() {
                    return;
                }
            }
            Ok(FetchResult::OffsetOutOfRange) => {
                let reset = match initial_offset(&client, &tp, start, isolation).await {
                    Ok(o) => o,
                    Err(e) => {
                        let _ = tx.send(FetchMsg::Failed(e)).await;
                        return;
                    }
                };
                warn!(%tp, from = offset, to = reset, ?start, "offset out of range; resetting");
                offset = reset;
                behind = true;
            }
            Err(e) if e.is_retriable() => {
                let delay = backoff.next_delay();
                warn!(%tp, offset, error = %e.report(), retry_in_ms = delay.as_millis() as u64, "fetch failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                let _ = tx
                    .send(FetchMsg::Failed(e.with_topic(&*tp.topic).with_partition(tp.partition)))
                    .await;
                return;
            }
        }
    }
}
