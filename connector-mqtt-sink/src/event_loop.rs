//! The MQTT event loop of a sink task, in its own task: it polls rumqttc, feeds sends and
//! acknowledgements into the [`Tracker`], and reconnects with backoff. Publishing happens from the
//! sink task through a cloned client, never from here.

use std::sync::Arc;

use connector_core::backoff::{Backoff, BackoffConfig};
use connector_core::ErrorKind;
use connector_mqtt_common::{classify, connection_error, MqttUrl, Status};
use parking_lot::Mutex;
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet};
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::tracker::Tracker;

/// State shared by the sink task and its event loop.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) tracker: Mutex<Tracker>,
    pub(crate) client: AsyncClient,
    /// Woken when publishes complete or the connection changes.
    pub(crate) changed: Notify,
}

pub(crate) struct LoopSettings {
    pub(crate) url: MqttUrl,
    pub(crate) client_id: String,
    pub(crate) backoff: BackoffConfig,
}

pub(crate) async fn run(
    mut eventloop: EventLoop,
    shared: Arc<Shared>,
    status: watch::Sender<Status>,
    settings: LoopSettings,
) {
    let mut backoff = Backoff::new(settings.backoff);
    loop {
        match eventloop.poll().await {
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                shared.tracker.lock().sent(pkid);
                if pkid == 0 {
                    shared.changed.notify_waiters();
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                shared.tracker.lock().acknowledged(ack.pkid);
                shared.changed.notify_waiters();
            }
            Ok(Event::Incoming(Packet::PubComp(comp))) => {
                shared.tracker.lock().acknowledged(comp.pkid);
                shared.changed.notify_waiters();
            }
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                backoff.reset();
                let republished = {
                    let mut t = shared.tracker.lock();
                    let before = t.republished;
                    if let Err(e) = t.connected(&shared.client, ack.session_present) {
                        t.failed = Some(e);
                    }
                    t.republished - before
                };
                info!(
                    client_id = %settings.client_id,
                    url = %settings.url,
                    session_present = ack.session_present,
                    republished,
                    "connected to MQTT broker"
                );
                status.send_replace(Status { connected: true, last_error: None, fatal: None });
                shared.changed.notify_waiters();
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                let error = connection_error(&e, &settings.url);
                if classify(&e) == ErrorKind::Fatal {
                    status.send_replace(Status {
                        connected: false,
                        last_error: None,
                        fatal: Some(error.to_string()),
                    });
                    shared.tracker.lock().failed = Some(error);
                    shared.changed.notify_waiters();
                    return;
                }
                {
                    // Publishes queued from now on wait in the backlog; rumqttc keeps (or, without a
                    // session, drops) what was queued before, which the tracker accounts for.
                    let mut t = shared.tracker.lock();
                    t.disconnected();
                    eventloop.clean();
                }
                status.send_replace(Status {
                    connected: false,
                    last_error: Some(error.to_string()),
                    fatal: None,
                });
                shared.changed.notify_waiters();
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
