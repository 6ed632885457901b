// A scripted test upstream on @grpc/grpc-js, loading protos/upstream.proto
// at run time with @grpc/proto-loader.
//
// Run: node tests/upstreams/grpcjs/upstream.js --name A [--host H] [--port P] [--not-ready]
// (first `npm ci --prefix tests/upstreams/grpcjs`).
//
// The same behaviour and command line as ../grpclib_upstream.py and
// ../grpcio_upstream.py, on a gRPC implementation in another language: it
// answers the commands of ../script.py, prints `LISTENING <port>` once bound,
// answers `ready` false while started with --not-ready until SIGUSR1, and
// SIGTERM or SIGINT shuts it down (GOAWAY, one second of grace) with exit
// code 0. Lifecycle events are printed as ../script.py's event_line does.
//
// Three more commands, to misbehave the way a real server can:
//
// - `reset`: reset the bidi stream it came on (RST_STREAM INTERNAL_ERROR).
// - `goaway`: send GOAWAY on every connection (server.drain), which are
//   closed after one second; the server keeps accepting new connections.
// - `fail <code> <text>`: end the bidi stream with that gRPC status.
//
// With --acks it acknowledges each request once it has handled it, in a
// message of acks only (pmlb's acknowledgements, see docs/contract.md).
"use strict";

const http2 = require("node:http2");
const path = require("node:path");
const { parseArgs } = require("node:util");

const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO = path.resolve(__dirname, "..", "..", "..", "protos", "upstream.proto");
const BROADCASTS = { all: 0, active: 1, inactive: 2 };
const GRACE_MS = 1000;

const { values: args } = parseArgs({
  options: {
    name: { type: "string" },
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "0" },
    "not-ready": { type: "boolean", default: false },
    acks: { type: "boolean", default: false },
  },
  strict: true,
});
if (!args.name) {
  process.stderr.write("--name is required\n");
  process.exit(2);
}

const definition = protoLoader.loadSync(PROTO, {
  keepCase: true,
  enums: String,
  defaults: true,
  oneofs: true,
});
const service =
  grpc.loadPackageDefinition(definition).upstream.grpc.service.UpstreamPeerService.service;

let isReady = !args["not-ready"];
const server = new grpc.Server();
let address = null;

function now() {
  return new Date().toISOString();
}

// Buffer.split(" ", maxsplit) as Python's bytes.split(b" ", 2): at most three parts.
function splitWords(line) {
  const words = [];
  let start = 0;
  while (words.length < 2) {
    const space = line.indexOf(0x20, start);
    if (space < 0) break;
    words.push(line.subarray(start, space));
    start = space + 1;
  }
  words.push(line.subarray(start));
  return words;
}

// What ../script.py's respond() answers: a list of OutputStreamRequest.
function respond(name, clientUuid, payload, time, attempt) {
  const line =
    payload.length && payload[payload.length - 1] === 0x0d ? payload.subarray(0, -1) : payload;
  const text = line.toString("utf8");
  const toClient = (uuid, bytes) => ({ time: now(), client_uuid: uuid, payload: bytes });
  if (text === "time") return [toClient(clientUuid, Buffer.from(time, "utf8"))];
  if (text === "whoami") return [toClient(clientUuid, Buffer.from(clientUuid, "utf8"))];
  const words = splitWords(line);
  const command = words[0].toString("utf8");
  if (command === "to" && words.length === 3 && words[1].length) {
    return [toClient(words[1].toString("utf8"), words[2])];
  }
  if (command === "bcast" && words.length === 3) {
    const target = words[1].toString("utf8");
    if (Object.hasOwn(BROADCASTS, target)) {
      return [{ time: now(), broadcast: BROADCASTS[target], payload: words[2] }];
    }
  }
  if (command === "silent") return [];
  if (command === "attempt" && words.length >= 2) {
    const text = line.subarray(line.indexOf(0x20) + 1);
    const reply = Buffer.concat([Buffer.from(name + ":", "utf8"), text, Buffer.from(":" + attempt, "utf8")]);
    return [toClient(clientUuid, reply)];
  }
  if (command === "multi" && words.length === 3 && words[1].length) {
    const uuids = words[1].toString("utf8").split(",");
    return [{ time: now(), multicast: { client_uuids: uuids }, payload: words[2] }];
  }
  if (command === "kick" && words.length === 2 && words[1].length) {
    const uuids = words[1].toString("utf8").split(",");
    const target = uuids.length === 1 ? { client_uuid: uuids[0] } : { multicast: { client_uuids: uuids } };
    return [{ time: now(), ...target, payload: Buffer.alloc(0), action: 1 }];
  }
  return [toClient(clientUuid, Buffer.concat([Buffer.from(name + ":", "utf8"), payload]))];
}

function eventLine(request) {
  if (request.event === "EVENT_CONNECTED") {
    const { client_uuid, remote_address, listener, transport } = request;
    return `EVENT connected ${client_uuid} ${remote_address} ${listener} ${transport}`;
  }
  const { client_uuid, disconnect_reason, disconnect_detail } = request;
  return `EVENT disconnected ${client_uuid} ${disconnect_reason} ${disconnect_detail}`;
}

// grpc-js has no public call to reset a stream from a handler: find the
// HTTP/2 stream under the call (the versions in package-lock.json keep it as
// `.stream` on the innermost call) and close it with an error code.
function resetStream(call) {
  let inner = call.call;
  while (inner && !inner.stream) inner = inner.nextCall;
  if (!inner) throw new Error("no HTTP/2 stream found under the call: grpc-js changed");
  inner.stream.close(http2.constants.NGHTTP2_INTERNAL_ERROR);
}

function bidirectionalStreaming(call) {
  // Handled: acknowledged alone, after the replies.
  const ack = (request) => {
    if (args.acks && String(request.seq) !== "0") call.write({ acks: [request.seq] });
  };
  call.on("data", (request) => {
    if (request.event !== "EVENT_MESSAGE") {
      console.log(eventLine(request));
      ack(request);
      return;
    }
    const words = splitWords(request.payload);
    const command = request.payload.toString("utf8");
    if (command === "reset") {
      resetStream(call);
      return;
    }
    if (command === "goaway") {
      server.drain(address, GRACE_MS);
      return;
    }
    if (words[0].toString("utf8") === "fail" && words.length === 3) {
      call.emit("error", { code: Number(words[1].toString("utf8")), details: words[2].toString("utf8") });
      return;
    }
    const attempt = request.delivery_attempt;
    for (const reply of respond(args.name, request.client_uuid, request.payload, request.time, attempt)) {
      call.write(reply);
    }
    ack(request);
  });
  call.on("end", () => call.end());
  call.on("error", () => {});
}

function ready(_call, callback) {
  callback(null, { time: now(), ready: isReady });
}

function live(call) {
  call.on("data", () => call.write({ time: now(), live: true }));
  call.on("end", () => call.end());
  call.on("error", () => {});
}

server.addService(service, { bidirectionalStreaming, ready, live });

function shutdown() {
  // GOAWAY now, then the connections that remain are closed after the grace.
  const force = setTimeout(() => {
    server.forceShutdown();
    process.exit(0);
  }, GRACE_MS);
  force.unref();
  server.tryShutdown(() => process.exit(0));
}

process.on("SIGUSR1", () => {
  isReady = true;
});
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);

const host = args.host.includes(":") ? `[${args.host}]` : args.host;
server.bindAsync(`${host}:${args.port}`, grpc.ServerCredentials.createInsecure(), (error, port) => {
  if (error) {
    process.stderr.write(`cannot bind ${host}:${args.port}: ${error.message}\n`);
    process.exit(1);
  }
  address = `${host}:${port}`;
  console.log(`LISTENING ${port}`);
});
