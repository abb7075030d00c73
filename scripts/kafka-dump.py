#!/usr/bin/env python3
"""Reads records from a Kafka topic with librdkafka 2.x (confluent-kafka) and prints one JSON line
per record: partition, offset, key, value and headers (bytes as base64; headers as an ordered list
of [key, value] pairs, duplicates kept). An independent client for interop checks in tests.

usage: kafka-dump.py --bootstrap HOST:PORT --topic TOPIC --count N [--timeout SECONDS]
"""
import argparse
import base64
import json
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError


def b64(b):
    return None if b is None else base64.b64encode(b).decode("ascii")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--timeout", type=float, default=60.0)
    a = p.parse_args()
    c = Consumer({
        "bootstrap.servers": a.bootstrap,
        "group.id": "kafka-dump-" + uuid.uuid4().hex,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    c.subscribe([a.topic])
    got = 0
    deadline = time.time() + a.timeout
    try:
        while got < a.count and time.time() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                print("error: %s" % m.error(), file=sys.stderr)
                continue
            headers = [[k, b64(v)] for (k, v) in (m.headers() or [])]
            print(json.dumps({
                "partition": m.partition(),
                "offset": m.offset(),
                "key": b64(m.key()),
                "value": b64(m.value()),
                "headers": headers,
            }))
            got += 1
    finally:
        c.close()
    if got < a.count:
        print("read %d of %d records before the timeout" % (got, a.count), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
