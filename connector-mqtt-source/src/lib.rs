//! MQTT -> Kafka source connector (built in a later step on connector-core and rumqttc).
