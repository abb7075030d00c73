//! `connect status`: which worker of a worker group runs which task, in which generation, and
//! which sink task (member of consumer group `connect-<connector>`) reads which partitions, from
//! the brokers' DescribeGroups and the workers' status topic
//! ([`STATUS_TOPIC`](crate::runtime::cluster::STATUS_TOPIC)).

use std::fmt;

use serde::Serialize;

use crate::kafka::group::{consumer_protocol, describe_group};
use crate::kafka::{FetchResult, KafkaClient, OffsetSpec};
use crate::runner::file::ConnectFile;
use crate::runner::registry::BuiltConnector;
use crate::runtime::cluster::{StatusRecord, WorkerAssignment, STATUS_TOPIC};
use crate::{Error, Result};

/// A worker group as its members' assignments describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterStatus {
    /// The worker group.
    pub group: String,
    /// The generation of the newest assignment (`None`: no member has one).
    pub generation: Option<i32>,
    /// The leader's worker id, from that assignment.
    pub leader: Option<String>,
    /// The group's state (`Stable`, `PreparingRebalance`, `Empty`, ...).
    pub state: String,
    /// Every worker and its tasks (`<connector>-<task>`), by worker id.
    pub workers: Vec<WorkerStatus>,
    /// Per sink connector, its consumer group's members and their partitions.
    pub sinks: Vec<SinkGroupStatus>,
}

/// One worker's tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WorkerStatus {
    /// Its id.
    pub worker_id: String,
    /// Its tasks, `<connector>-<task>`.
    pub tasks: Vec<String>,
}

/// A sink connector's consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkGroupStatus {
    /// The connector.
    pub connector: String,
    /// `connect-<connector>`.
    pub group: String,
    /// Its members.
    pub members: Vec<SinkMemberStatus>,
}

/// One member of a sink's consumer group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SinkMemberStatus {
    /// Its client id.
    pub client_id: String,
    /// Its partitions, `<topic>-<partition>`.
    pub partitions: Vec<String>,
}

/// Describes the worker group of `file` (its `[cluster] group_id`) and its sinks' consumer groups.
///
/// ```no_run
/// # async fn example(file: connector_core::runner::ConnectFile) -> connector_core::Result<()> {
/// let status = connector_core::runner::cluster_status(&file).await?;
/// print!("{status}");
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// No group configured, Kafka unreachable, or DescribeGroups failing.
pub async fn cluster_status(file: &ConnectFile) -> Result<ClusterStatus> {
    let Some(group) = file.cluster.group_id.clone() else {
        return Err(Error::fatal(
            "no worker group: set [cluster] group_id in the file or pass --group",
        ));
    };
    // Its error names the brokers ("cannot reach Kafka at ...").
    let client = KafkaClient::connect(file.kafka.clone()).await?;
    let sinks: Vec<String> = file
        .connectors
        .iter()
        .filter(|e| matches!(e.connector, BuiltConnector::Sink(_)))
        .map(|e| e.name.clone())
        .collect();
    describe_cluster(&client, &group, &sinks).await
}

/// Describes worker group `group` and the consumer groups of the sink connectors `sinks`
/// (what [`cluster_status`] prints, from a client of your own).
///
/// ```no_run
/// # async fn example(client: connector_core::kafka::KafkaClient) -> connector_core::Result<()> {
/// let status = connector_core::runner::describe_cluster(&client, "workers", &["commands".into()]).await?;
/// println!("generation {:?}", status.generation);
/// # Ok(())
/// # }
/// ```
///
/// # Errors
/// Kafka unreachable, or DescribeGroups failing.
pub async fn describe_cluster(
    client: &KafkaClient,
    group: &str,
    sink_connectors: &[String],
) -> Result<ClusterStatus> {
    let (client, group) = (client.clone(), group.to_owned());
    let described = describe_group(&client, &group).await?;
    // The newest assignment: from DescribeGroups where the broker shows assignments, else
    // from what the workers wrote to the status topic.
    let described_newest = described
        .members
        .iter()
        .filter_map(|m| WorkerAssignment::decode(&m.assignment).ok())
        .max_by_key(|a| a.generation);
    let newest = match described_newest {
        Some(a) => Some(a),
        None => newest_status(&client, &group).await?,
    };
    let mut workers: Vec<WorkerStatus> = match &newest {
        Some(a) => a
            .all
            .iter()
            .map(|(w, tasks)| WorkerStatus {
                worker_id: w.clone(),
                tasks: tasks.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        None => Vec::new(),
    };
    // Members without an assignment yet (joining) are listed without tasks.
    for m in &described.members {
        if !m.client_id.is_empty() && !workers.iter().any(|w| w.worker_id == m.client_id) {
            workers.push(WorkerStatus { worker_id: m.client_id.clone(), tasks: Vec::new() });
        }
    }
    workers.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
    let mut sinks = Vec::new();
    for name in sink_connectors {
        let sink_group = format!("connect-{name}");
        let d = describe_group(&client, &sink_group).await?;
        let mut members: Vec<SinkMemberStatus> = d
            .members
            .iter()
            .map(|m| SinkMemberStatus {
                client_id: m.client_id.clone(),
                partitions: consumer_protocol::decode_assignment(&m.assignment)
                    .unwrap_or_default()
                    .iter()
                    .map(|tp| format!("{}-{}", tp.topic, tp.partition))
                    .collect(),
            })
            .collect();
        members.sort_by(|a, b| a.client_id.cmp(&b.client_id));
        sinks.push(SinkGroupStatus { connector: name.clone(), group: sink_group, members });
    }
    Ok(ClusterStatus {
        group,
        generation: newest.as_ref().map(|a| a.generation),
        leader: newest.map(|a| a.leader),
        state: described.state,
        workers,
        sinks,
    })
}

/// The newest assignment of `group` in [`STATUS_TOPIC`] (`None`: none written yet).
async fn newest_status(client: &KafkaClient, group: &str) -> Result<Option<WorkerAssignment>> {
    if client.topic_metadata(STATUS_TOPIC).await?.is_none() {
        return Ok(None);
    }
    let end = client.end_offset(STATUS_TOPIC, 0).await?;
    let mut offset = client.list_offset(STATUS_TOPIC, 0, OffsetSpec::Earliest).await?;
    let prefix = format!("{group}/");
    let mut newest: Option<WorkerAssignment> = None;
    let deadline = std::time::Instant::now() + client.config().request_timeout();
    while offset < end && std::time::Instant::now() < deadline {
        let FetchResult::Records(fetched) =
            client.fetch(STATUS_TOPIC, 0, offset, std::time::Duration::from_millis(100)).await?
        else {
            break;
        };
        for r in &fetched.records {
            let ours = r.key.as_deref().is_some_and(|k| k.starts_with(prefix.as_bytes()));
            let Some(record) = r
                .value
                .as_deref()
                .filter(|_| ours)
                .and_then(|v| serde_json::from_slice::<StatusRecord>(v).ok())
            else {
                continue;
            };
            if record.group == group
                && newest.as_ref().is_none_or(|n| record.assignment.generation >= n.generation)
            {
                newest = Some(record.assignment);
            }
        }
        offset = fetched.next_offset.max(offset);
    }
    Ok(newest)
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "-".to_owned());
        writeln!(
            f,
            "group {} generation {} leader {} state {}",
            self.group,
            or_none(self.generation.map(|g| g.to_string())),
            or_none(self.leader.clone()),
            self.state
        )?;
        for w in &self.workers {
            writeln!(f, "worker {}: {}", w.worker_id, w.tasks.join(", "))?;
        }
        for s in &self.sinks {
            for m in &s.members {
                writeln!(
                    f,
                    "sink {} group {}: member {}: {}",
                    s.connector,
                    s.group,
                    m.client_id,
                    m.partitions.join(", ")
                )?;
            }
        }
        Ok(())
    }
}
