//! Kafka -> MQTT sink connector (built in a later step on connector-core and rumqttc).
