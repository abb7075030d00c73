//! The MQTT event loop, in its own task: it polls rumqttc, hands received messages to the source
//! task through a bounded channel, subscribes when the broker did not keep the session, and
//! reconnects with backoff. Nothing else ever runs on it (publishing or acknowledging from the task
//! that polls rumqttc's event loop can deadlock), so acknowledgements go through a cloned client.

use std::sync::Arc;

use connector_core::backoff::{Backoff, BackoffConfig};
use connector_core::{Error, ErrorKind, Timestamp};
use connector_mqtt_common::{classify, connection_error, MqttUrl, Status};
use parking_lot::Mutex;
use rumqttc::{
    AsyncClient, Event, EventLoop, Outgoing, Packet, Publish, QoS, SubscribeFilter,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// A message as received, tagged with the connection it arrived on.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) publish: Publish,
    pub(crate) generation: u64,
    pub(crate) received: Timestamp,
}

/// What the event loop hands to the source task.
#[derive(Debug)]
pub(crate) enum Incoming {
    Message(Received),
    /// The connection cannot be used any more (refused login, refused subscription).
    Failed(Error),
}

/// State shared by the event loop and the source task.
///
/// The generation counts lost connections. Packet ids belong to a connection's session: after a
/// reconnect the broker resends unacknowledged messages, and may give a freed id to a new message.
/// Acknowledging a message from an earlier connection could therefore acknowledge a different,
/// newer message that is not in Kafka yet. So a message is acknowledged only on the connection it
/// arrived on. The lock is held while checking the generation and queueing the ack, and while
/// the event loop bumps the generation and drops queued acks, so no ack slips in between.
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub(crate) generation: Mutex<u64>,
}

pub(crate) struct LoopSettings {
    pub(crate) url: MqttUrl,
    pub(crate) client_id: String,
    pub(crate) filters: Vec<(String, QoS)>,
    pub(crate) backoff: BackoffConfig,
}

/// Runs until the connection is refused for good, the source task goes away, or a DISCONNECT
/// was sent.
pub(crate) async fn run(
    mut eventloop: EventLoop,
    client: AsyncClient,
    tx: mpsc::Sender<Incoming>,
    session: Arc<Session>,
    status: watch::Sender<Status>,
    settings: LoopSettings,
) {
    let mut backoff = Backoff::new(settings.backoff);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let generation = *session.generation.lock();
                let msg = Received { publish, generation, received: Timestamp::now() };
                if tx.send(Incoming::Message(msg)).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                info!(client_id = %settings.client_id, url = %settings.url, session_present = ack.session_present, "connected to MQTT broker");
                if !ack.session_present {
                    // A new session has no subscriptions: (re)subscribe. The request channel is
                    // far larger than anything queued, so this does not wait.
                    let filters =
                        settings.filters.iter().map(|(f, q)| SubscribeFilter::new(f.clone(), *q));
                    if let Err(e) = client.try_subscribe_many(filters) {
                        let e = Error::fatal("cannot queue the MQTT subscription").with_source(e);
                        fail(&tx, &status, e).await;
                        return;
                    }
                }
                status.send_replace(Status { connected: true, last_error: None, fatal: None });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let refused: Vec<&str> = ack
                    .return_codes
                    .iter()
                    .zip(&settings.filters)
                    .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                    .map(|(_, (f, _))| f.as_str())
                    .collect();
                if !refused.is_empty() {
                    let e = Error::fatal(format!(
                        "MQTT broker {} refused the subscription to {}",
                        settings.url,
                        refused.join(", ")
                    ));
                    fail(&tx, &status, e).await;
                    return;
                }
                debug!(filters = ?settings.filters, "subscribed");
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                debug!(client_id = %settings.client_id, "DISCONNECT sent");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                let error = connection_error(&e, &settings.url);
                if classify(&e) == ErrorKind::Fatal {
                    fail(&tx, &status, error).await;
                    return;
                }
                status.send_replace(Status {
                    connected: false,
                    last_error: Some(error.to_string()),
                    fatal: None,
                });
                {
                    // Messages received so far belong to the lost connection: their acks must not
                    // reach the next one (see `Session`). rumqttc already dropped the acks queued
                    // before it noticed; drop any queued since, under the lock.
                    let mut generation = session.generation.lock();
                    *generation += 1;
                    eventloop.clean();
                }
                let delay = backoff.next_delay();
                warn!(
                    client_id = %settings.client_id,
                    error = %error,
                    retry_in_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    "MQTT connection lost; reconnecting"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reports a failure the connection cannot recover from, to `start` and to `poll`.
async fn fail(tx: &mpsc::Sender<Incoming>, status: &watch::Sender<Status>, error: Error) {
    status.send_replace(Status {
        connected: false,
        last_error: None,
        fatal: Some(error.to_string()),
    });
    let _ = tx.send(Incoming::Failed(error)).await;
}
