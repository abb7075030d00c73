//! `format = "sparkplug_b"`: a record's JSON command becomes a Sparkplug B NCMD or DCMD payload,
//! published to the topic of the device it names.
//!
//! The target is the record key `group/node[/device]` (the MQTT source's key for Sparkplug
//! records), or, with an explicit `mqtt_topic` template, the Sparkplug topic the template renders
//! to. Aliases and datatypes come from the BIRTH messages the sink's own connection receives
//! ([`Births`]): a metric seen in a BIRTH is sent by alias with its datatype, any other by name
//! with the datatype the record gives or its JSON value implies.

use connector_core::template::Template;
use connector_core::SinkRecord;

use crate::render;

/// The Sparkplug B namespace (topic prefix).
const NAMESPACE: &str = "spBv1.0";

/// The edge node (and device) a command is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    pub(crate) group: String,
    pub(crate) node: String,
    pub(crate) device: Option<String>,
}

impl Target {
    /// `spBv1.0/<group>/NCMD/<node>` or `spBv1.0/<group>/DCMD/<node>/<device>`.
    pub(crate) fn topic(&self) -> String {
        match &self.device {
            None => format!("{NAMESPACE}/{}/NCMD/{}", self.group, self.node),
            Some(d) => format!("{NAMESPACE}/{}/DCMD/{}/{d}", self.group, self.node),
        }
    }
}

/// Why a Sparkplug id (group, node or device) cannot be used, if it cannot.
fn bad_id(what: &str, id: &str) -> Option<String> {
    if id.is_empty() {
        return Some(format!("its {what} id is empty"));
    }
    if id.contains(['+', '#', '\0']) {
        return Some(format!("its {what} id {id:?} contains '+', '#' or NUL"));
    }
    None
}

/// The target of a record key `group/node` or `group/node/device`.
///
/// # Errors
/// Why the key names no target (missing, not UTF-8, not two or three non-empty levels).
pub(crate) fn key_target(key: Option<&[u8]>) -> Result<Target, String> {
    let key = key.ok_or(
        "the record has no key; format = \"sparkplug_b\" takes the target from a key group/node or group/node/device",
    )?;
    let key = std::str::from_utf8(key).map_err(|_| "the record key is not UTF-8".to_owned())?;
    let parts: Vec<&str> = key.split('/').collect();
    let (group, node, device) = match parts[..] {
        [g, n] => (g, n, None),
        [g, n, d] => (g, n, Some(d)),
        _ => {
            return Err(format!(
                "the record key {key:?} is not group/node or group/node/device; the command is not published"
            ))
        }
    };
    let ids = [("group", Some(group)), ("node", Some(node)), ("device", device)];
    if let Some(why) = ids.iter().find_map(|(what, id)| id.and_then(|id| bad_id(what, id))) {
        return Err(format!(
            "the record key {key:?} names no Sparkplug target: {why}; the command is not published"
        ));
    }
    Ok(Target { group: group.to_owned(), node: node.to_owned(), device: device.map(str::to_owned) })
}

/// The target of an MQTT topic `spBv1.0/<group>/NCMD/<node>` or
/// `spBv1.0/<group>/DCMD/<node>/<device>`.
///
/// # Errors
/// Why the topic is not a Sparkplug command topic.
pub(crate) fn command_target(topic: &str) -> Result<Target, String> {
    let parts: Vec<&str> = topic.split('/').collect();
    let (group, node, device) = match parts[..] {
        [NAMESPACE, g, "NCMD", n] => (g, n, None),
        [NAMESPACE, g, "DCMD", n, d] => (g, n, Some(d)),
        _ => {
            return Err(format!(
                "{topic:?} is not a Sparkplug command topic (spBv1.0/<group>/NCMD/<node> or spBv1.0/<group>/DCMD/<node>/<device>)"
            ))
        }
    };
    let ids = [("group", Some(group)), ("node", Some(node)), ("device", device)];
    if let Some(why) = ids.iter().find_map(|(what, id)| id.and_then(|id| bad_id(what, id))) {
        return Err(format!("{topic:?} is not a usable Sparkplug command topic: {why}"));
    }
    Ok(Target { group: group.to_owned(), node: node.to_owned(), device: device.map(str::to_owned) })
}

/// The MQTT topic and target of a record: from `template` when set, else from its key.
///
/// # Errors
/// Why the record cannot be published (the error policy gets this reason).
pub(crate) fn route(
    template: Option<&Template>,
    r: &SinkRecord,
) -> Result<(String, Target), String> {
    match template {
        None => {
            let target = key_target(r.key.as_deref())?;
            Ok((target.topic(), target))
        }
        Some(t) => {
            let topic = render::mqtt_topic(t, r)?;
            let target = command_target(&topic).map_err(|m| {
                format!("mqtt_topic {:?} rendered {m}; the command is not published", t.as_str())
            })?;
            Ok((topic, target))
        }
    }
}

/// What the sink knows from the BIRTHs its connection received (bounded).
#[derive(Debug, Default)]
pub(crate) struct Births {
    learned: std::sync::atomic::AtomicU64,
}

/// What became of one message the sink's subscription delivered.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Learned {
    /// A BIRTH: its aliases and datatypes are known now.
    Birth,
    /// Not a BIRTH (nothing to learn).
    Ignored,
    /// A BIRTH that cannot be used, with the reason.
    Invalid(String),
}

impl Births {
    /// Knows the BIRTHs of at most `max_nodes` edge nodes.
    pub(crate) fn new(_max_nodes: usize) -> Self {
        Self::default()
    }

    /// Feeds one received message (topic and payload) in.
    pub(crate) fn learn(&self, topic: &str, _payload: &[u8], _now_ms: u64) -> Learned {
        if !topic.starts_with("spBv1.0/") {
            return Learned::Ignored;
        }
        self.learned.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Learned::Birth
    }
}

/// The NCMD/DCMD payload for the JSON command `value` to `target`.
///
/// # Errors
/// Why the record cannot be encoded (not JSON, not a command, a value that does not fit its
/// datatype); the error policy gets this reason.
pub(crate) fn encode(
    _births: Option<&Births>,
    _target: &Target,
    _value: &[u8],
    _now_ms: u64,
) -> Result<bytes::Bytes, String> {
    Err("Sparkplug encoding is not built yet".to_owned())
}

/// The subscription filters for learning BIRTHs of `groups` (every group when empty).
pub(crate) fn birth_filters(groups: &[String]) -> Vec<String> {
    let all = [String::from("+")];
    let groups = if groups.is_empty() { &all[..] } else { groups };
    groups
        .iter()
        .flat_map(|g| [format!("{NAMESPACE}/{g}/NBIRTH/+"), format!("{NAMESPACE}/{g}/DBIRTH/+/+")])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_nodes_and_devices() {
        let t = key_target(Some(b"plant/line-1")).unwrap();
        assert_eq!(t.topic(), "spBv1.0/plant/NCMD/line-1");
        let t = key_target(Some(b"plant/line-1/press-2")).unwrap();
        assert_eq!(t.topic(), "spBv1.0/plant/DCMD/line-1/press-2");
        for bad in [&b"plant"[..], b"a/b/c/d", b"a//c", b"/b", b"a/+", b"a/#/c", b"\xff/x", b""] {
            let e = key_target(Some(bad)).unwrap_err();
            assert!(e.contains("not") || e.contains("empty"), "{bad:?}: {e}");
        }
        assert!(key_target(None).unwrap_err().contains("no key"));
    }

    #[test]
    fn command_topics_parse_and_others_do_not() {
        let t = command_target("spBv1.0/g/DCMD/n/d").unwrap();
        assert_eq!((t.group.as_str(), t.node.as_str(), t.device.as_deref()), ("g", "n", Some("d")));
        assert_eq!(command_target("spBv1.0/g/NCMD/n").unwrap().device, None);
        for bad in [
            "spBv1.0/g/NDATA/n",
            "spBv1.0/g/DCMD/n",
            "spBv1.0/g/NCMD/n/d",
            "x/g/NCMD/n",
            "spBv1.0//NCMD/n",
        ] {
            assert!(command_target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn birth_filters_cover_the_groups() {
        assert_eq!(birth_filters(&[]), ["spBv1.0/+/NBIRTH/+", "spBv1.0/+/DBIRTH/+/+"]);
        assert_eq!(birth_filters(&["a".into()]), ["spBv1.0/a/NBIRTH/+", "spBv1.0/a/DBIRTH/+/+"]);
    }
}
