#!/usr/bin/env python3
"""An independent Sparkplug B decoder: checks what connector-sparkplug encodes.

It compiles connector-sparkplug/proto/sparkplug_b.proto with grpcio-tools' protoc (not our
prost structs), decodes payloads with Google's protobuf runtime, and decodes each value by its
datatype with its own code (two's complement, packed little-endian arrays, BooleanArray count and
bits, NUL-terminated strings). It prints one JSON line per payload:

    {"topic" or "file", "timestamp", "seq", "metrics": [{"name", "alias", "datatype" (number),
     "value", "timestamp", "properties"?}]}

Values: integers and floats as numbers, Bytes/File as base64, arrays as arrays, DataSet as
{"columns", "types" (names), "rows"}, Template as {"version", "template_ref", "is_definition",
"metrics" (as above), "parameters": [{"name", "datatype" (name), "value"}]}, a property set as
{"<key>": {"datatype" (name), "value"}}. Fields absent on the wire are null.

    sparkplug-check.py decode FILE...
    sparkplug-check.py subscribe --url mqtt://127.0.0.1:1883 --filter 'spBv1.0/+/NCMD/+' \
        [--filter ...] --count N --timeout SECONDS

`subscribe` (paho-mqtt 2.x) prints `subscribed` once the broker acknowledged the subscription,
then a line per message; it exits 0 after N messages and 1 on timeout.

Needs: pip install protobuf grpcio-tools paho-mqtt (scripts/install-brokers installs them).
"""

import argparse
import base64
import importlib
import json
import os
import struct
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
PROTO_DIR = os.path.join(HERE, "..", "connector-sparkplug", "proto")


def compile_proto():
    """protoc sparkplug_b.proto into a temporary directory and import the generated module."""
    from grpc_tools import protoc

    out = tempfile.mkdtemp(prefix="sparkplug-check-")
    rc = protoc.main(["grpc_tools.protoc", "-I", PROTO_DIR, "--python_out", out, "sparkplug_b.proto"])
    if rc != 0:
        sys.exit(f"sparkplug-check: protoc failed on {PROTO_DIR}/sparkplug_b.proto ({rc})")
    sys.path.insert(0, out)
    return importlib.import_module("sparkplug_b_pb2")


PB = None

# Integer datatypes: number -> (signed, bits).
INTS = {1: (True, 8), 2: (True, 16), 3: (True, 32), 4: (True, 64),
        5: (False, 8), 6: (False, 16), 7: (False, 32), 8: (False, 64)}
# Packed arrays: number -> struct format of one element.
ARRAYS = {22: "b", 23: "h", 24: "i", 25: "q", 26: "B", 27: "H", 28: "I", 29: "Q",
          30: "f", 31: "d", 34: "Q"}


class CheckError(Exception):
    pass


def type_name(n):
    return PB.DataType.Name(n)


def signed_int(raw, bits):
    """The signed value of `raw`: two's complement of `bits`, or sign-extended to 32/64 bits."""
    raw &= (1 << 64) - 1
    low = raw & ((1 << bits) - 1)
    if raw >> bits and bits < 64:
        # Accept only a sign extension (0xFFFFFFFF for Int8 -1), as the Rust decoder does.
        width = 32 if raw < (1 << 32) else 64
        value = raw - (1 << width)
        if not -(1 << (bits - 1)) <= value < 0:
            raise CheckError(f"{raw:#x} is not an Int{bits}")
        return value
    return low - (1 << bits) if low >> (bits - 1) else low


def scalar(datatype, msg):
    """The value of a scalar/bytes/array datatype from a message with a `value` oneof."""
    field = msg.WhichOneof("value")
    if field is None:
        return None
    raw = getattr(msg, field)
    if datatype in INTS:
        signed, bits = INTS[datatype]
        if field not in ("int_value", "long_value"):
            raise CheckError(f"{type_name(datatype)} in {field}")
        return signed_int(raw, bits) if signed else raw
    if datatype in (9, 10, 11, 12, 13, 14, 15):
        return raw
    if datatype in (17, 18):
        return base64.b64encode(raw).decode()
    if datatype in ARRAYS:
        fmt = ARRAYS[datatype]
        size = struct.calcsize(fmt)
        if len(raw) % size:
            raise CheckError(f"{type_name(datatype)}: {len(raw)} bytes")
        return list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))
    if datatype == 32:  # BooleanArray: u32 LE count, bits MSB first
        (count,) = struct.unpack("<I", raw[:4])
        bits = raw[4:]
        if len(bits) != (count + 7) // 8:
            raise CheckError(f"BooleanArray: count {count}, {len(bits)} bytes")
        return [bool(bits[i // 8] & (0x80 >> (i % 8))) for i in range(count)]
    if datatype == 33:  # StringArray: NUL-terminated UTF-8
        if not raw:
            return []
        parts = raw.split(b"\0")
        if parts[-1] == b"":
            parts.pop()
        return [p.decode("utf-8") for p in parts]
    raise CheckError(f"datatype {datatype} in {field}")


def property_set(ps):
    out = {}
    for key, pv in zip(ps.keys, ps.values):
        dt = pv.type
        if pv.is_null:
            value = None
        elif dt == 20:
            value = property_set(pv.propertyset_value)
        elif dt == 21:
            value = [property_set(s) for s in pv.propertysets_value.propertyset]
        else:
            value = scalar(dt, pv)
        out[key] = {"datatype": type_name(dt), "value": value}
    return out


def metric(m):
    dt = m.datatype if m.HasField("datatype") else None
    if m.is_null or m.WhichOneof("value") is None:
        value = None
    elif dt == 16:
        ds = m.dataset_value
        value = {"columns": list(ds.columns), "types": [type_name(t) for t in ds.types],
                 "rows": [[scalar(t, cell) for t, cell in zip(ds.types, row.elements)] for row in ds.rows]}
    elif dt == 19:
        t = m.template_value
        value = {
            "version": t.version if t.HasField("version") else None,
            "template_ref": t.template_ref if t.HasField("template_ref") else None,
            "is_definition": t.is_definition,
            "metrics": [metric(x) for x in t.metrics],
            "parameters": [{"name": p.name, "datatype": type_name(p.type), "value": scalar(p.type, p)}
                           for p in t.parameters],
        }
    elif dt is None:
        value = {"undecoded": m.WhichOneof("value")}
    else:
        value = scalar(dt, m)
    out = {
        "name": m.name if m.HasField("name") else None,
        "alias": m.alias if m.HasField("alias") else None,
        "datatype": dt,
        "value": value,
        "timestamp": m.timestamp if m.HasField("timestamp") else None,
    }
    if m.HasField("properties"):
        out["properties"] = property_set(m.properties)
    return out


def payload(data):
    p = PB.Payload()
    p.ParseFromString(data)
    return {
        "timestamp": p.timestamp if p.HasField("timestamp") else None,
        "seq": p.seq if p.HasField("seq") else None,
        "metrics": [metric(m) for m in p.metrics],
    }


def decode_files(files):
    for path in files:
        with open(path, "rb") as f:
            out = {"file": os.path.basename(path)}
            out.update(payload(f.read()))
        print(json.dumps(out), flush=True)
    return 0


def subscribe(url, filters, count, timeout):
    import paho.mqtt.client as mqtt

    parsed = urllib.parse.urlparse(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sparkplug-check-{os.getpid()}")
    state = {"seen": 0, "error": None}

    def on_connect(c, _userdata, _flags, reason, _props):
        if reason.is_failure:
            state["error"] = f"connect refused: {reason}"
            return
        c.subscribe([(f, 1) for f in filters])

    def on_subscribe(_c, _userdata, _mid, _reasons, _props):
        print("subscribed", flush=True)

    def on_message(_c, _userdata, msg):
        try:
            out = {"topic": msg.topic}
            out.update(payload(msg.payload))
        except Exception as e:  # report, do not die inside paho's loop
            out = {"topic": msg.topic, "error": str(e)}
        print(json.dumps(out), flush=True)
        state["seen"] += 1

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(parsed.hostname or "127.0.0.1", parsed.port or 1883)
    deadline = time.monotonic() + timeout
    while state["seen"] < count and state["error"] is None and time.monotonic() < deadline:
        client.loop(timeout=0.1)
    client.disconnect()
    if state["error"]:
        print(f"sparkplug-check: {state['error']}", file=sys.stderr)
        return 1
    if state["seen"] < count:
        print(f"sparkplug-check: timeout after {state['seen']} of {count} messages", file=sys.stderr)
        return 1
    return 0


def main():
    global PB
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    dec = sub.add_parser("decode", help="decode payload files")
    dec.add_argument("files", nargs="+")
    s = sub.add_parser("subscribe", help="subscribe and decode what arrives")
    s.add_argument("--url", required=True)
    s.add_argument("--filter", action="append", required=True)
    s.add_argument("--count", type=int, required=True)
    s.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    PB = compile_proto()
    try:
        if args.command == "decode":
            return decode_files(args.files)
        return subscribe(args.url, args.filter, args.count, args.timeout)
    except CheckError as e:
        print(f"sparkplug-check: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
