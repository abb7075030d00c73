//! Decoding of protobuf metrics into typed [`Metric`]s: the value by its datatype (announced by
//! the metric itself, or known from BIRTH when DATA carries only an alias), DataSets, Templates
//! (recursively) and property sets.

use serde::Serialize;

use crate::proto::payload::{
    self as pb, data_set::data_set_value, metric as pm, property_value, template::parameter as pp,
};
use crate::value::{decode_scalar, Wire};
use crate::{
    DataSetValue, DataType, DecodeError, Property, PropertySetValue, TemplateParameter,
    TemplateValue, Value,
};

/// A metric of a message, resolved: the name comes from BIRTH when DATA carried only an alias.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    /// The metric's name.
    pub name: String,
    /// The alias, when the message or the BIRTH gave one.
    pub alias: Option<u64>,
    /// The datatype.
    pub datatype: DataType,
    /// The value.
    pub value: Value,
    /// Milliseconds since the Unix epoch (UTC) of the value (the metric's own timestamp).
    pub timestamp: Option<u64>,
    /// True for a historical value.
    pub is_historical: bool,
    /// True for a value not meant to be stored.
    pub is_transient: bool,
    /// The `Quality` property, when the metric has one with an integer value.
    pub quality: Option<i32>,
    /// The metric's properties.
    pub properties: Option<PropertySetValue>,
}

/// Decodes one metric. `known` is the name and datatype from BIRTH (for a DATA metric that
/// carries only its alias, or no datatype); the metric's own name and datatype win when present.
///
/// ```
/// use connector_sparkplug::proto::payload::{metric, Metric as Pb};
/// use connector_sparkplug::{decode_metric, DataType, Value};
/// let pb = Pb { alias: Some(7), value: Some(metric::Value::IntValue(0xfffe)), ..Pb::default() };
/// let m = decode_metric(&pb, Some(("Offset", DataType::Int16))).unwrap();
/// assert_eq!((m.name.as_str(), m.value), ("Offset", Value::Int(-2)));
/// assert!(decode_metric(&pb, None).is_err()); // no datatype
/// ```
pub fn decode_metric(
    m: &pb::Metric,
    known: Option<(&str, DataType)>,
) -> Result<Metric, DecodeError> {
    let name = match (&m.name, known) {
        (Some(name), _) => name.clone(),
        (None, Some((name, _))) => name.to_owned(),
        (None, None) => String::new(),
    };
    let datatype = match (m.datatype, known) {
        (Some(n), _) => DataType::try_from_u32(n)?,
        (None, Some((_, dt))) => dt,
        (None, None) => {
            let name = match m.alias {
                Some(alias) if name.is_empty() => format!("alias {alias}"),
                _ => name,
            };
            return Err(DecodeError::MissingDatatype { name });
        }
    };
    let value = if m.is_null == Some(true) {
        Value::Null
    } else {
        match &m.value {
            None => Value::Null,
            Some(v) => metric_value(datatype, v)?,
        }
    };
    let properties = m.properties.as_ref().map(decode_property_set).transpose()?;
    let quality = properties.as_ref().and_then(|p| p.get("Quality")).and_then(|q| match q.value {
        Value::Int(i) => i32::try_from(i).ok(),
        Value::UInt(u) => i32::try_from(u).ok(),
        _ => None,
    });
    Ok(Metric {
        name,
        alias: m.alias,
        datatype,
        value,
        timestamp: m.timestamp,
        is_historical: m.is_historical.unwrap_or(false),
        is_transient: m.is_transient.unwrap_or(false),
        quality,
        properties,
    })
}

/// Decodes every metric of a payload on its own (no BIRTH state: each metric must carry its
/// datatype; a missing name decodes as `""`).
pub fn decode_metrics(payload: &crate::proto::Payload) -> Result<Vec<Metric>, DecodeError> {
    payload.metrics.iter().map(|m| decode_metric(m, None)).collect()
}

fn metric_value(datatype: DataType, v: &pm::Value) -> Result<Value, DecodeError> {
    let wire = match v {
        pm::Value::IntValue(i) => Wire::Int(*i),
        pm::Value::LongValue(l) => Wire::Long(*l),
        pm::Value::FloatValue(f) => Wire::Float(*f),
        pm::Value::DoubleValue(d) => Wire::Double(*d),
        pm::Value::BooleanValue(b) => Wire::Bool(*b),
        pm::Value::StringValue(s) => Wire::Str(s),
        pm::Value::BytesValue(b) => Wire::Bytes(b),
        pm::Value::DatasetValue(ds) if datatype == DataType::DataSet => {
            return decode_data_set(ds).map(Value::DataSet)
        }
        pm::Value::TemplateValue(t) if datatype == DataType::Template => {
            return decode_template(t).map(Value::Template)
        }
        pm::Value::DatasetValue(_) => Wire::Other("dataset_value"),
        pm::Value::TemplateValue(_) => Wire::Other("template_value"),
        pm::Value::ExtensionValue(_) => Wire::Other("extension_value"),
    };
    decode_scalar(datatype, wire)
}

/// Decodes a DataSet: as many types as columns, every row with one value per column, each value
/// of its column's scalar datatype (`num_of_columns` is not checked).
pub(crate) fn decode_data_set(ds: &pb::DataSet) -> Result<DataSetValue, DecodeError> {
    let fail = |reason: String| DecodeError::DataSet(reason);
    if ds.types.len() != ds.columns.len() {
        return Err(fail(format!("{} columns but {} types", ds.columns.len(), ds.types.len())));
    }
    // `num_of_columns` is redundant with `columns`; a sender that gets it wrong is not refused.
    let types =
        ds.types.iter().map(|t| DataType::try_from_u32(*t)).collect::<Result<Vec<_>, _>>()?;
    if let Some(bad) = types.iter().find(|t| !t.is_scalar()) {
        return Err(fail(format!("column type {bad} is not a scalar datatype")));
    }
    let mut rows = Vec::with_capacity(ds.rows.len());
    for (r, row) in ds.rows.iter().enumerate() {
        if row.elements.len() != types.len() {
            return Err(fail(format!(
                "row {r} has {} values for {} columns",
                row.elements.len(),
                types.len()
            )));
        }
        let cells = row
            .elements
            .iter()
            .zip(&types)
            .map(|(cell, dt)| {
                let wire = match &cell.value {
                    None => return Ok(Value::Null),
                    Some(data_set_value::Value::IntValue(i)) => Wire::Int(*i),
                    Some(data_set_value::Value::LongValue(l)) => Wire::Long(*l),
                    Some(data_set_value::Value::FloatValue(f)) => Wire::Float(*f),
                    Some(data_set_value::Value::DoubleValue(d)) => Wire::Double(*d),
                    Some(data_set_value::Value::BooleanValue(b)) => Wire::Bool(*b),
                    Some(data_set_value::Value::StringValue(s)) => Wire::Str(s),
                    Some(data_set_value::Value::ExtensionValue(_)) => {
                        Wire::Other("extension_value")
                    }
                };
                decode_scalar(*dt, wire)
            })
            .collect::<Result<Vec<_>, _>>()?;
        rows.push(cells);
    }
    Ok(DataSetValue { columns: ds.columns.clone(), types, rows })
}

/// Decodes a Template: its metrics recursively (each with its own datatype), its parameters.
pub(crate) fn decode_template(t: &pb::Template) -> Result<TemplateValue, DecodeError> {
    let metrics = t.metrics.iter().map(|m| decode_metric(m, None)).collect::<Result<_, _>>()?;
    let parameters = t
        .parameters
        .iter()
        .map(|p| {
            let name = p.name.clone().unwrap_or_default();
            let Some(n) = p.r#type else {
                return Err(DecodeError::MissingDatatype { name });
            };
            let datatype = DataType::try_from_u32(n)?;
            let wire = match &p.value {
                None => return Ok(TemplateParameter { name, datatype, value: Value::Null }),
                Some(pp::Value::IntValue(i)) => Wire::Int(*i),
                Some(pp::Value::LongValue(l)) => Wire::Long(*l),
                Some(pp::Value::FloatValue(f)) => Wire::Float(*f),
                Some(pp::Value::DoubleValue(d)) => Wire::Double(*d),
                Some(pp::Value::BooleanValue(b)) => Wire::Bool(*b),
                Some(pp::Value::StringValue(s)) => Wire::Str(s),
                Some(pp::Value::ExtensionValue(_)) => Wire::Other("extension_value"),
            };
            let value = decode_scalar(datatype, wire)?;
            Ok(TemplateParameter { name, datatype, value })
        })
        .collect::<Result<_, _>>()?;
    Ok(TemplateValue {
        version: t.version.clone(),
        template_ref: t.template_ref.clone(),
        is_definition: t.is_definition.unwrap_or(false),
        metrics,
        parameters,
    })
}

/// Decodes a property set: as many values as keys, each of its own datatype.
pub(crate) fn decode_property_set(ps: &pb::PropertySet) -> Result<PropertySetValue, DecodeError> {
    if ps.keys.len() != ps.values.len() {
        return Err(DecodeError::PropertySet(format!(
            "{} keys but {} values",
            ps.keys.len(),
            ps.values.len()
        )));
    }
    let properties = ps
        .keys
        .iter()
        .zip(&ps.values)
        .map(|(key, pv)| {
            let Some(n) = pv.r#type else {
                return Err(DecodeError::MissingDatatype { name: key.clone() });
            };
            let datatype = DataType::try_from_u32(n)?;
            let value = if pv.is_null == Some(true) {
                Value::Null
            } else {
                property_value(datatype, pv.value.as_ref())?
            };
            Ok(Property { key: key.clone(), datatype, value })
        })
        .collect::<Result<_, _>>()?;
    Ok(PropertySetValue { properties })
}

fn property_value(
    datatype: DataType,
    value: Option<&property_value::Value>,
) -> Result<Value, DecodeError> {
    use property_value::Value as V;
    let wire = match value {
        None => return Ok(Value::Null),
        Some(V::PropertysetValue(ps)) if datatype == DataType::PropertySet => {
            return decode_property_set(ps).map(Value::PropertySet)
        }
        Some(V::PropertysetsValue(list)) if datatype == DataType::PropertySetList => {
            return list
                .propertyset
                .iter()
                .map(decode_property_set)
                .collect::<Result<_, _>>()
                .map(Value::PropertySetList)
        }
        Some(V::IntValue(i)) => Wire::Int(*i),
        Some(V::LongValue(l)) => Wire::Long(*l),
        Some(V::FloatValue(f)) => Wire::Float(*f),
        Some(V::DoubleValue(d)) => Wire::Double(*d),
        Some(V::BooleanValue(b)) => Wire::Bool(*b),
        Some(V::StringValue(s)) => Wire::Str(s),
        Some(V::PropertysetValue(_)) => Wire::Other("propertyset_value"),
        Some(V::PropertysetsValue(_)) => Wire::Other("propertysets_value"),
        Some(V::ExtensionValue(_)) => Wire::Other("extension_value"),
    };
    decode_scalar(datatype, wire)
}
