//! Requests and connections: which broker connection (*lane*) a request travels on, establishing
//! and reusing connections, the request timeout, and dropping a connection that failed.

use std::io::Cursor;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::kafka::wire::messages::{
    ReadVersionedType, RequestBody, WriteVersionedError, WriteVersionedType,
};
use crate::kafka::wire::messenger::RequestError;
use tracing::debug;

use super::{KafkaClient, State};
use crate::kafka::connection::{connect, connect_as, Connection};
use crate::kafka::errors::request_error;
use crate::{Error, Result};

/// Which connection to a broker a request travels on.
///
/// A broker answers the requests of one connection in order, so a fetch that waits up to
/// `fetch_max_wait_ms` for data would hold up every produce request queued behind it on the same
/// connection. Produce requests, control requests (metadata, offsets, topic creation), the
/// fetches of each partition and the JoinGroup/SyncGroup requests of each group member (which
/// the coordinator may hold for up to the rebalance timeout) therefore use separate connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Lane {
    /// Metadata, list offsets, create topics.
    Control,
    /// Produce requests.
    Produce,
    /// Fetches of one partition (keyed by a hash of topic and partition).
    Fetch(u64),
    /// JoinGroup, SyncGroup, Heartbeat and LeaveGroup of one group member (keyed by a number
    /// unique to the member); closed with [`KafkaClient::close_lane`] when the member goes.
    Group(u64),
}

/// Where a request goes: a known broker id on a lane, or whatever connection metadata uses.
#[derive(Debug, Clone, Copy)]
pub(super) enum Target {
    Node(i32, Lane),
    Any,
}

impl KafkaClient {
    /// Sends `request` to broker `node` on `lane`, under the request timeout.
    pub(crate) async fn request_node<R>(
        &self,
        node: i32,
        lane: Lane,
        request: R,
    ) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        self.request(Target::Node(node, lane), request).await
    }

    /// Sends `request` to broker `node` on `lane`, waiting up to `timeout` for the answer instead
    /// of the request timeout (for requests the broker may hold, such as JoinGroup).
    pub(crate) async fn request_node_within<R>(
        &self,
        node: i32,
        lane: Lane,
        request: R,
        timeout: std::time::Duration,
    ) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        self.request_within(Target::Node(node, lane), request, timeout).await
    }

    /// Sends `request` to whatever connection metadata uses (any broker can answer it).
    pub(crate) async fn request_any<R>(&self, request: R) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        self.request(Target::Any, request).await
    }

    /// A new [`Lane::Group`] whose connections carry `client_id` in their request headers (the
    /// coordinator shows it in DescribeGroups). Close it with [`close_lane`](Self::close_lane).
    pub(crate) fn open_group_lane(&self, client_id: &str) -> Lane {
        let n = self.inner.next_group_lane.fetch_add(1, Ordering::Relaxed);
        self.inner.group_lanes.lock().insert(n, Arc::from(client_id));
        Lane::Group(n)
    }

    /// Closes the connections of `lane` to every broker (a group member that went away).
    pub(crate) fn close_lane(&self, lane: Lane) {
        self.inner.state.lock().conns.retain(|(_, l), _| *l != lane);
        self.inner.connect_locks.lock().retain(|(_, l), _| *l != lane);
        if let Lane::Group(n) = lane {
            self.inner.group_lanes.lock().remove(&n);
        }
    }

    pub(super) async fn request<R>(&self, target: Target, request: R) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        let timeout = self.inner.config.request_timeout();
        self.request_within(target, request, timeout).await
    }

    async fn request_within<R>(
        &self,
        target: Target,
        request: R,
        timeout: std::time::Duration,
    ) -> Result<R::ResponseBody>
    where
        R: RequestBody + Send + WriteVersionedType<Vec<u8>>,
        R::ResponseBody: ReadVersionedType<Cursor<Vec<u8>>>,
    {
        let (key, addr, conn) = match target {
            Target::Node(node, lane) => {
                let (addr, conn) = self.node_connection(node, lane).await?;
                (Some((node, lane)), addr, conn)
            }
            Target::Any => self.any_connection().await?,
        };
        let outcome = tokio::time::timeout(timeout, conn.request(request)).await;
        let err = match outcome {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(RequestError::WriteError(WriteVersionedError::FieldNotAvailable {
                field,
                version,
            }))) => {
                // Nothing was sent; the connection is fine.
                return Err(Error::fatal(format!(
                    "request field {field} not available in version {version:?} on broker {addr}"
                )));
            }
            Ok(Err(e)) => request_error(e, &addr),
            Err(_) => Error::retriable(format!(
                "Kafka broker {addr} did not answer within {timeout:?}; reconnecting"
            )),
        };
        if err.is_retriable() {
            self.drop_connection(key, &conn);
        }
        Err(err)
    }

    /// The connection to broker `node` on `lane`, established if needed.
    async fn node_connection(&self, node: i32, lane: Lane) -> Result<(String, Arc<Connection>)> {
        let lookup = |state: &State| -> Option<(String, Option<Arc<Connection>>)> {
            let addr = state.brokers.get(&node)?.clone();
            Some((addr, state.conns.get(&(node, lane)).cloned()))
        };
        let known = lookup(&self.inner.state.lock());
        let addr = match known {
            Some((addr, Some(conn))) => return Ok((addr, conn)),
            Some((addr, None)) => addr,
            None => {
                // The id came from stale metadata; refresh so the caller's retry finds it.
                Box::pin(self.fetch_metadata(Some(&[]))).await?;
                return Err(Error::retriable(format!("unknown Kafka broker id {node}")));
            }
        };
        let lock = Arc::clone(self.inner.connect_locks.lock().entry((node, lane)).or_default());
        let _guard = lock.lock().await;
        if let Some((addr, Some(conn))) = lookup(&self.inner.state.lock()) {
            return Ok((addr, conn));
        }
        debug!(node, addr, ?lane, "connecting to Kafka broker");
        let client_id = match lane {
            Lane::Group(n) => self.inner.group_lanes.lock().get(&n).cloned(),
            _ => None,
        };
        let conn = match client_id {
            Some(id) => connect_as(&addr, &self.inner.config, &self.inner.security, &id).await?,
            None => connect(&addr, &self.inner.config, &self.inner.security).await?,
        };
        self.inner.state.lock().conns.insert((node, lane), Arc::clone(&conn));
        Ok((addr, conn))
    }

    /// Some live connection, for metadata and requests any broker can answer: an open broker
    /// connection, else a known broker, else the bootstrap servers in order.
    async fn any_connection(&self) -> Result<(Option<(i32, Lane)>, String, Arc<Connection>)> {
        let (open, mut known, bootstrap) = {
            let state = self.inner.state.lock();
            let open = state.conns.iter().find(|((_, lane), _)| *lane == Lane::Control).and_then(
                |((id, lane), c)| {
                    state.brokers.get(id).map(|a| (Some((*id, *lane)), a.clone(), Arc::clone(c)))
                },
            );
            let known: Vec<i32> = state.brokers.keys().copied().collect();
            let bootstrap = state.bootstrap.as_ref().map(|(a, c)| (None, a.clone(), Arc::clone(c)));
            (open, known, bootstrap)
        };
        if let Some(found) = open.or(bootstrap) {
            return Ok(found);
        }
        fastrand::shuffle(&mut known);
        let mut last_error = None;
        for node in known {
            match self.node_connection(node, Lane::Control).await {
                Ok((addr, conn)) => return Ok((Some((node, Lane::Control)), addr, conn)),
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => last_error = Some(e),
            }
        }
        for addr in &self.inner.config.bootstrap_servers {
            match connect(addr, &self.inner.config, &self.inner.security).await {
                Ok(conn) => {
                    self.inner.state.lock().bootstrap = Some((addr.clone(), Arc::clone(&conn)));
                    return Ok((None, addr.clone(), conn));
                }
                Err(e) if !e.is_retriable() => return Err(e),
                Err(e) => {
                    debug!(addr, error = %e.report(), "bootstrap server not reachable");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::fatal("no Kafka bootstrap servers configured")))
    }

    fn drop_connection(&self, key: Option<(i32, Lane)>, conn: &Arc<Connection>) {
        let mut state = self.inner.state.lock();
        match key {
            Some(key) => {
                if state.conns.get(&key).is_some_and(|c| Arc::ptr_eq(c, conn)) {
                    state.conns.remove(&key);
                }
            }
            None => {
                if state.bootstrap.as_ref().is_some_and(|(_, c)| Arc::ptr_eq(c, conn)) {
                    state.bootstrap = None;
                }
            }
        }
        // A broker that stopped answering may have lost leadership too.
        for c in state.topics.values_mut() {
            c.stale = true;
        }
    }
}
