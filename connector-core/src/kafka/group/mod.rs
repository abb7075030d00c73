//! Kafka's group membership protocol (the "classic" protocol: FindCoordinator, JoinGroup,
//! SyncGroup, Heartbeat, LeaveGroup) and group offsets (OffsetCommit, OffsetFetch), plus
//! DescribeGroups: what distributed workers and sink tasks use to share work through a broker.
//!
//! A [`GroupMember`] joins a group (the leader's callback assigns), heartbeats and leaves; a
//! [`GroupCommitter`] commits offsets for its generation from another task;
//! [`committed_offsets`] and [`describe_group`] read a group from outside; [`GroupOffsetStore`]
//! is an [`OffsetStore`](crate::OffsetStore) over a consumer group; [`consumer_protocol`] is
//! Kafka's standard consumer Subscription/Assignment format. The codecs are in `codec.rs`.
//!
//! JoinGroup and SyncGroup may be held by the coordinator for up to the rebalance timeout, so each
//! member sends them (and its heartbeats and LeaveGroup) on a connection of its own with a timeout
//! of rebalance + 5 s; offsets and descriptions go on the control connection.
//!
//! ```no_run
//! use bytes::Bytes;
//! use connector_core::kafka::group::{GroupMember, GroupTimeouts, HeartbeatOutcome};
//! use connector_core::kafka::{KafkaClient, KafkaConfig};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let client = KafkaClient::connect(KafkaConfig::new(["127.0.0.1:9092"])).await?;
//! let mut member = GroupMember::new(client, "connect-cluster", "connect", "worker-1", GroupTimeouts::default());
//! let protocols = [("v0".to_owned(), Bytes::from_static(b"worker-1"))];
//! let generation = member
//!     .join(&protocols, &mut |joined| {
//!         // The leader gives every member the list of all members.
//!         let all: Vec<String> = joined.members.iter().map(|m| m.member_id.clone()).collect();
//!         joined.members.iter().map(|m| (m.member_id.clone(), Bytes::from(all.join(",")))).collect()
//!     })
//!     .await?;
//! println!("generation {} assignment {:?}", generation.id, generation.assignment);
//! if member.heartbeat().await? != HeartbeatOutcome::Stable {
//!     // join again
//! }
//! member.leave().await?;
//! # Ok(())
//! # }
//! ```

pub(crate) mod codec;
pub mod consumer_protocol;
mod store;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::kafka::client::Lane;
use crate::kafka::errors::is_retriable_code;
use crate::kafka::wire::error::Error as ApiError;
use crate::kafka::KafkaClient;
use crate::TopicPartition;

use codec::{
    DescribeGroupsRequest, FindCoordinatorRequest, HeartbeatRequest, JoinGroupRequest,
    LeaveGroupRequest, OffsetCommitRequest, OffsetFetchRequest, SyncGroupRequest,
};
pub use store::GroupOffsetStore;

/// How much longer than the rebalance timeout a JoinGroup or SyncGroup may take to be answered.
const REBALANCE_GRACE: Duration = Duration::from_secs(5);

// Kafka error codes the membership logic acts on.
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const NOT_COORDINATOR: i16 = 16;
const ILLEGAL_GENERATION: i16 = 22;
const UNKNOWN_MEMBER_ID: i16 = 25;
const REBALANCE_IN_PROGRESS: i16 = 27;
const MEMBER_ID_REQUIRED: i16 = 79;
const FENCED_INSTANCE_ID: i16 = 82;

/// Timeouts of one group membership (Kafka Connect's defaults).
///
/// ```
/// use connector_core::kafka::group::GroupTimeouts;
/// use std::time::Duration;
///
/// let t = GroupTimeouts { session: Duration::from_secs(3), ..GroupTimeouts::default() };
/// assert_eq!(t.heartbeat, Duration::from_secs(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupTimeouts {
    /// How long the coordinator keeps a member that stopped heartbeating (`session.timeout.ms`,
    /// default 10 s).
    pub session: Duration,
    /// How often the owner should heartbeat (`heartbeat.interval.ms`, default 3 s).
    pub heartbeat: Duration,
    /// How long a JoinGroup may wait for the other members (`rebalance.timeout.ms`, default 60 s).
    pub rebalance: Duration,
}

impl Default for GroupTimeouts {
    fn default() -> Self {
        Self {
            session: Duration::from_secs(10),
            heartbeat: Duration::from_secs(3),
            rebalance: Duration::from_secs(60),
        }
    }
}

/// What a JoinGroup told the leader: the generation and every member's metadata.
#[derive(Debug, Clone)]
pub struct JoinedGroup {
    /// The generation being formed.
    pub generation_id: i32,
    /// The protocol the coordinator chose.
    pub protocol: String,
    /// The leader's member id (this member).
    pub leader_id: String,
    /// This member's id.
    pub member_id: String,
    /// Every member of the generation, with the metadata it joined with.
    pub members: Vec<JoinedMember>,
}

/// One member as the leader sees it.
#[derive(Debug, Clone)]
pub struct JoinedMember {
    /// Its member id.
    pub member_id: String,
    /// The metadata it sent for the chosen protocol.
    pub metadata: Bytes,
}

/// A generation this member is part of.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generation id.
    pub id: i32,
    /// This member's id.
    pub member_id: String,
    /// The leader's member id.
    pub leader_id: String,
    /// The chosen protocol.
    pub protocol: String,
    /// What the leader assigned to this member (empty when it assigned nothing).
    pub assignment: Bytes,
}

impl Generation {
    /// True when this member is the generation's leader.
    pub fn is_leader(&self) -> bool {
        self.member_id == self.leader_id
    }
}

/// What a heartbeat said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// The generation stands.
    Stable,
    /// The group is rebalancing: join again (with the same member id).
    RebalanceNeeded,
    /// UnknownMemberId/IllegalGeneration: this member was dropped; rejoin fresh.
    Lost,
}

/// A group protocol failure. Every variant names the group; broker errors name the request and
/// Kafka's error.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum GroupError {
    /// The coordinator (or the broker asked for it) answered with an error code.
    #[error("group {group}: {request} answered {error} (Kafka error code {code})")]
    Broker {
        /// Group id.
        group: String,
        /// Which request (`"JoinGroup"`, ...).
        request: &'static str,
        /// Kafka's error code.
        code: i16,
        /// Kafka's name for it.
        error: String,
    },
    /// OffsetCommit or OffsetFetch answered an error for one partition.
    #[error("group {group}: {request} of {topic}-{partition} answered {error} (Kafka error code {code})")]
    Partition {
        /// Group id.
        group: String,
        /// Which request.
        request: &'static str,
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Kafka's error code.
        code: i16,
        /// Kafka's name for it.
        error: String,
    },
    /// The request did not reach the coordinator or its answer did not come back in time.
    #[error("group {group}: {request} failed: {source}")]
    Transport {
        /// Group id.
        group: String,
        /// Which request.
        request: &'static str,
        /// What went wrong on the way.
        #[source]
        source: crate::Error,
    },
    /// The member is not in a generation (call `join` first).
    #[error("group {group}: not a member of a generation (join first)")]
    NotJoined {
        /// Group id.
        group: String,
    },
    /// `join` kept being sent back (rebalances, coordinator moves) for longer than allowed.
    #[error("group {group}: join did not complete within {waited:?}; last: {last}")]
    JoinTimeout {
        /// Group id.
        group: String,
        /// How long it tried.
        waited: Duration,
        /// The last reason it had to retry.
        last: String,
    },
    /// A [`GroupOffsetStore`] was asked to save an offset that is not a Kafka topic-partition's.
    #[error("group {group}: offset of {entry} is not a Kafka topic-partition's next offset")]
    NotKafkaOffset {
        /// Group id.
        group: String,
        /// The entry, as JSON.
        entry: String,
    },
    /// Bytes that should be a consumer protocol Subscription or Assignment are not.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
}

impl GroupError {
    /// Kafka's error code, when the broker answered one.
    pub fn code(&self) -> Option<i16> {
        match self {
            Self::Broker { code, .. } | Self::Partition { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the member must join again before the request can succeed (the group is
    /// rebalancing, or this member or its generation is no longer known).
    pub fn needs_rejoin(&self) -> bool {
        matches!(
            self.code(),
            Some(
                ILLEGAL_GENERATION | UNKNOWN_MEMBER_ID | REBALANCE_IN_PROGRESS | FENCED_INSTANCE_ID
            )
        ) || matches!(self, Self::NotJoined { .. })
    }

    /// True when retrying later (after rejoining, where [`needs_rejoin`](Self::needs_rejoin)) can
    /// succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            Self::Broker { code, .. } | Self::Partition { code, .. } => {
                self.needs_rejoin() || ApiError::new(*code).is_some_and(is_retriable_code)
            }
            Self::Transport { source, .. } => source.is_retriable(),
            Self::NotJoined { .. } | Self::JoinTimeout { .. } => true,
            Self::NotKafkaOffset { .. } | Self::Malformed { .. } => false,
        }
    }

    fn broker(group: &str, request: &'static str, code: i16) -> Self {
        Self::Broker { group: group.to_owned(), request, code, error: error_name(code) }
    }

    fn transport(group: &str, request: &'static str, source: crate::Error) -> Self {
        Self::Transport { group: group.to_owned(), request, source }
    }

    /// True when the coordinator moved or is not ready: find it again.
    fn coordinator_moved(&self) -> bool {
        matches!(
            self.code(),
            Some(COORDINATOR_LOAD_IN_PROGRESS | COORDINATOR_NOT_AVAILABLE | NOT_COORDINATOR)
        ) || matches!(self, Self::Transport { .. })
    }
}

impl From<GroupError> for crate::Error {
    /// Retriable where [`GroupError::is_retriable`] says so (including errors a rejoin fixes),
    /// fatal otherwise.
    fn from(e: GroupError) -> Self {
        if let GroupError::Transport { source, .. } = &e {
            if !source.is_retriable() {
                return source.clone();
            }
        }
        let message = e.to_string();
        if e.is_retriable() {
            crate::Error::retriable(message)
        } else {
            crate::Error::fatal(message)
        }
    }
}

fn error_name(code: i16) -> String {
    ApiError::new(code).map_or_else(|| "None".to_owned(), |e| format!("{e:?}"))
}

/// Where a group's requests go: the coordinator, found once and forgotten when it moves.
#[derive(Debug, Clone)]
struct Coordinator {
    client: KafkaClient,
    group: Arc<str>,
    node: Arc<Mutex<Option<i32>>>,
}

impl Coordinator {
    fn new(client: KafkaClient, group: &str) -> Self {
        Self { client, group: Arc::from(group), node: Arc::new(Mutex::new(None)) }
    }

    /// The coordinator's broker id (FindCoordinator when not known; one attempt).
    async fn node(&self) -> Result<i32, GroupError> {
        if let Some(node) = *self.node.lock() {
            return Ok(node);
        }
        let request = FindCoordinatorRequest { group_id: self.group.to_string() };
        let response = self
            .client
            .request_any(request)
            .await
            .map_err(|e| GroupError::transport(&self.group, "FindCoordinator", e))?;
        if response.error_code != 0 {
            debug!(group = %self.group, code = response.error_code, message = ?response.error_message, "FindCoordinator failed");
            return Err(GroupError::broker(&self.group, "FindCoordinator", response.error_code));
        }
        debug!(group = %self.group, node = response.node_id, host = %response.host, port = response.port, "found group coordinator");
        *self.node.lock() = Some(response.node_id);
        Ok(response.node_id)
    }

    fn forget(&self) {
        *self.node.lock() = None;
    }

    /// Sends `request` to the coordinator on `lane`, waiting up to `timeout` (the request timeout
    /// when `None`). A transport failure forgets the coordinator.
    async fn send<R>(
        &self,
        lane: Lane,
        request: R,
        timeout: Option<Duration>,
        what: &'static str,
    ) -> Result<R::ResponseBody, GroupError>
    where
        R: crate::kafka::wire::messages::RequestBody
            + Send
            + crate::kafka::wire::messages::WriteVersionedType<Vec<u8>>,
        R::ResponseBody: crate::kafka::wire::messages::ReadVersionedType<std::io::Cursor<Vec<u8>>>,
    {
        let node = self.node().await?;
        let result = match timeout {
            Some(t) => self.client.request_node_within(node, lane, request, t).await,
            None => self.client.request_node(node, lane, request).await,
        };
        result.map_err(|e| {
            self.forget();
            GroupError::transport(&self.group, what, e)
        })
    }

    /// `Ok` for code 0, else the error (forgetting the coordinator when it moved).
    fn check(&self, code: i16, what: &'static str) -> Result<(), GroupError> {
        if code == 0 {
            return Ok(());
        }
        let e = GroupError::broker(&self.group, what, code);
        if e.coordinator_moved() {
            self.forget();
        }
        Err(e)
    }

    /// Runs `f` until it succeeds, fails for good, or the request timeout passed; retries
    /// transport errors and coordinator moves with backoff.
    async fn retrying<T, F, Fut>(&self, mut f: F) -> Result<T, GroupError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, GroupError>>,
    {
        let deadline = Instant::now() + self.client.config().request_timeout();
        let mut backoff = Backoff::new(self.client.config().retry_backoff);
        loop {
            match f().await {
                Ok(t) => return Ok(t),
                Err(e) if e.coordinator_moved() && e.is_retriable() => {
                    let delay = backoff.next_delay();
                    if Instant::now() + delay >= deadline {
                        return Err(e);
                    }
                    debug!(group = %self.group, error = %e, "group request failed; retrying");
                    self.forget();
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One member of one group (not Clone; the owner drives join/heartbeat/leave).
///
/// Dropping it without [`leave`](Self::leave) leaves the coordinator to expire it after the
/// session timeout; its connection closes either way.
#[derive(Debug)]
pub struct GroupMember {
    coordinator: Coordinator,
    group_id: String,
    protocol_type: String,
    client_id: String,
    timeouts: GroupTimeouts,
    lane: Lane,
    member_id: String,
    generation: Option<Generation>,
    /// The generation a heartbeat last answered RebalanceInProgress for.
    rebalance_of: Option<i32>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.coordinator.client.close_lane(self.lane);
    }
}

/// Why a join attempt has to start over.
enum Retry {
    /// Immediately (a member id was handed out, or the generation moved on).
    Now(GroupError),
    /// After a backoff (coordinator moving, rebalance still in progress).
    Later(GroupError),
    /// Not at all: no retry can fix it.
    Fail(GroupError),
}

impl GroupMember {
    /// A member of `group_id` for `protocol_type` (e.g. `"connect"` or `"consumer"`), not yet
    /// joined. `client_id` shows in DescribeGroups (e.g. `"<worker>"` or
    /// `"<worker>/<connector>-<task>"`): the member's connection sends it in its request headers.
    pub fn new(
        client: KafkaClient,
        group_id: impl Into<String>,
        protocol_type: impl Into<String>,
        client_id: impl Into<String>,
        timeouts: GroupTimeouts,
    ) -> Self {
        let group_id = group_id.into();
        let client_id = client_id.into();
        let lane = client.open_group_lane(&client_id);
        Self {
            coordinator: Coordinator::new(client, &group_id),
            group_id,
            protocol_type: protocol_type.into(),
            client_id,
            timeouts,
            lane,
            member_id: String::new(),
            generation: None,
            rebalance_of: None,
        }
    }

    /// Joins the group and returns the generation with this member's assignment.
    ///
    /// FindCoordinator (retried on CoordinatorNotAvailable / NotCoordinator /
    /// CoordinatorLoadInProgress), JoinGroup (MemberIdRequired handled: rejoin with the given id;
    /// RebalanceInProgress retried), then SyncGroup. When this member is the leader, `assign`
    /// gets everyone's metadata and returns one assignment per member id; followers send none.
    /// Retries UnknownMemberId by rejoining fresh, RebalanceInProgress on sync by joining again.
    /// JoinGroup/SyncGroup run on a connection of their own with a timeout of rebalance + 5 s
    /// (they block on the broker), never on the produce/fetch lanes. `protocols` are
    /// (name, metadata) in order of preference.
    ///
    /// For Tansu 0.6 (see `docs/kafka-io.md`) it also heartbeats between join rounds and right
    /// after joining, and when a rebalance the coordinator asked for comes back with the same
    /// generation (an expired member was dropped but no generation started), it leaves and joins
    /// afresh, under a new member id, to force one. None of this changes anything with Kafka.
    ///
    /// # Errors
    /// [`GroupError::JoinTimeout`] when it kept being sent back for twice the rebalance timeout
    /// plus 10 s; [`GroupError::Broker`] for an error a retry cannot fix (InconsistentGroupProtocol,
    /// GroupAuthorizationFailed, InvalidSessionTimeout, ...).
    pub async fn join(
        &mut self,
        protocols: &[(String, Bytes)],
        assign: &mut (dyn FnMut(&JoinedGroup) -> Vec<(String, Bytes)> + Send),
    ) -> Result<Generation, GroupError> {
        self.generation = None;
        let mut rebalance_of = self.rebalance_of.take();
        let started = Instant::now();
        let limit = self.timeouts.rebalance * 2 + Duration::from_secs(10);
        let mut backoff = Backoff::new(self.coordinator.client.config().retry_backoff);
        loop {
            let retry = match self.join_once(protocols, assign).await {
                Ok(generation) if rebalance_of == Some(generation.id) => {
                    // Kafka answers a rebalance with a new generation. Tansu 0.6, when a
                    // heartbeat finds a member expired, answers RebalanceInProgress but keeps the
                    // generation and its old assignments; leaving and joining afresh makes it
                    // start a new generation (without the expired member).
                    warn!(group = %self.group_id, generation = generation.id, "the coordinator asked for a rebalance but kept the generation; leaving and joining again to force a new one");
                    rebalance_of = None;
                    self.generation = Some(generation);
                    if let Err(e) = self.leave().await {
                        debug!(group = %self.group_id, error = %e, "LeaveGroup before joining again failed");
                    }
                    continue;
                }
                Ok(generation) => {
                    info!(group = %self.group_id, member = %generation.member_id, generation = generation.id, leader = generation.is_leader(), "joined group");
                    self.generation = Some(generation.clone());
                    return Ok(generation);
                }
                Err(Retry::Fail(e)) => return Err(e),
                Err(Retry::Now(e)) => {
                    backoff.reset();
                    // A floor, so a broker answering "again" at once cannot make this spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    e
                }
                Err(Retry::Later(e)) => {
                    let delay = backoff.next_delay();
                    if started.elapsed() + delay >= limit {
                        return Err(GroupError::JoinTimeout {
                            group: self.group_id.clone(),
                            waited: started.elapsed(),
                            last: e.to_string(),
                        });
                    }
                    debug!(group = %self.group_id, error = %e, ?delay, "joining again after a backoff");
                    tokio::time::sleep(delay).await;
                    e
                }
            };
            if started.elapsed() >= limit {
                return Err(GroupError::JoinTimeout {
                    group: self.group_id.clone(),
                    waited: started.elapsed(),
                    last: retry.to_string(),
                });
            }
        }
    }

    /// One JoinGroup + SyncGroup round.
    async fn join_once(
        &mut self,
        protocols: &[(String, Bytes)],
        assign: &mut (dyn FnMut(&JoinedGroup) -> Vec<(String, Bytes)> + Send),
    ) -> Result<Generation, Retry> {
        let timeout = Some(self.timeouts.rebalance + REBALANCE_GRACE);
        let request = JoinGroupRequest {
            group_id: self.group_id.clone(),
            session_timeout_ms: millis(self.timeouts.session),
            rebalance_timeout_ms: millis(self.timeouts.rebalance),
            member_id: self.member_id.clone(),
            protocol_type: self.protocol_type.clone(),
            protocols: protocols.iter().map(|(n, m)| (n.clone(), m.to_vec())).collect(),
        };
        let joined = self
            .coordinator
            .send(self.lane, request, timeout, "JoinGroup")
            .await
            .map_err(|e| self.classify(e))?;
        match joined.error_code {
            0 => {}
            MEMBER_ID_REQUIRED => {
                debug!(group = %self.group_id, member = %joined.member_id, "coordinator handed out a member id");
                self.member_id = joined.member_id;
                return Err(Retry::Now(GroupError::broker(
                    &self.group_id,
                    "JoinGroup",
                    MEMBER_ID_REQUIRED,
                )));
            }
            code => {
                let e = self.coordinator.check(code, "JoinGroup").err();
                return Err(self.classify(
                    e.unwrap_or_else(|| GroupError::broker(&self.group_id, "JoinGroup", code)),
                ));
            }
        }
        self.member_id = joined.member_id.clone();
        let assignments = if joined.leader == joined.member_id {
            let group = JoinedGroup {
                generation_id: joined.generation_id,
                protocol: joined.protocol_name.clone(),
                leader_id: joined.leader.clone(),
                member_id: joined.member_id.clone(),
                members: joined
                    .members
                    .into_iter()
                    .map(|m| JoinedMember {
                        member_id: m.member_id,
                        metadata: Bytes::from(m.metadata),
                    })
                    .collect(),
            };
            debug!(group = %self.group_id, generation = group.generation_id, members = group.members.len(), "assigning as the leader");
            assign(&group).into_iter().map(|(m, a)| (m, a.to_vec())).collect()
        } else {
            Vec::new()
        };
        let request = SyncGroupRequest {
            group_id: self.group_id.clone(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
            assignments,
        };
        let synced = self
            .coordinator
            .send(self.lane, request, timeout, "SyncGroup")
            .await
            .map_err(|e| self.classify(e))?;
        if synced.error_code == REBALANCE_IN_PROGRESS {
            // Tansu 0.6 counts only heartbeats as contact and makes every follower's JoinGroup
            // wait 3 s: one heartbeat before joining again keeps a member that goes round the
            // join loop from being expired meanwhile. Kafka answers it harmlessly.
            let keep_alive = HeartbeatRequest {
                group_id: self.group_id.clone(),
                generation_id: joined.generation_id,
                member_id: joined.member_id.clone(),
            };
            if let Err(e) = self.coordinator.send(self.lane, keep_alive, None, "Heartbeat").await {
                debug!(group = %self.group_id, error = %e, "heartbeat between joins failed");
            }
        }
        if synced.error_code != 0 {
            let e = self.coordinator.check(synced.error_code, "SyncGroup").err();
            let e = e.unwrap_or_else(|| {
                GroupError::broker(&self.group_id, "SyncGroup", synced.error_code)
            });
            return Err(self.classify(e));
        }
        // Tansu 0.6 counts only heartbeats as contact: one at once, rather than a heartbeat
        // interval later, keeps a follower that just sat through its 3 s JoinGroup pause from
        // expiring. What it says is left to the owner's next heartbeat.
        let first = HeartbeatRequest {
            group_id: self.group_id.clone(),
            generation_id: joined.generation_id,
            member_id: joined.member_id.clone(),
        };
        if let Err(e) = self.coordinator.send(self.lane, first, None, "Heartbeat").await {
            debug!(group = %self.group_id, error = %e, "first heartbeat of the generation failed");
        }
        Ok(Generation {
            id: joined.generation_id,
            member_id: joined.member_id,
            leader_id: joined.leader,
            protocol: joined.protocol_name,
            assignment: Bytes::from(synced.assignment),
        })
    }

    /// How the join loop treats `e`: start over at once, after a backoff, or give up.
    fn classify(&mut self, e: GroupError) -> Retry {
        match e.code() {
            Some(UNKNOWN_MEMBER_ID | FENCED_INSTANCE_ID) => {
                self.member_id.clear();
                Retry::Now(e)
            }
            Some(ILLEGAL_GENERATION) => Retry::Now(e),
            _ if e.is_retriable() => Retry::Later(e),
            _ => Retry::Fail(e),
        }
    }

    /// One Heartbeat for the current generation.
    ///
    /// # Errors
    /// [`GroupError::NotJoined`] without a generation; a retriable error when the coordinator
    /// could not be reached or moved (heartbeat again); fatal for other broker errors.
    pub async fn heartbeat(&mut self) -> Result<HeartbeatOutcome, GroupError> {
        let Some(generation) = &self.generation else {
            return Err(GroupError::NotJoined { group: self.group_id.clone() });
        };
        let request = HeartbeatRequest {
            group_id: self.group_id.clone(),
            generation_id: generation.id,
            member_id: generation.member_id.clone(),
        };
        let response = self.coordinator.send(self.lane, request, None, "Heartbeat").await?;
        match response.error_code {
            0 => Ok(HeartbeatOutcome::Stable),
            REBALANCE_IN_PROGRESS => {
                self.rebalance_of = Some(generation.id);
                Ok(HeartbeatOutcome::RebalanceNeeded)
            }
            UNKNOWN_MEMBER_ID | ILLEGAL_GENERATION | FENCED_INSTANCE_ID => {
                warn!(group = %self.group_id, code = response.error_code, error = %error_name(response.error_code), "the coordinator dropped this member; it must join again");
                if response.error_code != ILLEGAL_GENERATION {
                    self.member_id.clear();
                }
                self.generation = None;
                Ok(HeartbeatOutcome::Lost)
            }
            code => self.coordinator.check(code, "Heartbeat").map(|()| HeartbeatOutcome::Stable),
        }
    }

    /// LeaveGroup (best effort, bounded by the request timeout); forgets the generation and the
    /// member id. Not being a member any more is not an error.
    ///
    /// # Errors
    /// When the coordinator could not be reached or answered another error; the member is
    /// forgotten here either way (the coordinator expires it after the session timeout).
    pub async fn leave(&mut self) -> Result<(), GroupError> {
        self.generation = None;
        let member_id = std::mem::take(&mut self.member_id);
        if member_id.is_empty() {
            return Ok(());
        }
        let request =
            LeaveGroupRequest { group_id: self.group_id.clone(), member_id: member_id.clone() };
        let response = self.coordinator.send(self.lane, request, None, "LeaveGroup").await?;
        let code = if response.error_code != 0 {
            response.error_code
        } else {
            response.members.iter().find(|(m, _)| *m == member_id).map_or(0, |(_, c)| *c)
        };
        match code {
            0 | UNKNOWN_MEMBER_ID => {
                info!(group = %self.group_id, member = %member_id, "left group");
                Ok(())
            }
            code => self.coordinator.check(code, "LeaveGroup"),
        }
    }

    /// The current generation, if joined (and not lost or left since).
    pub fn generation(&self) -> Option<&Generation> {
        self.generation.as_ref()
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// The client id this member shows in DescribeGroups.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// Commits offsets for the current generation; usable from another task while the owner
    /// heartbeats. `None` when not joined.
    pub fn committer(&self) -> Option<GroupCommitter> {
        self.generation.as_ref().map(|g| GroupCommitter {
            coordinator: self.coordinator.clone(),
            generation_id: g.id,
            member_id: g.member_id.clone(),
        })
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Commits offsets of a group for one generation and member (a cheap clone).
#[derive(Debug, Clone)]
pub struct GroupCommitter {
    coordinator: Coordinator,
    generation_id: i32,
    member_id: String,
}

impl GroupCommitter {
    /// OffsetCommit of the next offset to read of each topic-partition, with this generation and
    /// member id; per-partition errors are errors. Retries a coordinator that moved or did not
    /// answer, within the request timeout.
    ///
    /// # Errors
    /// [`GroupError::Partition`] for the first partition the coordinator refused (IllegalGeneration,
    /// UnknownMemberId, RebalanceInProgress: [`GroupError::needs_rejoin`]); others as for
    /// [`GroupMember::heartbeat`].
    pub async fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), GroupError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut topics: Vec<(String, Vec<(i32, i64)>)> = Vec::new();
        for (tp, offset) in offsets {
            match topics.iter_mut().find(|(t, _)| *t == *tp.topic) {
                Some((_, ps)) => ps.push((tp.partition, *offset)),
                None => topics.push((tp.topic.to_string(), vec![(tp.partition, *offset)])),
            }
        }
        let c = &self.coordinator;
        c.retrying(|| async {
            let request = OffsetCommitRequest {
                group_id: c.group.to_string(),
                generation_id: self.generation_id,
                member_id: self.member_id.clone(),
                topics: topics.clone(),
            };
            let response = c.send(Lane::Control, request, None, "OffsetCommit").await?;
            commit_errors(&c.group, response).inspect_err(|e| {
                if e.coordinator_moved() {
                    c.forget();
                }
            })
        })
        .await?;
        debug!(group = %c.group, generation = self.generation_id, partitions = offsets.len(), "committed offsets");
        Ok(())
    }

    /// A committer for `group` without a membership (generation -1, no member id), as the
    /// tools' offset resets commit: Kafka accepts it only while the group has no members.
    pub fn without_membership(client: KafkaClient, group: &str) -> Self {
        Self {
            coordinator: Coordinator::new(client, group),
            generation_id: -1,
            member_id: String::new(),
        }
    }

    /// The generation these commits are for.
    pub fn generation_id(&self) -> i32 {
        self.generation_id
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.coordinator.group
    }
}

/// The first partition the coordinator refused in an OffsetCommit answer.
fn commit_errors(group: &str, response: codec::OffsetCommitResponse) -> Result<(), GroupError> {
    for (topic, partitions) in response.topics {
        if let Some((partition, code)) = partitions.into_iter().find(|(_, code)| *code != 0) {
            return Err(GroupError::Partition {
                group: group.to_owned(),
                request: "OffsetCommit",
                topic,
                partition,
                code,
                error: error_name(code),
            });
        }
    }
    Ok(())
}

/// OffsetFetch of every committed offset of `group` (all topics): the next offset to read per
/// topic-partition. Partitions without a committed offset are left out.
///
/// # Errors
/// As for [`GroupCommitter::commit`]; [`GroupError::Transport`] with a fatal source when the
/// broker only speaks OffsetFetch v1 (which cannot ask for all topics).
pub async fn committed_offsets(
    client: &KafkaClient,
    group: &str,
) -> Result<HashMap<TopicPartition, i64>, GroupError> {
    let c = Coordinator::new(client.clone(), group);
    c.retrying(|| async {
        let request = OffsetFetchRequest { group_id: group.to_owned(), topics: None };
        let mut response = c.send(Lane::Control, request, None, "OffsetFetch").await?;
        c.check(response.error_code, "OffsetFetch")?;
        if response.topics_omitted {
            // Tansu 0.6 does not answer "all topics" below OffsetFetch v8: ask for every topic
            // of the cluster by name.
            let topics = client
                .all_topic_partitions()
                .await
                .map_err(|e| GroupError::transport(group, "OffsetFetch", e))?;
            debug!(
                group,
                topics = topics.len(),
                "the coordinator lists no topics for \"all\"; asking by name"
            );
            let request = OffsetFetchRequest { group_id: group.to_owned(), topics: Some(topics) };
            response = c.send(Lane::Control, request, None, "OffsetFetch").await?;
            c.check(response.error_code, "OffsetFetch")?;
        }
        let mut out = HashMap::new();
        for (topic, partitions) in response.topics {
            let topic: Arc<str> = Arc::from(topic);
            for p in partitions {
                if p.error_code != 0 {
                    if let Err(GroupError::Broker { group, request, code, error }) =
                        c.check(p.error_code, "OffsetFetch")
                    {
                        return Err(GroupError::Partition {
                            group,
                            request,
                            topic: topic.to_string(),
                            partition: p.partition,
                            code,
                            error,
                        });
                    }
                }
                if p.committed_offset >= 0 {
                    out.insert(
                        TopicPartition { topic: topic.clone(), partition: p.partition },
                        p.committed_offset,
                    );
                }
            }
        }
        Ok(out)
    })
    .await
}

/// A group as DescribeGroups shows it.
#[derive(Debug, Clone)]
pub struct GroupDescription {
    /// Group id.
    pub group_id: String,
    /// `Stable`, `PreparingRebalance`, `CompletingRebalance`, `Empty` or `Dead` (Kafka's names).
    pub state: String,
    /// The protocol type its members joined with.
    pub protocol_type: String,
    /// The chosen protocol (Kafka's `protocol_data`).
    pub protocol: String,
    /// Its members.
    pub members: Vec<MemberDescription>,
}

/// One member in a [`GroupDescription`].
#[derive(Debug, Clone)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// The client id in its requests' headers.
    pub client_id: String,
    /// Where it connects from.
    pub client_host: String,
    /// The metadata it joined with.
    pub metadata: Bytes,
    /// What the leader assigned to it.
    pub assignment: Bytes,
}

/// DescribeGroups of one group (asked of its coordinator).
///
/// # Errors
/// As for [`committed_offsets`]; a group the coordinator does not know is described with state
/// `Dead` by Kafka, not an error.
pub async fn describe_group(
    client: &KafkaClient,
    group: &str,
) -> Result<GroupDescription, GroupError> {
    let c = Coordinator::new(client.clone(), group);
    c.retrying(|| async {
        let request = DescribeGroupsRequest { groups: vec![group.to_owned()] };
        let response = c.send(Lane::Control, request, None, "DescribeGroups").await?;
        let Some(g) = response.groups.into_iter().find(|g| g.group_id == group) else {
            return Err(GroupError::transport(
                group,
                "DescribeGroups",
                crate::Error::retriable("the coordinator did not describe the group"),
            ));
        };
        c.check(g.error_code, "DescribeGroups")?;
        Ok(GroupDescription {
            group_id: g.group_id,
            state: g.state,
            protocol_type: g.protocol_type,
            protocol: g.protocol_data,
            members: g
                .members
                .into_iter()
                .map(|m| MemberDescription {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    metadata: Bytes::from(m.metadata),
                    assignment: Bytes::from(m.assignment),
                })
                .collect(),
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_partition_is_an_error_that_says_rejoin() {
        let response = codec::OffsetCommitResponse {
            topics: vec![("t".into(), vec![(0, 0), (1, ILLEGAL_GENERATION)])],
        };
        let e = commit_errors("g", response).unwrap_err();
        assert!(matches!(e, GroupError::Partition { partition: 1, .. }), "{e}");
        assert!(e.needs_rejoin() && e.is_retriable(), "{e}");
        assert_eq!(
            e.to_string(),
            "group g: OffsetCommit of t-1 answered IllegalGeneration (Kafka error code 22)"
        );
        let ok = codec::OffsetCommitResponse { topics: vec![("t".into(), vec![(0, 0)])] };
        assert!(commit_errors("g", ok).is_ok());

        let fatal = GroupError::broker("g", "JoinGroup", 30); // GroupAuthorizationFailed
        assert!(!fatal.is_retriable());
        assert_eq!(crate::Error::from(fatal).kind(), crate::ErrorKind::Fatal);
        let moved = GroupError::broker("g", "Heartbeat", NOT_COORDINATOR);
        assert!(moved.coordinator_moved() && moved.is_retriable() && !moved.needs_rejoin());
        assert_eq!(crate::Error::from(moved).kind(), crate::ErrorKind::Retriable);
    }
}
