//! A node's persistent state as JSON (kept in the source's offset store) and its restore:
//!
//! ```json
//! {"v": 1, "bd_seq": 3, "online": true,
//!  "metrics": [["Temperature", 1, 10], ["bdSeq", null, 4]],
//!  "devices": {"press2": {"online": true, "metrics": [["Pressure", 2, 10]]}}}
//! ```
//!
//! Each metric is `[name, alias or null, datatype number]`. After a restore the node's first seq
//! is accepted as it is (the seqs of the time the connector was down are unknown).

use serde_json::{json, Map, Value as Json};

use super::resolve::Table;
use super::state::{DeviceState, NodeState};
use super::HostState;
use crate::{DataType, NodeKey};

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// Not of the shape [`HostState::snapshot`] writes.
    #[error("sparkplug state of {node}: {reason}")]
    Shape {
        /// The node.
        node: String,
        /// What is wrong.
        reason: String,
    },
    /// Restoring it would exceed `max_nodes` or `max_metrics`.
    #[error("sparkplug state of {node}: over the limit of {limit} {what}")]
    Limit {
        /// The node.
        node: String,
        /// `"edge nodes"` or `"metrics"`.
        what: &'static str,
        /// The limit.
        limit: usize,
    },
}

fn table_json(table: &Table) -> Json {
    let mut rows: Vec<(&String, &(Option<u64>, DataType))> = table.by_name.iter().collect();
    rows.sort_by(|a, b| a.0.cmp(b.0));
    Json::Array(
        rows.into_iter().map(|(name, (alias, dt))| json!([name, alias, dt.number()])).collect(),
    )
}

fn table_from(json: Option<&Json>) -> Result<Table, String> {
    let Some(Json::Array(rows)) = json else {
        return Err("\"metrics\" is not an array".to_owned());
    };
    let mut table = Table::default();
    for row in rows {
        let (name, alias, dt) = match row.as_array().map(Vec::as_slice) {
            Some([Json::String(name), alias, Json::Number(dt)]) => (name, alias, dt),
            _ => return Err(format!("metric entry {row} is not [name, alias, datatype]")),
        };
        let alias = match alias {
            Json::Null => None,
            a => Some(a.as_u64().ok_or_else(|| format!("alias {a} of {name:?}"))?),
        };
        let dt = dt
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .and_then(DataType::from_u32)
            .ok_or_else(|| format!("datatype {dt} of {name:?}"))?;
        if let Some(a) = alias {
            table.by_alias.insert(a, (name.clone(), dt));
        }
        table.by_name.insert(name.clone(), (alias, dt));
    }
    Ok(table)
}

impl HostState {
    /// The node's persistent state (bdSeq, online flag, alias tables of node and devices) as a
    /// JSON object, to be kept in the offset store; `None` for a node without a known BIRTH.
    ///
    /// ```
    /// use connector_sparkplug::encode::EdgeNode;
    /// use connector_sparkplug::host::{Event, HostConfig, HostState};
    /// use connector_sparkplug::{DataType, Value};
    /// let mut edge = EdgeNode::new("g", "n");
    /// let mut host = HostState::new(HostConfig::default());
    /// let (t, p) = edge.nbirth(&[("T", Some(1), Value::Int(-5), DataType::Int16)], 0).unwrap();
    /// let node = host.handle(&t, &p, 0).state_changed.unwrap();
    /// let snapshot = host.snapshot(&node).unwrap();
    ///
    /// let mut restarted = HostState::new(HostConfig::default());
    /// restarted.restore(node, &snapshot).unwrap();
    /// let (t, p) = edge.ndata(&[("T", Value::Int(-6))], 10).unwrap();
    /// let handled = restarted.handle(&t, &p, 10);
    /// assert!(handled.rebirth.is_none());
    /// let Event::Data { metrics, .. } = handled.event else { panic!() };
    /// assert_eq!((metrics[0].name.as_str(), &metrics[0].value), ("T", &Value::Int(-6)));
    /// ```
    pub fn snapshot(&self, node: &NodeKey) -> Option<Map<String, Json>> {
        let state = self.nodes.get(node).filter(|n| n.born)?;
        let mut out = Map::new();
        out.insert("v".into(), json!(1));
        out.insert("bd_seq".into(), json!(state.bd_seq));
        out.insert("online".into(), json!(state.online));
        out.insert("metrics".into(), table_json(&state.table));
        let devices: Map<String, Json> = state
            .devices
            .iter()
            .map(|(id, d)| {
                (id.clone(), json!({"online": d.online, "metrics": table_json(&d.table)}))
            })
            .collect();
        out.insert("devices".into(), Json::Object(devices));
        Some(out)
    }

    /// Rebuilds one node from a [`snapshot`](Self::snapshot) after a restart: its DATA then
    /// resolves without a rebirth, and its first seq afterwards is accepted as it is.
    pub fn restore(
        &mut self,
        node: NodeKey,
        snapshot: &Map<String, Json>,
    ) -> Result<(), RestoreError> {
        let shape = |reason: String| RestoreError::Shape { node: node.to_string(), reason };
        if snapshot.get("v").and_then(Json::as_u64) != Some(1) {
            return Err(shape("no \"v\": 1".to_owned()));
        }
        let bd_seq = match snapshot.get("bd_seq") {
            None | Some(Json::Null) => None,
            Some(b) => Some(b.as_u64().ok_or_else(|| shape(format!("bd_seq {b}")))?),
        };
        let online = snapshot
            .get("online")
            .and_then(Json::as_bool)
            .ok_or_else(|| shape("no boolean \"online\"".into()))?;
        let table = table_from(snapshot.get("metrics")).map_err(shape)?;
        let mut state = NodeState { bd_seq, born: true, online, table, ..NodeState::default() };
        let Some(Json::Object(devices)) = snapshot.get("devices") else {
            return Err(shape("\"devices\" is not an object".into()));
        };
        for (id, d) in devices {
            let online = d
                .get("online")
                .and_then(Json::as_bool)
                .ok_or_else(|| shape(format!("device {id:?}: no boolean \"online\"")))?;
            let table =
                table_from(d.get("metrics")).map_err(|e| shape(format!("device {id:?}: {e}")))?;
            state.devices.insert(id.clone(), DeviceState { online, table, birth_rejected: false });
        }
        if state.size() > self.config.max_metrics {
            return Err(RestoreError::Limit {
                node: node.to_string(),
                what: "metrics",
                limit: self.config.max_metrics,
            });
        }
        if !self.nodes.contains_key(&node) && self.nodes.len() >= self.config.max_nodes {
            return Err(RestoreError::Limit {
                node: node.to_string(),
                what: "edge nodes",
                limit: self.config.max_nodes,
            });
        }
        if let Some(old) = self.nodes.get(&node) {
            state.last_rebirth = old.last_rebirth;
            if let Some(d) = old.seq.deadline {
                self.deadlines.remove(&(d, node.clone()));
            }
        }
        self.nodes.insert(node, state);
        Ok(())
    }
}
