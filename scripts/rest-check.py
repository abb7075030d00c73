#!/usr/bin/env python3
"""An independent client of the connect worker's REST API (Kafka Connect's shape).

It walks every endpoint of docs/openapi.json, happy and unhappy paths (404 unknown connector,
400 offsets while running (KIP-875; 409 is for a rebalance), 400 invalid config naming its key path, 400 bad JSON, 405 wrong
method, 401 missing or wrong token), and validates every status and body against the document.
It uses no code of the project: only requests and jsonschema (scripts/install-brokers installs
them).

    scripts/rest-check.py --url http://127.0.0.1:8083 [--token T] [--cacert ca.pem]
                          [--topic rest-check] [--sink-path /tmp/rest-check-sink.txt]

The worker must reach Kafka: the check creates a `heartbeat` source writing to `--topic` and a
`file-sink` reading it back into `--sink-path` (a path on the worker's machine; `--no-sink` leaves
the sink out), and removes both at the end. Exit status 0 when every check passed; otherwise each
failure is printed and the status is 1.
"""

import argparse
import json
import os
import re
import sys
import time
import uuid

import jsonschema
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_SPEC = os.path.join(HERE, "..", "docs", "openapi.json")
SPEC_URI = "urn:connect:openapi"
METHODS = ["get", "put", "post", "delete", "patch"]


def to_json_schema(node):
    """OpenAPI 3.0 schema objects -> JSON Schema: `nullable: true` becomes a `null` type."""
    if isinstance(node, list):
        return [to_json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: to_json_schema(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
    return out


class Spec:
    """docs/openapi.json: path templates, operations, and a validator per response schema."""

    def __init__(self, path):
        with open(path, encoding="utf-8") as f:
            self.doc = json.load(f)
        self.converted = to_json_schema(self.doc)
        self.templates = []
        for template in self.doc["paths"]:
            pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
            self.templates.append((re.compile(pattern), template))
        try:
            from referencing import Registry, Resource
            from referencing.jsonschema import DRAFT7

            resource = Resource.from_contents(self.converted, default_specification=DRAFT7)
            self.registry = Registry().with_resource(SPEC_URI, resource)
            self.resolver = None
        except ImportError:  # jsonschema < 4.18
            self.registry = None
            self.resolver = jsonschema.RefResolver(SPEC_URI, self.converted)

    def template_of(self, path):
        for pattern, template in self.templates:
            if pattern.match(path):
                return template
        return None

    def deref(self, node):
        while isinstance(node, dict) and "$ref" in node:
            target = self.doc
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            node = target
        return node

    def validate(self, instance, schema):
        """Problems of `instance` against an OpenAPI schema (refs into the document)."""
        schema = to_json_schema(schema)
        schema = json.loads(json.dumps(schema).replace('"$ref": "#/', f'"$ref": "{SPEC_URI}#/'))
        if self.registry is not None:
            validator = jsonschema.Draft7Validator(schema, registry=self.registry)
        else:
            validator = jsonschema.Draft7Validator(schema, resolver=self.resolver)
        problems = []
        for e in sorted(validator.iter_errors(instance), key=lambda e: [str(p) for p in e.absolute_path]):
            # Under oneOf/anyOf, the branch that got furthest says what is wrong.
            while e.context:
                e = max(e.context, key=lambda c: len(c.absolute_path))
            where = "/".join(str(p) for p in e.absolute_path) or "<body>"
            problems.append(f"{where}: {e.message[:300]}")
        return problems


class Checker:
    def __init__(self, args, spec):
        self.url = args.url.rstrip("/")
        self.token = args.token
        self.spec = spec
        self.session = requests.Session()
        # Passed on every request: a session-wide setting loses to REQUESTS_CA_BUNDLE.
        self.verify = args.cacert if args.cacert else True
        self.timeout = args.request_timeout
        self.verbose = args.verbose
        self.failures = []
        self.checks = 0
        # While polling (wait_for), failures go here; only the last poll's are kept.
        self.polled = None

    # ---- reporting

    def fail(self, what, problem):
        if self.polled is not None:
            self.polled.append(f"{what}: {problem}")
            return
        self.failures.append(f"{what}: {problem}")
        print(f"FAIL {what}: {problem}", flush=True)

    def expect(self, cond, what, problem):
        self.checks += 1
        if not cond:
            self.fail(what, problem)
        return cond

    # ---- one request, checked against the document

    def call(self, method, path, expect, *, body=None, raw=None, params=None, auth="token",
             check_request=True, what=None, may_close=False):
        """Sends the request; checks the status is `expect` (an int or a set) and documented, and
        the body fits the documented schema. Returns (status, parsed body or text, response)."""
        what = what or f"{method.upper()} {path}{'?' + _qs(params) if params else ''}"
        expect = {expect} if isinstance(expect, int) else set(expect)
        headers = {}
        if auth == "token" and self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        elif auth == "wrong":
            headers["Authorization"] = "Bearer wrong-" + uuid.uuid4().hex
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        elif raw is not None:
            data = raw
            headers["Content-Type"] = "application/json"
        template = self.spec.template_of(path)
        operation = None
        if template is not None:
            operation = self.spec.doc["paths"][template].get(method)
        if operation is not None and body is not None and check_request:
            request_schema = (
                self.spec.deref(operation.get("requestBody", {}))
                .get("content", {})
                .get("application/json", {})
                .get("schema")
            )
            if request_schema is not None:
                for p in self.spec.validate(body, request_schema):
                    self.fail(what, f"the checker's own request body does not fit the document: {p}")
        try:
            r = self.session.request(method.upper(), self.url + path, params=params, data=data,
                                     headers=headers, timeout=self.timeout, verify=self.verify)
        except requests.RequestException as e:
            self.checks += 1
            if may_close and isinstance(e, requests.ConnectionError):
                # A server may answer 413 and close before reading the rest of the body
                # (RFC 9110 15.5.14); a client still writing then sees the connection drop.
                print(f"note: {what}: the connection closed while the body was sent ({e.__class__.__name__})")
                return None, None, None
            self.fail(what, f"request failed: {e}")
            return None, None, None
        self.checks += 1
        parsed = None
        text = r.text
        ctype = r.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            try:
                parsed = r.json()
            except ValueError as e:
                self.fail(what, f"Content-Type is JSON but the body is not: {e}: {text[:200]!r}")
        if self.verbose:
            print(f"  {what} -> {r.status_code} {text[:300]}", flush=True)
        if r.status_code not in expect:
            self.fail(what, f"status {r.status_code}, expected {sorted(expect)}; body {text[:500]!r}")
        # Which response of the document describes it.
        if template is None:
            response = self.spec.doc["components"]["responses"]["NotFound"] if r.status_code == 404 else None
            if response is None:
                self.fail(what, f"path {path} is not in the document and status is {r.status_code}")
                return r.status_code, parsed if parsed is not None else text, r
        elif operation is None:
            response = self.spec.doc["components"]["responses"]["MethodNotAllowed"]
            if r.status_code != 405:
                self.fail(what, f"{method.upper()} is not documented on {template}, so 405 is expected; got {r.status_code}")
        else:
            response = operation["responses"].get(str(r.status_code))
            if response is None:
                self.fail(what, f"status {r.status_code} is not documented for {method.upper()} {template}")
                return r.status_code, parsed if parsed is not None else text, r
        response = self.spec.deref(response)
        content = response.get("content")
        if content is None:
            if text.strip():
                self.fail(what, f"status {r.status_code} documents no body, got {text[:200]!r}")
        elif "application/json" in content:
            if parsed is None and not ctype.startswith("application/json"):
                self.fail(what, f"expected an application/json body, got Content-Type {ctype!r}: {text[:200]!r}")
            else:
                for p in self.spec.validate(parsed, content["application/json"]["schema"]):
                    self.fail(what, f"body does not fit the document: {p}; body {text[:300]!r}")
        elif "text/plain" in content:
            if not ctype.startswith("text/plain"):
                self.fail(what, f"expected text/plain, got Content-Type {ctype!r}")
        for name, header in response.get("headers", {}).items():
            value = r.headers.get(name)
            if value is None:
                self.fail(what, f"header {name} missing")
            elif "pattern" in header.get("schema", {}) and not re.match(header["schema"]["pattern"], value):
                self.fail(what, f"header {name}: {value!r} does not match {header['schema']['pattern']}")
        if parsed is not None and r.status_code >= 400 and isinstance(parsed, dict):
            self.expect(parsed.get("error_code") == r.status_code, what,
                        f"error_code {parsed.get('error_code')} is not the status {r.status_code}")
        return r.status_code, parsed if parsed is not None else text, r

    def wait_for(self, what, timeout, fn):
        """Polls `fn` (returning (done, detail)) every 200 ms until done or `timeout` passes."""
        deadline = time.monotonic() + timeout
        while True:
            self.polled = []
            try:
                done, detail = fn()
            finally:
                problems, self.polled = self.polled, None
            last = done or time.monotonic() >= deadline
            if last:
                for p in problems:
                    what_, _, problem = p.partition(": ")
                    self.fail(what_, problem)
            if done:
                return True
            if last:
                self.fail(what, f"not within {timeout} s; last seen: {detail}")
                return False
            time.sleep(0.2)

    def state_of(self, name):
        _, body, r = self.call("get", f"/connectors/{name}/status", 200)
        if not isinstance(body, dict):
            return None, []
        return body.get("connector", {}).get("state"), [t.get("state") for t in body.get("tasks", [])]

    def wait_state(self, name, connector_state, task_state, timeout=30):
        def fn():
            c, tasks = self.state_of(name)
            ok = c == connector_state and (
                tasks == [] if task_state is None else (tasks and all(t == task_state for t in tasks)))
            return ok, (c, tasks)
        return self.wait_for(f"{name} reaches {connector_state}/{task_state}", timeout, fn)


def _qs(params):
    if isinstance(params, dict):
        params = list(params.items())
    return "&".join(f"{k}={v}" for k, v in params)


def run(args):
    spec = Spec(args.spec)
    c = Checker(args, spec)
    suffix = uuid.uuid4().hex[:8]
    src = f"rest-check-src-{suffix}"
    sink = f"rest-check-sink-{suffix}"
    topic = args.topic or f"rest-check-{suffix}"
    source_config = {
        "name": src, "type": "heartbeat", "device": f"dev-{suffix}", "topic": topic,
        "interval_ms": 100, "runtime": {"offset_flush_interval_ms": 200},
    }
    sink_config = {
        "name": sink, "type": "file-sink", "topics": [topic],
        "path": args.sink_path or f"/tmp/rest-check-sink-{suffix}.txt",
    }
    with_sink = not args.no_sink

    # -- the worker
    if not c.wait_for("GET /health turns 200", args.wait,
                      lambda: ((s := c.call("get", "/health", {200, 503}, auth=None)[0]) == 200, s)):
        return c
    c.call("get", "/", 200)
    c.call("get", "/metrics", 200)

    # -- plugins and validation
    _, plugins, _ = c.call("get", "/connector-plugins", 200)
    _, all_plugins, _ = c.call("get", "/connector-plugins", 200, params={"connectorsOnly": "false"})
    c.call("get", "/connector-plugins", 200, params={"connectorsOnly": "true"})
    if isinstance(plugins, list) and isinstance(all_plugins, list):
        kinds = {(p.get("class"), p.get("type")) for p in plugins}
        c.expect(("heartbeat", "source") in kinds and ("file-sink", "sink") in kinds,
                 "GET /connector-plugins", f"heartbeat (source) and file-sink (sink) listed: {sorted(kinds)}")
        c.expect(all(p.get("type") in ("source", "sink") for p in plugins),
                 "GET /connector-plugins", "only connectors without connectorsOnly=false")
        c.expect(len(all_plugins) >= len(plugins) and all(p in all_plugins for p in plugins),
                 "GET /connector-plugins?connectorsOnly=false", "a superset of the connectors")
    vpath = "/connector-plugins/heartbeat/config/validate"
    _, v, _ = c.call("put", vpath, 200, body=source_config, what="validate a valid config")
    if isinstance(v, dict):
        c.expect(v.get("error_count") == 0 and v.get("configs") == [], "validate a valid config",
                 f"no problems expected: {v}")
        c.expect(v.get("name") == "heartbeat", "validate a valid config", f"name is the type: {v.get('name')!r}")
    bad = dict(source_config, interval_ms="often", runtime={"offset_flush_interval_ms": 200, "bogus_key": 1})
    _, v, _ = c.call("put", vpath, 200, body=bad, what="validate an invalid config")
    if isinstance(v, dict):
        names = [e.get("value", {}).get("name") for e in v.get("configs", [])]
        c.expect(v.get("error_count", 0) >= 1 and v.get("error_count") == len(v.get("configs", [])),
                 "validate an invalid config", f"error_count = number of problems >= 1: {v}")
        c.expect(any(n and "interval_ms" in n for n in names), "validate an invalid config",
                 f"a problem names the key path interval_ms: {names}")
    c.call("put", "/connector-plugins/no-such-type/config/validate", 404, body=source_config,
           what="validate an unknown type")
    c.call("put", vpath, 400, raw="{not json", what="validate bad JSON")

    # -- creating
    _, before, _ = c.call("get", "/connectors", 200)
    _, info, _ = c.call("post", "/connectors", 201, body={"name": src, "config": source_config})
    if isinstance(info, dict):
        c.expect(info.get("name") == src and info.get("type") == "source", "POST /connectors",
                 f"info names the connector and says source: {info}")
        c.expect(info.get("config", {}).get("device") == source_config["device"], "POST /connectors",
                 "info carries the config")
    c.call("post", "/connectors", 409, body={"name": src, "config": source_config},
           what="POST /connectors an existing name")
    invalid_name = f"rest-check-invalid-{suffix}"
    _, e, _ = c.call("post", "/connectors", 400,
                     body={"name": invalid_name, "config": dict(source_config, name=invalid_name, interval_ms="often")},
                     what="POST /connectors an invalid config")
    if isinstance(e, dict):
        c.expect("interval_ms" in e.get("message", ""), "POST /connectors an invalid config",
                 f"the message names the key path: {e.get('message')!r}")
    c.call("post", "/connectors", 400, raw='{"name": "x", "config": {', what="POST /connectors bad JSON")
    c.call("post", "/connectors", 400, body={"name": invalid_name}, check_request=False,
           what="POST /connectors without config")
    big = {"name": invalid_name, "config": dict(source_config, name=invalid_name, padding="x" * (1100 << 10))}
    c.call("post", "/connectors", 413, body=big, check_request=False, may_close=True,
           what="POST /connectors a body over 1 MiB")
    c.call("get", f"/connectors/{invalid_name}", 404, what="the invalid connector was not created")
    if with_sink:
        _, info, _ = c.call("post", "/connectors", 201, body={"name": sink, "config": sink_config})
        if isinstance(info, dict):
            c.expect(info.get("type") == "sink", "POST /connectors (sink)", f"type sink: {info}")

    # -- reading
    _, names, _ = c.call("get", "/connectors", 200)
    if isinstance(names, list):
        c.expect(src in names and names == sorted(names), "GET /connectors", f"sorted, with {src}: {names}")
        c.expect(all(n in names for n in (before or [])), "GET /connectors", "earlier connectors still there")
    for expand, keys in ((["status"], {"status"}), (["info"], {"info"}), (["status", "info"], {"status", "info"})):
        _, body, _ = c.call("get", "/connectors", 200, params=[("expand", e) for e in expand])
        if isinstance(body, dict):
            entry = body.get(src)
            c.expect(isinstance(entry, dict) and set(entry) == keys, f"GET /connectors?expand={expand}",
                     f"{src} has exactly {sorted(keys)}: {entry}")
    c.call("get", "/connectors", 400, params={"expand": "everything"}, what="GET /connectors?expand=everything")
    c.wait_state(src, "RUNNING", "RUNNING")
    _, info, _ = c.call("get", f"/connectors/{src}", 200)
    _, config, _ = c.call("get", f"/connectors/{src}/config", 200)
    if isinstance(config, dict):
        c.expect(all(config.get(k) == v for k, v in source_config.items()), f"GET /connectors/{src}/config",
                 f"the config as written: {config}")
    _, status, _ = c.call("get", f"/connectors/{src}/status", 200)
    if isinstance(status, dict):
        c.expect(status.get("name") == src and status.get("type") == "source", f"GET /connectors/{src}/status",
                 f"names it, type source: {status}")
    _, tasks, _ = c.call("get", f"/connectors/{src}/tasks", 200)
    if isinstance(tasks, list) and isinstance(info, dict):
        c.expect(len(tasks) == len(info.get("tasks", [])) >= 1, f"GET /connectors/{src}/tasks",
                 f"one entry per task of the info: {tasks}")
        c.expect(all(t.get("id", {}).get("connector") == src for t in tasks), f"GET /connectors/{src}/tasks",
                 "ids name the connector")
    c.call("get", f"/connectors/{src}/tasks/0/status", 200)
    c.call("get", f"/connectors/{src}/tasks/99/status", 404, what="status of a task that does not exist")

    # -- changing the config
    changed = dict(source_config, interval_ms=150)
    c.call("put", f"/connectors/{src}/config", 200, body=changed, what="PUT config (update)")
    _, config, _ = c.call("get", f"/connectors/{src}/config", 200)
    if isinstance(config, dict):
        c.expect(config.get("interval_ms") == 150, "GET config after PUT", f"the new value: {config}")
    nameless = {k: v for k, v in changed.items() if k != "name"}
    c.call("put", f"/connectors/{src}/config", 200, body=nameless, what="PUT config without name")
    _, e, _ = c.call("put", f"/connectors/{src}/config", 400, body=dict(changed, interval_ms="often"),
                     what="PUT config invalid")
    if isinstance(e, dict):
        c.expect("interval_ms" in e.get("message", ""), "PUT config invalid",
                 f"the message names the key path: {e.get('message')!r}")
    c.call("put", f"/connectors/{src}/config", 400, body=dict(changed, name="another-name"),
           what="PUT config with another name")
    c.call("put", f"/connectors/{src}/config", 400, raw="[1, 2", what="PUT config bad JSON")
    _, config, _ = c.call("get", f"/connectors/{src}/config", 200, what="config unchanged by refused PUTs")
    if isinstance(config, dict):
        c.expect(config.get("interval_ms") == 150, "config unchanged by refused PUTs", f"{config}")
    other = f"rest-check-put-{suffix}"
    c.call("put", f"/connectors/{other}/config", 201, body=dict(source_config, name=other),
           what="PUT config (create)")
    c.call("delete", f"/connectors/{other}", 204)
    c.call("get", f"/connectors/{other}", 404, what="deleted connector is gone")
    c.wait_state(src, "RUNNING", "RUNNING")

    # -- pause, resume, restart
    c.call("put", f"/connectors/{src}/pause", 202)
    c.wait_state(src, "PAUSED", "PAUSED")
    c.call("put", f"/connectors/{src}/resume", 202)
    c.wait_state(src, "RUNNING", "RUNNING")
    c.call("post", f"/connectors/{src}/restart", 204)
    c.wait_state(src, "RUNNING", "RUNNING")
    c.call("post", f"/connectors/{src}/restart", 202, params={"includeTasks": "true"})
    c.wait_state(src, "RUNNING", "RUNNING")
    c.call("post", f"/connectors/{src}/restart", 202, params={"includeTasks": "true", "onlyFailed": "true"})
    c.wait_state(src, "RUNNING", "RUNNING")
    c.call("post", f"/connectors/{src}/tasks/0/restart", 204)
    c.call("post", f"/connectors/{src}/tasks/99/restart", 404, what="restart a task that does not exist")
    c.wait_state(src, "RUNNING", "RUNNING")

    # -- offsets (KIP-875)
    found = {}

    def have_offsets(name):
        def fn():
            _, body, _ = c.call("get", f"/connectors/{name}/offsets", 200)
            offsets = body.get("offsets") if isinstance(body, dict) else None
            found[name] = offsets
            return bool(offsets), body
        return fn
    c.wait_for(f"{src} has committed offsets", 30, have_offsets(src))
    if with_sink:
        c.wait_state(sink, "RUNNING", "RUNNING")
        if c.wait_for(f"{sink} has committed offsets", 30, have_offsets(sink)):
            for entry in found[sink]:
                c.expect(set(entry.get("partition", {})) == {"kafka_topic", "kafka_partition"}
                         and set(entry.get("offset") or {}) == {"kafka_offset"},
                         f"GET /connectors/{sink}/offsets", f"a sink's KIP-875 shape: {entry}")
    offsets_body = {"offsets": found.get(src) or []}
    # KIP-875: 400 (not 409, which is for a rebalance in progress), with Kafka Connect's message.
    for method, kwargs in (("patch", {"body": offsets_body}), ("delete", {})):
        what = f"{method.upper()} offsets while RUNNING"
        _, m, _ = c.call(method, f"/connectors/{src}/offsets", 400, what=what, **kwargs)
        if isinstance(m, dict):
            c.expect(str(m.get("message", "")).startswith(
                         "Connectors must be in the STOPPED state before their offsets can be modified"),
                     what, f"Kafka Connect's message: {m}")
    c.call("put", f"/connectors/{src}/stop", 202)
    c.wait_state(src, "STOPPED", None)
    _, info, _ = c.call("get", f"/connectors/{src}", 200, what="info while STOPPED")
    if isinstance(info, dict):
        c.expect(info.get("tasks") == [], "info while STOPPED", f"no tasks: {info.get('tasks')}")
    _, m, _ = c.call("patch", f"/connectors/{src}/offsets", 200, body=offsets_body, what="PATCH offsets while STOPPED")
    if isinstance(m, dict):
        c.expect(m.get("message") == "The offsets for this connector have been altered successfully",
                 "PATCH offsets while STOPPED", f"Kafka Connect's message: {m}")
    c.call("patch", f"/connectors/{src}/offsets", 400, raw='{"offsets": [', what="PATCH offsets bad JSON")
    c.call("patch", f"/connectors/{src}/offsets", 400, body={"offsets": "all of them"}, check_request=False,
           what="PATCH offsets of the wrong shape")
    _, m, _ = c.call("delete", f"/connectors/{src}/offsets", 200, what="DELETE offsets while STOPPED")
    if isinstance(m, dict):
        c.expect(m.get("message") == "The offsets for this connector have been reset successfully",
                 "DELETE offsets while STOPPED", f"Kafka Connect's message: {m}")
    _, body, _ = c.call("get", f"/connectors/{src}/offsets", 200, what="offsets after the reset")
    if isinstance(body, dict):
        c.expect(body.get("offsets") == [], "offsets after the reset", f"none left: {body}")
    c.call("put", f"/connectors/{src}/resume", 202, what="resume a STOPPED connector")
    c.wait_state(src, "RUNNING", "RUNNING")

    # -- a connector that does not exist
    nope = f"rest-check-nope-{suffix}"
    for method, path, kw in [
        ("get", f"/connectors/{nope}", {}),
        ("get", f"/connectors/{nope}/config", {}),
        ("put", f"/connectors/{nope}/config", {"raw": "{not json"}),
        ("get", f"/connectors/{nope}/status", {}),
        ("get", f"/connectors/{nope}/tasks", {}),
        ("get", f"/connectors/{nope}/tasks/0/status", {}),
        ("post", f"/connectors/{nope}/tasks/0/restart", {}),
        ("put", f"/connectors/{nope}/pause", {}),
        ("put", f"/connectors/{nope}/resume", {}),
        ("put", f"/connectors/{nope}/stop", {}),
        ("post", f"/connectors/{nope}/restart", {}),
        ("get", f"/connectors/{nope}/offsets", {}),
        ("patch", f"/connectors/{nope}/offsets", {"body": {"offsets": []}}),
        ("delete", f"/connectors/{nope}/offsets", {}),
        ("delete", f"/connectors/{nope}", {}),
    ]:
        # A PUT config with bad JSON is a 400 before the name matters.
        expect = 400 if "raw" in kw else 404
        c.call(method, path, expect, what=f"{method.upper()} {path} (unknown connector)", **kw)
    c.call("get", "/no-such-path", 404, what="an unknown path")

    # -- methods a path does not have
    for method, path in [
        ("delete", "/"), ("post", "/health"), ("put", "/connectors"), ("patch", f"/connectors/{src}"),
        ("post", f"/connectors/{src}/status"), ("get", f"/connectors/{src}/pause"),
        ("delete", f"/connectors/{src}/restart"), ("get", vpath), ("post", "/metrics"),
        ("put", f"/connectors/{src}/tasks"), ("get", f"/connectors/{src}/tasks/0/restart"),
    ]:
        c.call(method, path, 405, what=f"{method.upper()} {path} (wrong method)")

    # -- the token
    if c.token:
        for method, path in [("get", "/"), ("get", "/connectors"), ("get", f"/connectors/{src}/status"),
                             ("put", f"/connectors/{src}/pause"), ("get", "/metrics"),
                             ("get", "/connector-plugins"), ("delete", f"/connectors/{src}")]:
            c.call(method, path, 401, auth=None, what=f"{method.upper()} {path} without the token")
            c.call(method, path, 401, auth="wrong", what=f"{method.upper()} {path} with a wrong token")
        c.call("get", "/health", {200, 503}, auth=None, what="GET /health needs no token")
        c.wait_state(src, "RUNNING", "RUNNING")
    else:
        print("note: no --token given: the 401 checks are skipped", flush=True)

    # -- metrics name the connector
    _, text, _ = c.call("get", "/metrics", 200, what="GET /metrics with connectors")
    if isinstance(text, str):
        bad_lines = [l for l in text.splitlines()
                     if l and not l.startswith("#") and not re.match(r"^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? \S+( \d+)?$", l)]
        c.expect(not bad_lines, "GET /metrics", f"Prometheus text format; bad lines: {bad_lines[:3]}")
        c.expect(f'"{src}"' in text, "GET /metrics", f"a series labelled with connector {src}")

    # -- cleanup
    c.call("delete", f"/connectors/{src}", 204)
    if with_sink:
        c.call("delete", f"/connectors/{sink}", 204)
    c.call("get", f"/connectors/{src}", 404, what="deleted connector is gone")
    _, names, _ = c.call("get", "/connectors", 200, what="GET /connectors after the deletes")
    if isinstance(names, list):
        c.expect(src not in names and sink not in names, "GET /connectors after the deletes", f"{names}")
    c.call("get", "/health", 200, auth=None, what="GET /health at the end")
    return c


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="the worker's REST API, e.g. http://127.0.0.1:8083")
    p.add_argument("--token", help="the bearer token ([rest] token); enables the 401 checks")
    p.add_argument("--cacert", help="PEM CA file to verify an https worker with")
    p.add_argument("--topic", help="Kafka topic the heartbeat source writes (default: a new one)")
    p.add_argument("--sink-path", help="file on the worker's machine the file-sink writes")
    p.add_argument("--no-sink", action="store_true", help="leave the file-sink connector out")
    p.add_argument("--spec", default=DEFAULT_SPEC, help="the OpenAPI document (default docs/openapi.json)")
    p.add_argument("--wait", type=float, default=30, help="seconds to wait for /health to be 200 first")
    p.add_argument("--request-timeout", type=float, default=60, help="seconds per request")
    p.add_argument("-v", "--verbose", action="store_true", help="print every request and answer")
    args = p.parse_args()
    started = time.monotonic()
    c = run(args)
    took = time.monotonic() - started
    if c.failures:
        print(f"rest-check: {len(c.failures)} of {c.checks} checks FAILED ({took:.1f} s):")
        for f in c.failures:
            print(f"  - {f}")
        sys.exit(1)
    print(f"rest-check: all {c.checks} checks passed ({took:.1f} s)")


if __name__ == "__main__":
    main()
