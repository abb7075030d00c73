#!/usr/bin/env python3
"""A plain MQTT -> Kafka bridge in Python, the reference the benchmarks compare against.

It is what a careful team writes in an afternoon with paho-mqtt and confluent-kafka
(librdkafka): subscribe with a persistent session, produce each message to one Kafka topic
with the MQTT topic as key, and acknowledge the MQTT message (PUBACK) only from the Kafka
delivery callback, so it is at-least-once like ours.

    python3 scripts/mqtt-kafka-bridge.py --mqtt-host 127.0.0.1 --mqtt-port 1883 \
        --filter 'plant/#' --kafka 127.0.0.1:9092 --topic telemetry

Needs `pip install paho-mqtt confluent-kafka` (scripts/install-brokers installs both).
"""

import argparse
import signal
import sys
import threading

import paho.mqtt.client as mqtt
from confluent_kafka import Producer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mqtt-host", default="127.0.0.1")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--filter", required=True)
    ap.add_argument("--qos", type=int, default=1, choices=[0, 1, 2])
    ap.add_argument("--kafka", required=True, help="bootstrap servers, host:port[,...]")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--client-id", default="python-bridge")
    ap.add_argument("--linger-ms", type=int, default=5)
    args = ap.parse_args()

    stop = threading.Event()
    failed = []
    producer = Producer(
        {
            "bootstrap.servers": args.kafka,
            "acks": "all",
            "linger.ms": args.linger_ms,
            "enable.idempotence": False,
            "api.version.request": True,
        }
    )
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=args.client_id,
        clean_session=False,
        manual_ack=True,
    )

    def on_connect(c, _userdata, _flags, reason_code, _properties):
        if reason_code.is_failure:
            failed.append(f"MQTT connect refused: {reason_code}")
            stop.set()
            return
        c.subscribe(args.filter, qos=args.qos)

    def on_message(c, _userdata, msg):
        mid, qos = msg.mid, msg.qos

        def delivered(err, _record):
            if err is not None:
                # Not acknowledged: the broker redelivers it after a reconnect.
                failed.append(f"Kafka delivery failed: {err}")
                stop.set()
            elif qos > 0:
                c.ack(mid, qos)

        while True:
            try:
                producer.produce(
                    args.topic, value=msg.payload, key=msg.topic.encode(), on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.01)

    client.on_connect = on_connect
    client.on_message = on_message
    client.max_inflight_messages_set(1000)
    client.connect(args.mqtt_host, args.mqtt_port, keepalive=30)
    client.loop_start()

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.is_set():
        producer.poll(0.05)
    producer.flush(10)
    client.loop_stop()
    client.disconnect()
    for f in failed:
        print(f"mqtt-kafka-bridge: {f}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
