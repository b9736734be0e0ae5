// The backend of a browser app: it forwards the browser's fal calls to the
// falguard sidecar in its own pod, so fal's client runs in the browser with
// no key and no token route of its own to write.
//
//   POST|GET|PUT /api/fal/proxy     -> FAL_PROXY_URL  (x-fal-target-url kept)
//   GET /api/fal/realtime-token?app -> FAL_TOKEN_URL  (for a tokenProvider)
//
// In the browser:
//   fal.config({ proxyUrl: "/api/fal/proxy" });
//   fal.realtime.connect(app, { tokenProvider: async (app) =>
//     (await (await fetch(`/api/fal/realtime-token?app=${encodeURIComponent(app)}`)).json()).token, ... });
//
// Put your own authentication in front of both routes: anyone who can call
// them can spend your fal credits on the apps the FalCredential allows.
//
//   PORT=3000 node backend.mjs
import http from "node:http";
import { Readable } from "node:stream";

const { FAL_PROXY_URL, FAL_TOKEN_URL } = process.env;
if (!FAL_PROXY_URL || !FAL_TOKEN_URL) {
  console.error("FAL_PROXY_URL and FAL_TOKEN_URL must be set: the falguard webhook sets them in pods annotated falguard.dev/inject");
  process.exit(2);
}
const port = Number(process.env.PORT || 3000);
const host = process.env.HOST || "0.0.0.0"; // the pod IP, so the Service reaches it

// Request headers passed on: the target, fal's own x-fal-* headers and the
// body's type. Cookies, the browser's Authorization and its Origin stay here
// (the sidecar's CORS check is for browsers calling it directly).
function forwardHeaders(req) {
  const out = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.startsWith("x-fal-") || ["content-type", "accept", "user-agent"].includes(name)) out[name] = value;
  }
  return out;
}

async function forward(req, res, url, method) {
  const body = method === "GET" || method === "HEAD" ? undefined : Readable.toWeb(req);
  const upstream = await fetch(url, { method, headers: forwardHeaders(req), body, duplex: "half", redirect: "manual" });
  const headers = {};
  upstream.headers.forEach((v, k) => {
    if (!["connection", "keep-alive", "transfer-encoding", "content-encoding", "content-length"].includes(k)) headers[k] = v;
  });
  res.writeHead(upstream.status, headers); // the sidecar's (and fal's) status, kept as is
  if (upstream.body) for await (const chunk of upstream.body) res.write(chunk); // streams SSE as it comes
  res.end();
}

const server = http.createServer(async (req, res) => {
  try {
    const u = new URL(req.url, "http://backend");
    if (u.pathname === "/api/fal/proxy") return await forward(req, res, FAL_PROXY_URL, req.method);
    if (u.pathname === "/api/fal/realtime-token" && req.method === "GET") {
      return await forward(req, res, `${FAL_TOKEN_URL}?app=${encodeURIComponent(u.searchParams.get("app") || "")}`, "GET");
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ message: "not found" }));
  } catch (err) {
    if (!res.headersSent) res.writeHead(502, { "content-type": "application/json" });
    res.end(JSON.stringify({ message: `cannot reach the falguard sidecar: ${err.message}` }));
  }
});
server.listen(port, host, () => console.log(JSON.stringify({ event: "listening", host, port })));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
