#!/usr/bin/env node
// A plain MQTT -> Kafka bridge in Node.js, a reference the benchmarks compare against.
//
// It is what a careful Node team writes in an afternoon with mqtt.js and kafkajs, the same
// bridge as scripts/mqtt-kafka-bridge.py: subscribe with a persistent session, produce each
// message to one Kafka topic with the MQTT topic as key (acks=all), batched for --linger-ms,
// and acknowledge the MQTT message (PUBACK) only once Kafka has acknowledged its batch, so it
// is at-least-once like ours.
//
//   node scripts/node-bridge/bridge.js --mqtt-host 127.0.0.1 --mqtt-port 1883 \
//       --filter 'plant/#' --kafka 127.0.0.1:9092 --topic telemetry
//
// Needs `npm ci --prefix scripts/node-bridge` (see README.md there).
'use strict';

const { parseArgs } = require('node:util');
const mqtt = require('mqtt');
const { Kafka, logLevel } = require('kafkajs');

const USAGE = `usage: bridge.js --filter FILTER --kafka HOST:PORT[,...] --topic TOPIC
                 [--mqtt-host 127.0.0.1] [--mqtt-port 1883] [--qos 0|1|2]
                 [--client-id node-bridge] [--linger-ms 5]`;

function options() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        'mqtt-host': { type: 'string', default: '127.0.0.1' },
        'mqtt-port': { type: 'string', default: '1883' },
        filter: { type: 'string' },
        qos: { type: 'string', default: '1' },
        kafka: { type: 'string' },
        topic: { type: 'string' },
        'client-id': { type: 'string', default: 'node-bridge' },
        'linger-ms': { type: 'string', default: '5' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    }));
  } catch (e) {
    usage(e.message);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  for (const required of ['filter', 'kafka', 'topic']) {
    if (!values[required]) usage(`--${required} is required`);
  }
  const int = (name, ok) => {
    const n = Number(values[name]);
    if (!Number.isInteger(n) || !ok(n)) usage(`bad --${name}: ${values[name]}`);
    return n;
  };
  return {
    mqttHost: values['mqtt-host'],
    mqttPort: int('mqtt-port', (n) => n > 0 && n < 65536),
    filter: values.filter,
    qos: int('qos', (n) => n >= 0 && n <= 2),
    kafka: values.kafka.split(',').map((s) => s.trim()).filter(Boolean),
    topic: values.topic,
    clientId: values['client-id'],
    lingerMs: int('linger-ms', (n) => n >= 0),
  };
}

function usage(message) {
  console.error(`${USAGE}\nbridge.js: ${message}`);
  process.exit(2);
}

async function main() {
  const args = options();
  let stopping = false;
  const failures = [];

  const fail = (message) => {
    failures.push(message);
    stop();
  };

  // --- shutdown ----------------------------------------------------------------------------
  let resolveStopped;
  const stopped = new Promise((resolve) => (resolveStopped = resolve));
  function stop() {
    if (stopping) return;
    stopping = true;
    resolveStopped();
  }
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  // --- Kafka -------------------------------------------------------------------------------
  const kafka = new Kafka({
    clientId: args.clientId,
    brokers: args.kafka,
    logLevel: logLevel.ERROR,
  });
  const producer = kafka.producer({
    idempotent: false,
    allowAutoTopicCreation: false,
  });

  // Connected before MQTT: a persistent session's backlog arrives right after CONNACK.
  try {
    await producer.connect();
  } catch (err) {
    console.error(`bridge.js: Kafka connect failed: ${describe(err)}`);
    process.exit(1);
  }

  // --- MQTT --------------------------------------------------------------------------------
  // mqtt.js has no manual-ack call like paho's `client.ack(mid)`. Its hook, `handleMessage`,
  // sends the PUBACK when its callback is called, but it also reads the next PUBLISH only then:
  // acknowledging from Kafka's answer through it would produce one message per Kafka round
  // trip. So the callback is called at once, and the PUBACK it sends is held back here instead,
  // until Kafka has acknowledged the record (mqtt.js sends every packet through _sendPacket).
  const client = mqtt.connect({
    host: args.mqttHost,
    port: args.mqttPort,
    protocolVersion: 4,
    clientId: args.clientId,
    clean: false,
    keepalive: 30,
    reconnectPeriod: 1000,
    resubscribe: false,
  });

  // A PUBACK is only valid on the connection its PUBLISH came in on, so the held ones are kept
  // per socket: one whose record is delivered after its socket closed is dropped, and the
  // broker redelivers that message on the next connection. (Not keyed on the 'connect' event:
  // mqtt.js emits it only after resending its own stored packets, when the session's backlog
  // may already be coming in.)
  const held = new WeakMap(); // socket -> ids of the messages whose PUBACK waits for Kafka
  const sendPacket = client._sendPacket.bind(client);
  client._sendPacket = (packet, cb, ...rest) => {
    const ids = held.get(client.stream);
    if (packet.cmd === 'puback' && ids && ids.has(packet.messageId)) {
      if (cb) cb(); // lets mqtt.js read the next PUBLISH
      return;
    }
    sendPacket(packet, cb, ...rest);
  };
  const ack = (stream, messageId) => {
    if (client.stream !== stream || !client.connected) return;
    held.get(stream).delete(messageId);
    sendPacket({ cmd: 'puback', messageId }, undefined);
  };

  client.handleMessage = (packet, callback) => {
    const stream = client.stream;
    if (packet.qos === 1) {
      if (!held.has(stream)) held.set(stream, new Set());
      held.get(stream).add(packet.messageId);
    }
    // Once stopping, a message is neither produced nor acknowledged: the broker redelivers it.
    if (!stopping) {
      enqueue({
        key: packet.topic,
        value: packet.payload,
        // QoS 2 is left to mqtt.js (PUBREC on receipt, PUBCOMP once this returns), as paho
        // does; only QoS 1 acknowledgements wait for Kafka.
        done: packet.qos === 1 ? () => ack(stream, packet.messageId) : null,
      });
    }
    callback();
  };

  // Subscribed on every connect, as the Python bridge does in on_connect.
  client.on('connect', () => {
    client.subscribe(args.filter, { qos: args.qos }, (err, granted) => {
      if (err) return fail(`MQTT subscribe failed: ${err.message}`);
      if (granted && granted.some((g) => g.qos === 128)) {
        fail(`MQTT subscribe to ${args.filter} refused`);
      }
    });
  });
  client.on('error', (err) => {
    // Connect refusals (bad client id, not authorised) are final; socket errors reconnect.
    if (err.code && typeof err.code === 'number') fail(`MQTT connect refused: ${err.message}`);
    else if (!stopping) console.error(`bridge.js: MQTT: ${err.message}`);
  });

  // --- batching ----------------------------------------------------------------------------
  // Messages are collected for linger-ms from the first one (or up to librdkafka's default
  // batch limits: 10,000 messages, 1 MB), then sent as one produce request; several batches
  // may be in flight at once.
  const MAX_BATCH_MESSAGES = 10_000;
  const MAX_BATCH_BYTES = 1_000_000;
  let batch = [];
  let batchBytes = 0;
  let timer = null;
  const inFlight = new Set();

  function enqueue(record) {
    batch.push(record);
    batchBytes += record.key.length + record.value.length;
    if (batch.length >= MAX_BATCH_MESSAGES || batchBytes >= MAX_BATCH_BYTES) flushBatch();
    else if (timer === null) timer = setTimeout(flushBatch, args.lingerMs);
  }

  function flushBatch() {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    if (batch.length === 0) return;
    const records = batch;
    batch = [];
    batchBytes = 0;
    const sending = producer
      .send({
        topic: args.topic,
        acks: -1,
        messages: records.map((r) => ({ key: r.key, value: r.value })),
      })
      .then(
        () => {
          for (const r of records) if (r.done) r.done();
        },
        (err) => {
          // Not acknowledged: the broker redelivers these after a reconnect.
          fail(`Kafka delivery failed: ${describe(err)}`);
        },
      )
      .finally(() => inFlight.delete(sending));
    inFlight.add(sending);
  }

  await stopped;
  // Deliver what was read (and acknowledge it), as the Python bridge flushes.
  if (failures.length === 0) flushBatch();
  else clearTimeout(timer);
  await Promise.race([
    Promise.allSettled([...inFlight]),
    new Promise((resolve) => setTimeout(resolve, 10_000)),
  ]);
  await new Promise((resolve) => client.end(false, {}, resolve));
  await producer.disconnect().catch(() => {});
  for (const f of new Set(failures)) console.error(`bridge.js: ${f}`);
  process.exit(failures.length ? 1 : 0);
}

function describe(err) {
  const parts = [err.name && err.name !== 'Error' ? `${err.name}: ${err.message}` : err.message];
  if (err.type) parts.push(`type=${err.type}`);
  if (err.code !== undefined) parts.push(`code=${err.code}`);
  if (err.cause && err.cause !== err) parts.push(`cause: ${describe(err.cause)}`);
  return parts.join(', ');
}

main().catch((err) => {
  console.error(`bridge.js: ${err.stack || err}`);
  process.exit(1);
});
