//! BIRTH metrics into alias tables, and DATA metrics resolved against them.
//!
//! A BIRTH is decoded metric by metric: one whose value does not decode still has a name, an
//! alias and a datatype, so it goes into the table (its DATA values are then judged one message
//! at a time) and is left out of the birth's metrics with a warning. Only what makes the table
//! itself unusable rejects the BIRTH: two metrics with one alias, a metric without a name.

use std::collections::HashMap;

use crate::proto::payload as pb;
use crate::proto::Payload;
use crate::{decode_metric, DataType, Metric};

/// Alias and name tables of one BIRTH.
#[derive(Debug, Clone, Default)]
pub(crate) struct Table {
    pub(crate) by_alias: HashMap<u64, (String, DataType)>,
    pub(crate) by_name: HashMap<String, (Option<u64>, DataType)>,
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

/// The metrics of a BIRTH and its table; `Err` when the table cannot be built.
pub(crate) fn decode_birth(payload: &Payload) -> Result<(Vec<Metric>, Table), String> {
    let mut table = Table::default();
    let mut metrics = Vec::with_capacity(payload.metrics.len());
    for m in &payload.metrics {
        let Some(name) = m.name.as_deref().filter(|n| !n.is_empty()) else {
            return Err(format!("a metric without a name (alias {:?})", m.alias));
        };
        match decode_metric(m, None) {
            Ok(metric) => {
                table.insert(&metric.name, metric.alias, metric.datatype)?;
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
pub(crate) fn resolve(table: &Table, metrics: &[pb::Metric]) -> Result<Vec<Metric>, Unresolved> {
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
                        (None, None) if m.datatype.is_some() => None,
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
            let mut metric = decode_metric(m, known)
                .map_err(|e| Unresolved { reason: e.to_string(), rebirth: false })?;
            if metric.alias.is_none() {
                metric.alias = table.by_name.get(&metric.name).and_then(|(a, _)| *a);
            }
            Ok(metric)
        })
        .collect()
}
