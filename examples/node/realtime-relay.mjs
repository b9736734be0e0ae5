// Server-side realtime through the falguard sidecar's relay, with fal's
// official @fal-ai/client and no fal key anywhere in this process.
//
// In a pod annotated falguard.dev/inject, the webhook sets FAL_PROXY_URL,
// FAL_TOKEN_URL and FAL_REALTIME_URL. fal's client opens
// wss://fal.run/<app>/realtime?fal_jwt_token=<jwt> itself; the small
// WebSocket class below sends that socket to the sidecar's relay instead
// (FAL_REALTIME_URL + the same path, token dropped), and the sidecar dials fal
// with a token of its own. The app never holds a key or a token it could leak.
//
//   node realtime-relay.mjs [app] [frames]
//   (defaults: fal-ai/fast-lcm-diffusion, 3 frames)
//
// It prints one JSON line per result and a summary, and exits non-zero if a
// frame gets no answer within 15 seconds.
import { createFalClient } from "@fal-ai/client";
import WS from "ws";

const { FAL_PROXY_URL, FAL_TOKEN_URL, FAL_REALTIME_URL } = process.env;
if (!FAL_PROXY_URL || !FAL_TOKEN_URL || !FAL_REALTIME_URL) {
  console.error(
    "FAL_PROXY_URL, FAL_TOKEN_URL and FAL_REALTIME_URL must be set: the falguard webhook sets them in pods annotated falguard.dev/inject",
  );
  process.exit(2);
}

const app = process.argv[2] || "fal-ai/fast-lcm-diffusion";
const frames = Number(process.argv[3] || 3);

// fal's client uses the global WebSocket (Node 20 has none; Node 22's would do
// just as well as a base class). Only the URL is rewritten.
class RelayWebSocket extends WS {
  constructor(url, protocols, options) {
    const u = new URL(url);
    u.searchParams.delete("fal_jwt_token"); // the relay authenticates upstream with its own token
    const query = u.searchParams.toString();
    super(FAL_REALTIME_URL.replace(/\/+$/, "") + u.pathname + (query ? "?" + query : ""), protocols, options);
    this.binaryType = "arraybuffer"; // what fal's client expects (as in a browser)
  }
}
globalThis.WebSocket = RelayWebSocket;

const fal = createFalClient({ proxyUrl: { url: FAL_PROXY_URL, when: "always" } });

// The client still asks for a token before it connects; the sidecar's token
// route answers from its cache. The relay ignores the token the client sends.
async function tokenProvider(appPath) {
  const res = await fetch(`${FAL_TOKEN_URL}?app=${encodeURIComponent(appPath)}`);
  const body = await res.json();
  if (!res.ok) throw new Error(`token route answered ${res.status} ${body.code}: ${body.message}`);
  return body.token;
}

const results = [];
let failure = null;
const conn = fal.realtime.connect(app, {
  throttleInterval: 0, // send every frame (the default drops bursts)
  tokenProvider,
  onResult: (r) => {
    results.push(r);
    console.log(JSON.stringify({ event: "result", seq: r.seq, requestId: r.request_id, images: (r.images || []).length }));
  },
  onError: (e) => {
    failure = e;
    console.error(JSON.stringify({ event: "error", status: e.status ?? 0, message: String(e.message ?? e) }));
  },
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let code = 0;
for (let seq = 1; seq <= frames && code === 0; seq++) {
  conn.send({ prompt: `a lighthouse at dusk, frame ${seq}`, seq });
  const deadline = Date.now() + 15_000;
  while (results.length < seq && !failure && Date.now() < deadline) await sleep(20);
  if (results.length < seq) code = 1;
}
conn.close();
console.log(JSON.stringify({ event: "summary", app, sent: frames, results: results.length, ok: code === 0 }));
process.exit(code);
