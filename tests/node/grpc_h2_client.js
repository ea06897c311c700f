// An independent gRPC-over-HTTP/2 client for the conformance tests: Node's built-in `http2`
// (nghttp2), no gRPC library. It runs a script of steps read as JSON on stdin and prints what it
// saw as one JSON object on stdout. Messages are protobuf bytes built by the Python test
// (base64), so this file knows gRPC's framing but nothing of the Numaflow protos.
//
//   node tests/node/grpc_h2_client.js < script.json
//
// script: {"socket": "/path/map.sock", "settings": {...http2 settings...},
//          "connectionWindow": 5242880, "steps": [step, ...]}
// steps:  {"op": "open", "call": "a", "path": "/map.v1.Map/MapFn", "timeout": "100m"}
//         {"op": "send", "call": "a", "messages": ["<base64>", ...]}   (one write, many frames)
//             optional "raw": "<base64>": bytes written after the messages as they are (a
//             broken gRPC frame), in the same write
//         {"op": "recv", "call": "a", "count": 3}        wait until the call has 3 messages
//         {"op": "end", "call": "a"}                     half-close the request side
//         {"op": "cancel", "call": "a"}                  RST_STREAM(CANCEL)
//         {"op": "closed", "call": "a"}                  wait until the stream is closed
//         {"op": "ping"}                                 PING, wait for its ACK
//         {"op": "goaway"}                               wait for the server's GOAWAY
//         {"op": "say", "text": "slow-sent"}             print a line on stderr (for the test)
//         {"op": "wait_closed"}                          wait until the server closes the session
// result: {"calls": {"a": {"messages": [...], "headers": {...}, "trailers": {...},
//          "rstCode": 0, "closed": true}}, "pings": 1, "goaway": {"code": 0, "lastStreamID": 1},
//          "remoteSettings": {...}, "sessionClosed": false, "error": null}

"use strict";

const http2 = require("node:http2");
const net = require("node:net");

function readStdin() {
  return new Promise((resolve) => {
    const chunks = [];
    process.stdin.on("data", (c) => chunks.push(c));
    process.stdin.on("end", () => resolve(JSON.parse(Buffer.concat(chunks).toString("utf8"))));
  });
}

function frame(message) {
  const prefix = Buffer.alloc(5);
  prefix.writeUInt8(0, 0);
  prefix.writeUInt32BE(message.length, 1);
  return Buffer.concat([prefix, message]);
}

class Call {
  constructor(stream) {
    this.stream = stream;
    this.buffer = Buffer.alloc(0);
    this.result = { messages: [], headers: null, trailers: null, rstCode: null, closed: false };
    this.waiters = [];
    stream.on("response", (headers) => { this.result.headers = plain(headers); this.wake(); });
    stream.on("trailers", (headers) => { this.result.trailers = plain(headers); this.wake(); });
    stream.on("data", (chunk) => this.onData(chunk));
    stream.on("error", () => {}); // the close event carries rstCode
    stream.on("close", () => {
      this.result.closed = true;
      this.result.rstCode = stream.rstCode;
      this.wake();
    });
  }

  onData(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    while (this.buffer.length >= 5) {
      const size = this.buffer.readUInt32BE(1);
      if (this.buffer.length < 5 + size) break;
      this.result.messages.push(this.buffer.subarray(5, 5 + size).toString("base64"));
      this.buffer = this.buffer.subarray(5 + size);
    }
    this.wake();
  }

  until(predicate) {
    if (predicate()) return Promise.resolve();
    return new Promise((resolve) => this.waiters.push({ predicate, resolve }));
  }

  wake() {
    this.waiters = this.waiters.filter((w) => {
      if (w.predicate()) { w.resolve(); return false; }
      return true;
    });
  }
}

function plain(headers) {
  const out = {};
  for (const [k, v] of Object.entries(headers)) out[k] = String(v);
  return out;
}

async function run(script) {
  const result = { calls: {}, pings: 0, goaway: null, remoteSettings: null,
                   sessionClosed: false, error: null };
  const session = http2.connect("http://[::1]:50051", {
    createConnection: () => net.connect(script.socket),
    settings: script.settings || {},
  });
  let goawayResolve;
  const goaway = new Promise((resolve) => { goawayResolve = resolve; });
  let closedResolve;
  const closed = new Promise((resolve) => { closedResolve = resolve; });
  session.on("goaway", (code, lastStreamID) => {
    result.goaway = { code, lastStreamID };
    goawayResolve();
  });
  session.on("remoteSettings", (s) => { result.remoteSettings = s; });
  session.on("error", (e) => { result.error = result.error || String(e); });
  session.on("close", () => { result.sessionClosed = true; closedResolve(); });
  await new Promise((resolve, reject) => {
    session.once("connect", resolve);
    session.once("error", reject);
  });
  if (script.connectionWindow) session.setLocalWindowSize(script.connectionWindow);
  const calls = {};
  for (const step of script.steps) {
    const call = calls[step.call];
    switch (step.op) {
      case "open": {
        const headers = { ":method": "POST", ":path": step.path,
                          "content-type": "application/grpc", te: "trailers" };
        if (step.timeout) headers["grpc-timeout"] = step.timeout;
        calls[step.call] = new Call(session.request(headers, { endStream: false }));
        result.calls[step.call] = calls[step.call].result;
        break;
      }
      case "send":
        call.stream.write(Buffer.concat([...step.messages.map((m) => frame(Buffer.from(m, "base64"))),
                                         Buffer.from(step.raw || "", "base64")]));
        break;
      case "recv":
        await call.until(() => call.result.messages.length >= step.count || call.result.closed);
        break;
      case "end":
        call.stream.end();
        break;
      case "cancel":
        call.stream.close(http2.constants.NGHTTP2_CANCEL);
        break;
      case "closed":
        await call.until(() => call.result.closed);
        break;
      case "ping":
        await new Promise((resolve, reject) => session.ping((err) => (err ? reject(err) : resolve())));
        result.pings += 1;
        break;
      case "goaway":
        await goaway;
        break;
      case "say":
        process.stderr.write(step.text + "\n");
        break;
      case "wait_closed":
        await closed;
        break;
      default:
        throw new Error(`unknown step ${JSON.stringify(step)}`);
    }
  }
  if (!session.closed && !session.destroyed) session.close();
  return result;
}

readStdin()
  .then(run)
  .then((result) => process.stdout.write(JSON.stringify(result), () => process.exit(0)))
  .catch((err) => { process.stderr.write(`${err.stack || err}\n`); process.exit(1); });
