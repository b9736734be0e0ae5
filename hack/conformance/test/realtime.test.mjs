// fal.realtime.connect with the official client, three ways:
//  (a) token through the sidecar's proxy (proxyUrl {when: "always"}), socket
//      straight to fakefal;
//  (b) tokenProvider against the sidecar's /api/fal/token, socket straight to
//      fakefal;
//  (c) the socket through the sidecar's relay ws://127.0.0.1:PORT/realtime/<app>
//      via a WebSocket shim that only rewrites the URL (no token in the app).
import { test, before, after, afterEach } from "node:test";
import assert from "node:assert/strict";
import { createFalClient } from "@fal-ai/client";
import WS from "ws";
import { startFakefal, startSidecar, webSocketShim, fetchTrusting, waitFor, KEY_ID } from "../lib/harness.mjs";

const APP = "fal-ai/fast-lcm-diffusion";
let fakefal, sidecar;

before(async () => {
  fakefal = await startFakefal();
  sidecar = await startSidecar(fakefal, { allowedApps: ["fal-ai/fast-lcm-diffusion", "fal-ai/flux/*"] });
});

after(async () => {
  await sidecar?.stop();
  await fakefal?.stop();
});

afterEach(async () => {
  await fakefal.clearFaults();
});

/** Socket straight to fakefal: wss://fal.run/... -> wss://127.0.0.1:N/... trusting its CA. */
function directToFakefal(seen) {
  const base = fakefal.url("fal.run").replace(/^https:/, "wss:");
  return webSocketShim((u) => u.replace(/^wss:\/\/fal\.run/, base), { ca: fakefal.ca }, seen);
}

/** Socket through the relay: wss://fal.run/<app path> -> ws://127.0.0.1:P/realtime/<app path>. */
function throughRelay(seen) {
  return webSocketShim((u) => u.replace(/^wss:\/\/fal\.run/, sidecar.relayUrl), {}, seen);
}

/**
 * session connects, sends each message after the previous answer, and
 * collects results and errors. wantResults 0 means: wait for an error.
 */
async function session(fal, app, messages, connectOpts = {}, wantResults = messages.length) {
  const results = [];
  const errors = [];
  const conn = fal.realtime.connect(app, {
    throttleInterval: 0,
    onResult: (r) => results.push(r),
    onError: (e) => errors.push(e),
    ...connectOpts,
  });
  try {
    for (const [i, m] of messages.entries()) {
      conn.send(m);
      if (wantResults > 0) await waitFor(() => results.length > i || errors.length > 0, 10_000, `result ${i + 1}`);
    }
    if (wantResults === 0) await waitFor(() => errors.length > 0, 10_000, "an error");
  } finally {
    conn.close();
  }
  return { results, errors };
}

function assertImageResult(r, prompt) {
  assert.equal(r.prompt, prompt);
  assert.ok(typeof r.request_id === "string" && r.request_id.length > 0, "result has a request_id");
  const img = r.images?.[0]?.content;
  assert.ok(img instanceof Uint8Array, "msgpack image bytes arrive as Uint8Array");
  assert.deepEqual([...img.slice(0, 2)], [0xff, 0xd8], "JPEG-shaped bytes intact");
}

test("(a) token through the proxy, socket straight to fal", async () => {
  const seen = [];
  globalThis.WebSocket = directToFakefal(seen);
  const fal = createFalClient({ proxyUrl: { url: sidecar.proxyUrl, when: "always" } });
  const tokensBefore = (await fakefal.calls("rest.fal.ai", "/tokens/")).length;
  const { results, errors } = await session(fal, APP, [{ prompt: "one" }, { prompt: "two" }]);
  assert.deepEqual(errors, []);
  assert.equal(results.length, 2);
  assertImageResult(results[0], "one");
  assertImageResult(results[1], "two");
  assert.match(seen[0], /\/fal-ai\/fast-lcm-diffusion\/realtime\?fal_jwt_token=[\w-]+\.[\w-]+\.[\w-]+/);
  const tokenCalls = (await fakefal.calls("rest.fal.ai", "/tokens/")).slice(tokensBefore);
  assert.ok(tokenCalls.length <= 1, "at most one token minted upstream");
  assert.ok(tokenCalls.every((c) => c.keyID === KEY_ID));
  const ws = (await fakefal.calls("fal.run", "/fal-ai/fast-lcm-diffusion/realtime")).at(-1);
  assert.equal(ws.status, 101);
  assert.equal(ws.keyID, KEY_ID, "the socket's JWT was minted with the sidecar's key");
});

test("(b) tokenProvider against /api/fal/token, socket straight to fal", async () => {
  const seen = [];
  globalThis.WebSocket = directToFakefal(seen);
  const asked = [];
  const tokenProvider = async (app) => {
    asked.push(app);
    const res = await fetch(`${sidecar.url}/api/fal/token?app=${encodeURIComponent(app)}`);
    assert.equal(res.status, 200, await res.clone().text());
    const body = await res.json();
    assert.equal(typeof body.token, "string");
    assert.ok(body.expires_at, "expires_at in the tokenProvider shape");
    assert.ok(body.app, "app in the tokenProvider shape");
    return body.token;
  };
  const fal = createFalClient({});
  const { results, errors } = await session(fal, APP, [{ prompt: "provided" }], { tokenProvider, tokenExpirationSeconds: 120 });
  assert.deepEqual(errors, []);
  assertImageResult(results[0], "provided");
  assert.deepEqual(asked, [`${APP}/realtime`], "the client asks for the app with its realtime path");
});

test("(b) many concurrent /api/fal/token callers share one upstream token call", async () => {
  const before = (await fakefal.calls("rest.fal.ai", "/tokens/")).length;
  const app = "fal-ai/flux/schnell";
  const answers = await Promise.all(
    Array.from({ length: 50 }, () => fetch(`${sidecar.url}/api/fal/token?app=${encodeURIComponent(app)}`).then((r) => r.json())),
  );
  assert.equal(new Set(answers.map((a) => a.token)).size, 1, "one token for everyone");
  const after = (await fakefal.calls("rest.fal.ai", "/tokens/")).length;
  assert.equal(after - before, 1, "one upstream /tokens/ call");
});

test("(b) /api/fal/token refuses an app outside the policy", async () => {
  const res = await fetch(`${sidecar.url}/api/fal/token?app=${encodeURIComponent("fal-ai/not-allowed")}`);
  assert.ok(res.status >= 400 && res.status < 500, `status ${res.status}`);
  assert.equal(typeof (await res.json()).message, "string");
});

test("(b) client-mode streaming with a tokenProvider token, straight to fal", async () => {
  // connectionMode "client" fetches https://fal.run/<app>/stream?fal_jwt_token= directly.
  const direct = (u) => u.replace(/^https:\/\/fal\.run/, fakefal.url("fal.run"));
  const fal = createFalClient({ fetch: fetchTrusting(fakefal.ca, direct) });
  const tokenProvider = async (app) => (await (await fetch(`${sidecar.url}/api/fal/token?app=${encodeURIComponent(app)}`)).json()).token;
  const stream = await fal.stream("fal-ai/flux/dev", { input: { num_events: 2 }, connectionMode: "client", tokenProvider });
  const events = [];
  for await (const ev of stream) events.push(ev);
  assert.equal(events.length, 2);
  assert.equal((await fakefal.calls("fal.run", "/fal-ai/flux/dev/stream")).at(-1).keyID, KEY_ID);
});

test("(c) through the relay: msgpack frames both ways, no token in the app", async () => {
  const seen = [];
  globalThis.WebSocket = throughRelay(seen);
  const fal = createFalClient({});
  // The client insists on a token before it dials; the relay ignores it.
  const tokenProvider = async () => "app-holds-no-token";
  const { results, errors } = await session(fal, APP, [{ prompt: "relayed" }, { prompt: "again" }], { tokenProvider });
  assert.deepEqual(errors, []);
  assert.equal(results.length, 2);
  assertImageResult(results[0], "relayed");
  assertImageResult(results[1], "again");
  assert.ok(seen[0].startsWith(sidecar.relayUrl + "/fal-ai/fast-lcm-diffusion/realtime"), seen[0]);
  const ws = (await fakefal.calls("fal.run", "/fal-ai/fast-lcm-diffusion/realtime")).at(-1);
  assert.equal(ws.status, 101);
  assert.equal(ws.keyID, KEY_ID, "the relay dialled fal with a token minted by the sidecar's key");
  assert.ok(!ws.query.includes("app-holds-no-token"), "the app's token is not forwarded");
});

test("(c) through the relay: text (JSON) frames pass", async () => {
  globalThis.WebSocket = throughRelay([]);
  const fal = createFalClient({});
  const { results, errors } = await session(fal, APP, [{ prompt: "as json" }], {
    tokenProvider: async () => "unused",
    encodeMessage: (m) => JSON.stringify(m),
  });
  assert.deepEqual(errors, []);
  assert.equal(results[0].prompt, "as json");
  assert.match(results[0].images[0].url, /^data:image\/jpeg;base64,/);
});

test("(c) through the relay: x-fal-error frames reach onError", async () => {
  globalThis.WebSocket = throughRelay([]);
  const fal = createFalClient({});
  const { errors } = await session(fal, APP, [{ error_code: "BAD_INPUT" }], { tokenProvider: async () => "unused" }, 0);
  assert.equal(errors[0].status, 400);
  assert.match(errors[0].message, /^BAD_INPUT: /);
});

test("(c) through the relay: fal's close code and reason reach the app", async () => {
  await fakefal.setFault({ host: "fal.run", pathPrefix: "/fal-ai/fast-lcm-diffusion", closeAfterMessages: 1, closeCode: 4003, closeReason: "model went away" });
  globalThis.WebSocket = throughRelay([]);
  const fal = createFalClient({});
  const results = [];
  const errors = [];
  const conn = fal.realtime.connect(APP, {
    throttleInterval: 0,
    tokenProvider: async () => "unused",
    onResult: (r) => results.push(r),
    onError: (e) => errors.push(e),
  });
  try {
    conn.send({ prompt: "then close" });
    await waitFor(() => errors.length > 0, 10_000, "the close to reach onError");
  } finally {
    conn.close();
  }
  assert.equal(results.length, 1);
  assert.equal(errors[0].status, 4003);
  assert.match(errors[0].message, /model went away/);
});

test("(c) through the relay: an app outside the policy is refused", async () => {
  globalThis.WebSocket = throughRelay([]);
  const fal = createFalClient({});
  const before = (await fakefal.calls("fal.run", "/fal-ai/not-allowed")).length;
  const { errors, results } = await session(fal, "fal-ai/not-allowed", [{ prompt: "x" }], { tokenProvider: async () => "unused" }, 0);
  assert.equal(results.length, 0);
  assert.ok(errors.length > 0);
  assert.equal((await fakefal.calls("fal.run", "/fal-ai/not-allowed")).length, before, "fal was never dialled");
});

test("(c) through the relay with a plain ws client: ping/pong and a 1 MiB msgpack frame byte-exact", async () => {
  const { encode, decode } = await import("@msgpack/msgpack");
  const sock = new WS(`${sidecar.relayUrl}/${APP}`);
  try {
    await new Promise((resolve, reject) => {
      sock.once("open", resolve);
      sock.once("error", reject);
    });
    const pong = new Promise((resolve) => sock.once("pong", (d) => resolve(d.toString())));
    sock.ping("are-you-there");
    assert.equal(await withTimeout(pong, 5_000, "pong"), "are-you-there");

    const payload = new Uint8Array(1 << 20);
    for (let i = 0; i < payload.length; i++) payload[i] = (i * 7 + 3) & 0xff;
    const answer = new Promise((resolve) => sock.once("message", (data, isBinary) => resolve({ data, isBinary })));
    sock.send(encode({ prompt: "big", image: payload, request_id: "rid-1" }));
    const { data, isBinary } = await withTimeout(answer, 10_000, "the echo");
    assert.equal(isBinary, true, "binary in, binary out");
    const out = decode(data);
    assert.equal(out.request_id, "rid-1");
    assert.ok(Buffer.from(out.image).equals(Buffer.from(payload)), "1 MiB of bytes intact both ways");
  } finally {
    sock.close(1000);
  }
});

test("(c) through the relay: SIGTERM closes open relays with 1001 for the app", async () => {
  const own = await startSidecar(fakefal, { allowedApps: [APP] });
  let stopped;
  try {
    globalThis.WebSocket = webSocketShim((u) => u.replace(/^wss:\/\/fal\.run/, own.relayUrl));
    const fal = createFalClient({});
    const results = [];
    const errors = [];
    const conn = fal.realtime.connect(APP, {
      throttleInterval: 0,
      tokenProvider: async () => "unused",
      onResult: (r) => results.push(r),
      onError: (e) => errors.push(e),
    });
    conn.send({ prompt: "before shutdown" });
    await waitFor(() => results.length > 0 || errors.length > 0, 10_000, "a result");
    assert.deepEqual(errors, []);
    stopped = own.stop();
    await waitFor(() => errors.length > 0, 15_000, "the relay to close");
    assert.equal(errors[0].status, 1001, `got ${errors[0].status}: ${errors[0].message}`);
    conn.close();
  } finally {
    await (stopped ?? own.stop());
  }
});

function withTimeout(p, ms, what) {
  let t;
  return Promise.race([p, new Promise((_, reject) => (t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms)))]).finally(() =>
    clearTimeout(t),
  );
}
