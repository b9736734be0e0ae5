// The app container of the falguard demo and e2e suite: fal's official
// @fal-ai/client, configured only from the env the falguard webhook injected
// (FAL_PROXY_URL, FAL_TOKEN_URL, FAL_REALTIME_URL), never with a key.
//
// The Go harness drives it with one JSON command per line on stdin
// ({"id":1,"op":"run",...}) and reads one JSON object per line on stdout:
// replies ({"id":1,"ok":true,...}) and events ({"event":"..."}). Nothing it
// prints ever holds a token or a key: only their presence and expiry.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const { createFalClient } = require("@fal-ai/client");
const { WebSocket: WS } = require("ws");

const { FAL_PROXY_URL, FAL_TOKEN_URL, FAL_REALTIME_URL } = process.env;

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + "\n");
}

if (!FAL_PROXY_URL || !FAL_TOKEN_URL || !FAL_REALTIME_URL) {
  emit({
    event: "fatal",
    message:
      "FAL_PROXY_URL, FAL_TOKEN_URL and FAL_REALTIME_URL must be set: the falguard webhook injects them into app containers of pods annotated falguard.dev/inject",
  });
  process.exit(2);
}
if (process.env.FAL_KEY || process.env.FAL_KEY_ID) {
  emit({ event: "fatal", message: "the app container must not hold a fal key (FAL_KEY/FAL_KEY_ID is set)" });
  process.exit(2);
}

// WebSocket bookkeeping: how many sockets the official client opened and how
// they ended. A rotation must not add an open or a close.
const sockets = { opened: 0, open: 0, closed: 0, closes: [] };

// The official client opens wss://fal.run/<app>/realtime?fal_jwt_token=<jwt>
// with the global WebSocket and no host option. This shim only rewrites that
// URL to the sidecar's relay (FAL_REALTIME_URL + the same path), dropping the
// token: the relay authenticates upstream with its own.
class RelayWebSocket extends WS {
  constructor(url, protocols, options) {
    const u = new URL(url);
    if (u.hostname !== "fal.run") {
      throw new Error(`unexpected realtime URL host ${u.hostname}: the demo app only relays fal.run`);
    }
    u.searchParams.delete("fal_jwt_token");
    const query = u.searchParams.toString();
    super(FAL_REALTIME_URL.replace(/\/+$/, "") + u.pathname + (query ? "?" + query : ""), protocols, options);
    this.binaryType = "arraybuffer"; // what a browser hands the client
    sockets.opened++;
    this.addEventListener("open", () => {
      sockets.open++;
      emit({ event: "ws-open", path: u.pathname });
    });
    this.addEventListener("close", (e) => {
      if (sockets.open > 0) sockets.open--;
      sockets.closed++;
      sockets.closes.push({ code: e.code, reason: String(e.reason || "") });
      emit({ event: "ws-close", path: u.pathname, code: e.code, reason: String(e.reason || "") });
    });
  }
}
globalThis.WebSocket = RelayWebSocket;

const fal = createFalClient({ proxyUrl: { url: FAL_PROXY_URL, when: "always" } });

function describeError(err) {
  return {
    ok: false,
    status: err?.status ?? 0,
    message: String(err?.message ?? err),
    body: err?.body ?? null,
  };
}

// tokenProvider in the shape fal's docs recommend: the app's own backend
// (here the sidecar) hands out a short-lived JWT for one app.
async function sidecarToken(app) {
  const res = await fetch(`${FAL_TOKEN_URL}?app=${encodeURIComponent(app)}`);
  const text = await res.text();
  if (!res.ok) {
    throw Object.assign(new Error(`token endpoint answered ${res.status}: ${text.slice(0, 300)}`), { status: res.status });
  }
  return JSON.parse(text).token;
}

// A summary of a model result safe to print: keys and sizes, not payloads.
function summarize(data) {
  if (data === null || typeof data !== "object") return data;
  const out = {};
  for (const [k, v] of Object.entries(data)) {
    if (v instanceof Uint8Array) out[k] = `<${v.length} bytes>`;
    else if (typeof v === "string" && v.length > 200) out[k] = v.slice(0, 200) + "…";
    else if (typeof v === "object" && v !== null) out[k] = Array.isArray(v) ? `<array of ${v.length}>` : summarize(v);
    else out[k] = v;
  }
  return out;
}

function findSeq(result) {
  for (const c of [result, result?.input, result?.echo, result?.data]) {
    if (c && typeof c === "object" && typeof c.seq === "number") return c.seq;
  }
  return undefined;
}

// Realtime connections by name.
const conns = new Map();

function openRealtime(name, app, tokenMode) {
  const state = { sent: 0, results: 0, errors: [], seqs: new Set() };
  const handler = {
    connectionKey: `${name}-${process.pid}`,
    throttleInterval: 0, // count every message; the default drops bursts
    onResult: (result) => {
      state.results++;
      const seq = findSeq(result);
      if (seq !== undefined) state.seqs.add(seq);
      emit({ event: "rt-result", conn: name, seq, result: summarize(result) });
    },
    onError: (err) => {
      const e = describeError(err);
      state.errors.push(e);
      emit({ event: "rt-error", conn: name, ...e });
    },
  };
  if (tokenMode === "provider") {
    handler.tokenProvider = sidecarToken;
    handler.tokenExpirationSeconds = 60;
  } else if (tokenMode !== "proxy") {
    throw new Error(`tokenMode must be "provider" (GET FAL_TOKEN_URL) or "proxy" (the client's default token request through FAL_PROXY_URL), got ${tokenMode}`);
  }
  state.conn = fal.realtime.connect(app, handler);
  conns.set(name, state);
  return state;
}

function rtStats(state) {
  return { sent: state.sent, results: state.results, distinct: state.seqs.size, errors: state.errors.slice(0, 20), errorCount: state.errors.length };
}

// Steady traffic through the sidecar while the operator rotates keys: one
// realtime session sending a frame every tick and one proxied model call per tick.
let traffic = null;

async function trafficTick(t) {
  const seq = ++t.seq;
  t.rt.sent++;
  t.rt.conn.send({ prompt: `frame ${seq}`, seq });
  t.proxyInFlight++;
  try {
    await fal.run(t.app, { input: { prompt: `request ${seq}`, seq } });
    t.proxyOK++;
  } catch (err) {
    t.proxyFailed++;
    if (t.proxyErrors.length < 20) t.proxyErrors.push({ seq, ...describeError(err) });
    emit({ event: "proxy-error", seq, ...describeError(err) });
  } finally {
    t.proxyInFlight--;
  }
}

function trafficStats(t) {
  return {
    ticks: t.seq,
    proxyOK: t.proxyOK,
    proxyFailed: t.proxyFailed,
    proxyErrors: t.proxyErrors,
    realtime: rtStats(t.rt),
    sockets: { ...sockets, closes: sockets.closes.slice(-20) },
    // The traffic session's socket opened before sockBase; a reconnect or a
    // drop during the traffic shows up here.
    socketsDuring: {
      opened: sockets.opened - t.sockBase.opened,
      closed: sockets.closed - t.sockBase.closed,
      closes: sockets.closes.slice(t.sockBase.closed),
    },
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const ops = {
  async env() {
    return { proxyUrl: FAL_PROXY_URL, tokenUrl: FAL_TOKEN_URL, realtimeUrl: FAL_REALTIME_URL, hasKey: Boolean(process.env.FAL_KEY) };
  },
  async run({ app, input }) {
    const res = await fal.run(app, { input });
    return { data: summarize(res.data), requestId: res.requestId };
  },
  async subscribe({ app, input }) {
    const updates = [];
    const res = await fal.subscribe(app, { input, pollInterval: 100, onQueueUpdate: (u) => updates.push(u.status) });
    return { data: summarize(res.data), requestId: res.requestId, updates };
  },
  async stream({ app, input }) {
    const stream = await fal.stream(app, { input });
    let events = 0;
    for await (const _ of stream) events++;
    const done = await stream.done();
    return { events, data: summarize(done) };
  },
  async token({ app }) {
    const res = await fetch(`${FAL_TOKEN_URL}?app=${encodeURIComponent(app)}`);
    const text = await res.text();
    let body = null;
    try {
      body = JSON.parse(text);
    } catch {
      /* not JSON: reported below */
    }
    if (!res.ok) return { ok: false, status: res.status, message: body?.message ?? text.slice(0, 300), code: body?.code };
    return {
      status: res.status,
      hasToken: typeof body?.token === "string" && body.token.split(".").length === 3,
      expiresAt: body?.expires_at,
      app: body?.app,
    };
  },
  async "rt-open"({ conn, app, tokenMode = "provider" }) {
    openRealtime(conn, app, tokenMode);
    return {};
  },
  async "rt-send"({ conn, input }) {
    const st = conns.get(conn);
    if (!st) throw new Error(`no realtime connection named ${conn}: open it with rt-open first`);
    st.sent++;
    st.conn.send(input);
    return {};
  },
  async "rt-wait"({ conn, results, timeoutMs = 10000 }) {
    const st = conns.get(conn);
    if (!st) throw new Error(`no realtime connection named ${conn}`);
    const deadline = Date.now() + timeoutMs;
    while (st.results < results && st.errors.length === 0 && Date.now() < deadline) await sleep(20);
    return rtStats(st);
  },
  async "rt-close"({ conn }) {
    const st = conns.get(conn);
    if (!st) throw new Error(`no realtime connection named ${conn}`);
    st.conn.close();
    conns.delete(conn);
    return rtStats(st);
  },
  async "traffic-start"({ app, rtApp, everyMs = 200, tokenMode = "provider" }) {
    if (traffic) throw new Error("traffic already running");
    const t = { app, seq: 0, proxyOK: 0, proxyFailed: 0, proxyErrors: [], proxyInFlight: 0, rt: openRealtime("traffic", rtApp, tokenMode) };
    // The client keeps only the latest message while its socket opens, so
    // open it with one frame and wait for the answer before the steady beat.
    t.rt.sent++;
    t.rt.conn.send({ prompt: "warm-up", seq: 0 });
    const deadline = Date.now() + 15000;
    while (t.rt.results < 1 && t.rt.errors.length === 0 && Date.now() < deadline) await sleep(20);
    if (t.rt.results < 1) {
      t.rt.conn.close();
      conns.delete("traffic");
      throw new Error(`the realtime session did not answer its first frame within 15s (errors: ${JSON.stringify(t.rt.errors)})`);
    }
    // Sockets opened or closed from here on count against the rotation.
    t.sockBase = { opened: sockets.opened, closed: sockets.closed };
    t.timer = setInterval(() => trafficTick(t), everyMs);
    traffic = t;
    return {};
  },
  async "traffic-stats"() {
    if (!traffic) throw new Error("no traffic running");
    return trafficStats(traffic);
  },
  async "traffic-stop"({ settleMs = 5000 }) {
    const t = traffic;
    if (!t) throw new Error("no traffic running");
    clearInterval(t.timer);
    const deadline = Date.now() + settleMs;
    while ((t.proxyInFlight > 0 || t.rt.results < t.rt.sent) && t.rt.errors.length === 0 && Date.now() < deadline) await sleep(20);
    const stats = trafficStats(t);
    t.rt.conn.close();
    conns.delete("traffic");
    traffic = null;
    return stats;
  },
  async sockets() {
    return { ...sockets };
  },
};

process.on("unhandledRejection", (err) => emit({ event: "unhandled", ...describeError(err) }));

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", async (line) => {
  if (!line.trim()) return;
  let msg;
  try {
    msg = JSON.parse(line);
  } catch (err) {
    emit({ event: "bad-command", message: `not JSON: ${err.message}` });
    return;
  }
  const fn = ops[msg.op];
  if (!fn) {
    emit({ id: msg.id, ok: false, message: `unknown op ${msg.op}; known: ${Object.keys(ops).join(", ")}` });
    return;
  }
  try {
    const res = await fn(msg.args ?? {});
    emit({ ok: true, ...res, id: msg.id });
  } catch (err) {
    emit({ ...describeError(err), id: msg.id });
  }
});
rl.on("close", () => process.exit(0));
process.on("SIGTERM", () => process.exit(0));
emit({ event: "ready", pid: process.pid });
