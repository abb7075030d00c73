#!/usr/bin/env python3
"""Prints the committed offsets of a consumer group as librdkafka 2.x (confluent-kafka) reads them
(AdminClient.list_consumer_group_offsets, i.e. OffsetFetch for all topics): an independent client
for interop checks in tests.

usage: group-offsets.py BOOTSTRAP GROUP [--lines] [--timeout SECONDS]

Default output, one JSON object:
  {"group": "g", "offsets": [{"topic": "t", "partition": 0, "offset": 42}, ...]}
With --lines: one line per partition, `<topic> <partition> <offset>`.
Partitions without a committed offset are left out; sorted by topic, then partition.
Exit code 1 (message on stderr) when the group's offsets cannot be read.
"""
import argparse
import json
import sys

from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient


def main():
    p = argparse.ArgumentParser()
    p.add_argument("bootstrap")
    p.add_argument("group")
    p.add_argument("--lines", action="store_true")
    p.add_argument("--timeout", type=float, default=20.0)
    a = p.parse_args()
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    futures = admin.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(a.group)], request_timeout=a.timeout)
    try:
        result = futures[a.group].result(timeout=a.timeout)
    except Exception as e:  # noqa: BLE001 - reported to the caller
        print(f"group-offsets.py: cannot read offsets of group {a.group}: {e}", file=sys.stderr)
        return 1
    offsets = sorted(
        (tp.topic, tp.partition, tp.offset)
        for tp in result.topic_partitions
        if tp.error is None and tp.offset >= 0
    )
    if a.lines:
        for topic, partition, offset in offsets:
            print(f"{topic} {partition} {offset}")
    else:
        print(json.dumps({
            "group": a.group,
            "offsets": [{"topic": t, "partition": p, "offset": o} for t, p, o in offsets],
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
