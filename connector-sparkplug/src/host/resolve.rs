//! BIRTH metrics into alias tables, DATA metrics resolved against them, and the two lookup-only
//! paths: commands seen on the broker, and DBIRTHs of nodes without a known NBIRTH.
//!
//! A BIRTH is decoded metric by metric: one whose value does not decode still has a name, an
//! alias and a datatype, so it goes into the table (its DATA values are then judged one message
//! at a time) and is left out of the birth's metrics with a warning. Only what makes the table
//! itself unusable rejects the BIRTH: two metrics with one alias, a metric without a name.

use std::collections::HashMap;

use super::state::{plain, DeviceState};
use super::{Event, Handled, HostState};
use crate::metric::{decode_metric_with, TemplateDefs};
use crate::proto::payload as pb;
use crate::proto::Payload;
use crate::{DataType, DeviceKey, MessageType, Metric, NodeKey, Value};

/// Alias and name tables of one BIRTH.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) by_alias: HashMap<u64, (String, DataType)>,
    pub(crate) by_name: HashMap<String, (Option<u64>, DataType)>,
    /// Template definitions of the BIRTH (NBIRTH's serve the node's devices too).
    pub(crate) templates: TemplateDefs,
}

impl Table {
    fn insert(&mut self, name: &str, alias: Option<u64>, datatype: DataType) -> Result<(), String> {
        if let Some(alias) = alias {
            if let Some((other, _)) = self.by_alias.insert(alias, (name.to_owned(), datatype)) {
                return Err(format!("alias {alias} given to both {other:?} and {name:?}"));
            }
        }
        self.by_name.insert(name.to_owned(), (alias, datatype));
        Ok(())
    }

    pub(crate) fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// The metrics of a BIRTH and its table; `Err` when the table cannot be built. `inherited` are
/// the node's template definitions (for a DBIRTH).
pub(crate) fn decode_birth(
    payload: &Payload,
    inherited: &TemplateDefs,
) -> Result<(Vec<Metric>, Table), String> {
    let mut table = Table::default();
    let mut defs = inherited.clone();
    let mut metrics = Vec::with_capacity(payload.metrics.len());
    for m in &payload.metrics {
        let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) else {
            return Err(format!("a metric without a name (alias {:?})", m.alias));
        };
        match decode_metric_with(m, None, &defs) {
            Ok(metric) => {
                table.insert(&metric.name, metric.alias, metric.datatype)?;
                if let Value::Template(t) = &metric.value {
                    if t.is_definition {
                        let members = t.metrics.iter().map(|m| (m.name.clone(), m.datatype));
                        let members: HashMap<_, _> = members.collect();
                        defs.insert(metric.name.clone(), members.clone());
                        table.templates.insert(metric.name.clone(), members);
                    }
                }
                metrics.push(metric);
            }
            Err(e) => {
                // Unknown (future) datatype numbers are kept as Unknown: their DATA is invalid,
                // the rest of the node's metrics work.
                let datatype = m.datatype.and_then(DataType::from_u32).unwrap_or(DataType::Unknown);
                table.insert(name, m.alias, datatype)?;
                tracing::warn!(metric = name, error = %e, "sparkplug: a BIRTH metric whose value does not decode (left out of the birth record)");
            }
        }
    }
    Ok((metrics, table))
}

/// Why DATA metrics could not be resolved, and whether a rebirth can help.
#[derive(Debug)]
pub(crate) struct Unresolved {
    pub(crate) reason: String,
    /// True when the BIRTH the host has is not the node's (unknown alias or name).
    pub(crate) rebirth: bool,
}

/// Resolves DATA (or command) metrics against a BIRTH table.
pub(crate) fn resolve(
    table: &Table,
    metrics: &[pb::Metric],
    defs: &TemplateDefs,
) -> Result<Vec<Metric>, Unresolved> {
    let unknown = |reason: String| Unresolved { reason, rebirth: true };
    metrics
        .iter()
        .map(|m| {
            let known = match (m.alias, &m.name) {
                (Some(alias), None) => match table.by_alias.get(&alias) {
                    Some((name, dt)) => Some((name.as_str(), *dt)),
                    None => return Err(unknown(format!("unknown alias {alias}"))),
                },
                (alias, Some(name)) => {
                    let by_alias = alias.and_then(|a| table.by_alias.get(&a));
                    match (by_alias, table.by_name.get(name)) {
                        (Some((_, dt)), _) | (None, Some((_, dt))) => Some((name.as_str(), *dt)),
                        // Not in the BIRTH (which must list every metric): a rebirth reason.
                        (None, None) => return Err(unknown(format!("unknown metric {name:?}"))),
                    }
                }
                (None, None) => {
                    return Err(Unresolved {
                        reason: "a metric with neither name nor alias".to_owned(),
                        rebirth: false,
                    })
                }
            };
            let mut metric = decode_metric_with(m, known, defs)
                .map_err(|e| Unresolved { reason: e.to_string(), rebirth: false })?;
            if metric.alias.is_none() {
                metric.alias = table.by_name.get(&metric.name).and_then(|(a, _)| *a);
            }
            Ok(metric)
        })
        .collect()
}

/// A DBIRTH of a node without a current NBIRTH (a host that started after it): still invalid
/// for its data, but its aliases are kept (offline) so that [`HostState::lookup`] serves a
/// sink's commands.
pub(super) fn learn_device(
    host: &mut HostState,
    node: &NodeKey,
    id: &str,
    payload: &Payload,
    now_ms: u64,
) {
    let Ok((_, table)) = decode_birth(payload, &TemplateDefs::new()) else { return };
    let (max_metrics, total, max_total) =
        (host.config.max_metrics, host.total, host.config.max_total_metrics);
    let Some(state) = host.entry(node, now_ms, false) else { return };
    let others = state.size() - state.devices.get(id).map_or(0, |d| 1 + d.table.len());
    let elsewhere = total.saturating_sub(state.counted);
    // The same two bounds as a DBIRTH of a born node: per node, and over all nodes.
    if others + 1 + table.len() <= max_metrics
        && elsewhere.saturating_add(others + 1 + table.len()) <= max_total
    {
        state
            .devices
            .insert(id.to_owned(), DeviceState { online: false, table, birth_rejected: false });
    }
}

/// NCMD/DCMD seen on the broker: decoded with the BIRTH's aliases where known.
pub(super) fn command(
    host: &HostState,
    device: DeviceKey,
    kind: MessageType,
    payload: &Payload,
) -> Handled {
    let table = host.nodes.get(&device.node).and_then(|n| match &device.device {
        None => Some(&n.table),
        Some(d) => n.devices.get(d).map(|d| &d.table),
    });
    let empty = Table::default();
    let table = table.unwrap_or(&empty);
    // Commands are other hosts' traffic: never Invalid. A metric that cannot be resolved is
    // decoded on its own when it carries a datatype (its name may stay empty), else left out.
    let metrics = payload
        .metrics
        .iter()
        .filter_map(|m| match resolve(table, std::slice::from_ref(m), &table.templates) {
            Ok(mut one) => one.pop(),
            Err(_) => crate::decode_metric(m, None).ok(),
        })
        .collect();
    plain(Event::Command { device, kind, metrics })
}
