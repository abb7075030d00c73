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
use connector_sparkplug::host::{Event, HostConfig, HostState};
use connector_sparkplug::{
    encode, json, DeviceKey, MessageType, NodeKey, SparkplugTopic, NAMESPACE,
};
use parking_lot::Mutex;

use crate::render;

/// The edge node (`device: None`) or device a command is for.
pub(crate) type Target = DeviceKey;

fn target(group: &str, node: &str, device: Option<&str>) -> Target {
    DeviceKey { node: NodeKey::new(group, node), device: device.map(str::to_owned) }
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
    Ok(target(group, node, device))
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
    Ok(target(group, node, device))
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
            Ok((target.command_topic(), target))
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

/// What the sink knows from the BIRTHs its connection received: a [`HostState`] fed only
/// BIRTHs and DEATHs, bounded by `max_nodes` (BIRTHs of further nodes are not learned; a dead
/// node's room may be taken by a new one).
///
/// Aliases are used only while they belong to the node's latest BIRTH as far as the sink can
/// tell: a node or device whose DEATH arrived after its BIRTH gets commands by name until it is
/// born again, and everything is forgotten when the sink connects again (BIRTHs are QoS 0 and
/// not retained, so one published while the sink was away is lost to it).
#[derive(Debug)]
pub(crate) struct Births {
    state: Mutex<Learning>,
    config: HostConfig,
}

#[derive(Debug)]
struct Learning {
    host: HostState,
    /// Nodes (`device: None`, with all their devices) and devices that died after the BIRTH
    /// the host state holds for them. Only keys the host state knows: bounded like it.
    dead: std::collections::HashSet<DeviceKey>,
}

impl Learning {
    fn is_dead(&self, target: &Target) -> bool {
        self.dead.contains(target) || self.dead.contains(&DeviceKey::node(target.node.clone()))
    }
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
    pub(crate) fn new(max_nodes: usize) -> Self {
        let config = HostConfig { max_nodes, ..HostConfig::default() };
        let learning = Learning { host: HostState::new(config.clone()), dead: Default::default() };
        Self { state: Mutex::new(learning), config }
    }

    /// Forgets every BIRTH (a new connection: what was born meanwhile is unknown).
    pub(crate) fn forget_all(&self) {
        let mut state = self.state.lock();
        state.host = HostState::new(self.config.clone());
        state.dead.clear();
    }

    /// Feeds one received message (topic and payload) in. The rebirth requests the state may
    /// call for are not sent: that is the host application's (the source's) job; a sink without
    /// a BIRTH sends names.
    pub(crate) fn learn(&self, topic: &str, payload: &[u8], now_ms: u64) -> Learned {
        let mut guard = self.state.lock();
        let state = &mut *guard;
        match state.host.handle(topic, payload, now_ms).event {
            Event::Birth { device, .. } => {
                state.dead.remove(&device);
                Learned::Birth
            }
            // A DBIRTH whose NBIRTH the sink missed (it connected in between) is invalid as a
            // message, but the state keeps its aliases for `lookup`.
            Event::Invalid { device: Some(device), .. }
                if is_dbirth(topic)
                    && known_device(&state.host, &device)
                    && connector_sparkplug::decode_payload(payload).is_ok() =>
            {
                state.dead.remove(&device);
                Learned::Birth
            }
            // A stale will of an older session (the node's current BIRTH is known) changes
            // nothing; any other death of a known node or device retires its aliases.
            Event::StaleDeath { current_bd_seq: Some(_), .. } => Learned::Ignored,
            Event::Death { device, .. } | Event::StaleDeath { device, .. }
                if knows(&state.host, &device) =>
            {
                state.dead.insert(device);
                Learned::Ignored
            }
            Event::Invalid { reason, .. } if is_birth(topic) => Learned::Invalid(reason),
            _ => Learned::Ignored,
        }
    }
}

fn is_birth(topic: &str) -> bool {
    matches!(
        SparkplugTopic::parse(topic),
        Ok(SparkplugTopic::Message { kind: MessageType::NBirth | MessageType::DBirth, .. })
    )
}

/// Whether the host state holds a table for the node or device.
fn knows(state: &HostState, device: &DeviceKey) -> bool {
    match &device.device {
        None => state.is_online(device).is_some() || !state.devices(&device.node).is_empty(),
        Some(_) => known_device(state, device),
    }
}

fn is_dbirth(topic: &str) -> bool {
    matches!(
        SparkplugTopic::parse(topic),
        Ok(SparkplugTopic::Message { kind: MessageType::DBirth, .. })
    )
}

fn known_device(state: &HostState, device: &DeviceKey) -> bool {
    device.device.is_some() && state.devices(&device.node).iter().any(|(d, _)| d == device)
}

/// The NCMD/DCMD payload for the JSON command `value` to `target`: metrics the BIRTHs named
/// carry their alias and datatype, others their name and the given or implied datatype.
///
/// # Errors
/// Why the record cannot be encoded (not JSON, not a command, a value that does not fit its
/// datatype); the error policy gets this reason.
pub(crate) fn encode(
    births: Option<&Births>,
    target: &Target,
    value: &[u8],
    now_ms: u64,
) -> Result<bytes::Bytes, String> {
    let json: serde_json::Value =
        serde_json::from_slice(value).map_err(|e| format!("the record value is not JSON: {e}"))?;
    let metrics = json::command_from_json(&json).map_err(|e| e.to_string())?;
    let state = births.map(|b| b.state.lock());
    // A dead node's or device's aliases may be reused by its next BIRTH: by name until then.
    let host = state.as_deref().filter(|s| !s.is_dead(target)).map(|s| &s.host);
    encode::command_payload(host, target, &metrics, now_ms)
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

/// The subscription filters for learning BIRTHs of `groups` (every group when empty).
pub(crate) fn birth_filters(groups: &[String]) -> Vec<String> {
    let all = [String::from("+")];
    let groups = if groups.is_empty() { &all[..] } else { groups };
    groups
        .iter()
        .flat_map(|g| {
            [
                format!("{NAMESPACE}/{g}/NBIRTH/+"),
                format!("{NAMESPACE}/{g}/DBIRTH/+/+"),
                format!("{NAMESPACE}/{g}/NDEATH/+"),
                format!("{NAMESPACE}/{g}/DDEATH/+/+"),
            ]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_nodes_and_devices() {
        let t = key_target(Some(b"plant/line-1")).unwrap();
        assert_eq!(t.command_topic(), "spBv1.0/plant/NCMD/line-1");
        let t = key_target(Some(b"plant/line-1/press-2")).unwrap();
        assert_eq!(t.command_topic(), "spBv1.0/plant/DCMD/line-1/press-2");
        for bad in [&b"plant"[..], b"a/b/c/d", b"a//c", b"/b", b"a/+", b"a/#/c", b"\xff/x", b""] {
            let e = key_target(Some(bad)).unwrap_err();
            assert!(e.contains("not") || e.contains("empty"), "{bad:?}: {e}");
        }
        assert!(key_target(None).unwrap_err().contains("no key"));
    }

    #[test]
    fn command_topics_parse_and_others_do_not() {
        let t = command_target("spBv1.0/g/DCMD/n/d").unwrap();
        assert_eq!(t.to_string(), "g/n/d");
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

    fn decoded(payload: &[u8]) -> Vec<connector_sparkplug::Metric> {
        let p = connector_sparkplug::decode_payload(payload).unwrap();
        connector_sparkplug::decode_metrics(&p).unwrap()
    }

    #[test]
    fn commands_use_the_aliases_of_the_births_learned_and_names_otherwise() {
        use connector_sparkplug::encode::EdgeNode;
        use connector_sparkplug::{DataType, Value};
        let births = Births::new(10);
        let mut edge = EdgeNode::new("plant", "line-1");
        let (t, p) =
            edge.nbirth(&[("speed", Some(1), Value::Double(1.0), DataType::Double)], 1).unwrap();
        assert_eq!(births.learn(&t, &p, 1), Learned::Birth);
        let (t, p) = edge
            .dbirth("press-2", &[("target", Some(7), Value::Int(3), DataType::Int16)], 1)
            .unwrap();
        assert_eq!(births.learn(&t, &p, 1), Learned::Birth);
        assert!(matches!(
            births.learn("spBv1.0/plant/DBIRTH/line-1/x", b"\xff\xff", 1),
            Learned::Invalid(_)
        ));

        let press = key_target(Some(b"plant/line-1/press-2")).unwrap();
        let bytes = encode(Some(&births), &press, br#"{"name":"target","value":-5}"#, 9).unwrap();
        let m = &decoded(&bytes)[0];
        assert_eq!((m.name.as_str(), m.alias, m.datatype), ("target", Some(7), DataType::Int16));
        assert_eq!(m.value, Value::Int(-5));

        // Unknown metric, unknown node, or no learning: name and the given or implied datatype.
        let node = key_target(Some(b"plant/line-9")).unwrap();
        for (b, t) in [(Some(&births), &press), (Some(&births), &node), (None, &press)] {
            let bytes =
                encode(b, t, br#"{"metrics":[{"name":"mode","value":"auto"},{"name":"n","value":3,"datatype":"UInt16"}]}"#, 9)
                    .unwrap();
            let m = decoded(&bytes);
            assert_eq!((m[0].alias, m[0].datatype), (None, DataType::String));
            assert_eq!(
                (m[1].alias, m[1].datatype, &m[1].value),
                (None, DataType::UInt16, &Value::UInt(3))
            );
        }
    }

    #[test]
    fn a_dbirth_whose_nbirth_was_missed_still_gives_its_aliases() {
        use connector_sparkplug::encode::EdgeNode;
        use connector_sparkplug::{DataType, Value};
        let births = Births::new(10);
        let mut edge = EdgeNode::new("plant", "line-1");
        edge.nbirth(&[], 1).unwrap(); // published before the sink subscribed
        let (t, p) = edge
            .dbirth("press-2", &[("target", Some(7), Value::Int(3), DataType::Int16)], 1)
            .unwrap();
        assert_eq!(births.learn(&t, &p, 1), Learned::Birth);
        let press = key_target(Some(b"plant/line-1/press-2")).unwrap();
        let bytes = encode(Some(&births), &press, br#"{"name":"target","value":4}"#, 9).unwrap();
        assert_eq!(decoded(&bytes)[0].alias, Some(7));
    }

    #[test]
    fn after_a_death_or_a_new_connection_commands_go_by_name_until_the_next_birth() {
        use connector_sparkplug::encode::EdgeNode;
        use connector_sparkplug::{DataType, Value};
        let births = Births::new(10);
        let mut edge = EdgeNode::new("plant", "line-1");
        let speed = [("speed", Some(1), Value::Double(1.0), DataType::Double)];
        let target = [("target", Some(7), Value::Int(3), DataType::Int16)];
        let node = key_target(Some(b"plant/line-1")).unwrap();
        let press = key_target(Some(b"plant/line-1/press-2")).unwrap();
        let alias = |t: &Target, name: &str| {
            let cmd = format!(r#"{{"name":"{name}","value":4}}"#);
            decoded(&encode(Some(&births), t, cmd.as_bytes(), 9).unwrap())[0].alias
        };
        let born = |edge: &mut EdgeNode| {
            let (t, p) = edge.nbirth(&speed, 1).unwrap();
            assert_eq!(births.learn(&t, &p, 1), Learned::Birth);
            let (t, p) = edge.dbirth("press-2", &target, 1).unwrap();
            assert_eq!(births.learn(&t, &p, 1), Learned::Birth);
        };
        born(&mut edge);
        assert_eq!((alias(&node, "speed"), alias(&press, "target")), (Some(1), Some(7)));
        let (t, p) = edge.ddeath("press-2", 1);
        assert_eq!(births.learn(&t, &p, 1), Learned::Ignored);
        assert_eq!((alias(&node, "speed"), alias(&press, "target")), (Some(1), None));
        let (t, p) = edge.ndeath(1);
        births.learn(&t, &p, 1);
        assert_eq!(alias(&node, "speed"), None, "a dead node's aliases are not used");
        born(&mut edge);
        assert_eq!((alias(&node, "speed"), alias(&press, "target")), (Some(1), Some(7)));
        births.forget_all();
        assert_eq!((alias(&node, "speed"), alias(&press, "target")), (None, None));
    }

    #[test]
    fn records_that_cannot_be_commands_say_why() {
        let births = Births::new(10);
        let t = key_target(Some(b"plant/line-1")).unwrap();
        let not_json = encode(Some(&births), &t, b"open the valve", 1).unwrap_err();
        assert!(not_json.contains("not JSON"), "{not_json}");
        for bad in [
            &br#"{"value":1}"#[..],
            br#"[1,2]"#,
            br#"{"name":"x","value":"high","datatype":"Int8"}"#,
            br#"{"name":"x","value":300,"datatype":"Int8"}"#,
        ] {
            let e = encode(Some(&births), &t, bad, 1).unwrap_err();
            assert!(!e.is_empty(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn a_template_names_the_target_and_must_render_a_command_topic() {
        use connector_core::{Headers, Timestamp};
        let mut headers = Headers::new();
        headers.push("node", "line-3");
        let record = SinkRecord {
            topic: "cmd".into(),
            original_topic: "cmd".into(),
            partition: 0,
            offset: 0,
            key: Some(bytes::Bytes::from_static(b"not/used/as/target")),
            value: None,
            headers,
            timestamp: Timestamp::from_millis(0),
        };
        let t = Template::parse("spBv1.0/plant/DCMD/{header.node}/pump").unwrap();
        let (topic, target) = route(Some(&t), &record).unwrap();
        assert_eq!(
            (topic.as_str(), target.to_string()),
            ("spBv1.0/plant/DCMD/line-3/pump", "plant/line-3/pump".to_owned())
        );
        let t = Template::parse("plant/{header.node}/cmd").unwrap();
        let e = route(Some(&t), &record).unwrap_err();
        assert!(e.contains("not a Sparkplug command topic") && e.contains("not published"), "{e}");
        let e = route(None, &record).unwrap_err();
        assert!(e.contains("not group/node"), "{e}");
    }

    #[test]
    fn birth_filters_cover_the_groups() {
        assert_eq!(
            birth_filters(&[]),
            [
                "spBv1.0/+/NBIRTH/+",
                "spBv1.0/+/DBIRTH/+/+",
                "spBv1.0/+/NDEATH/+",
                "spBv1.0/+/DDEATH/+/+"
            ]
        );
        assert_eq!(birth_filters(&["a".into()])[3], "spBv1.0/a/DDEATH/+/+");
    }
}
