// Test harness: starts fakefal (the local stand-in for fal) and the real
// falguard-sidecar binary against it, and gives tests the pieces they need to
// point the official @fal-ai/client at them: a fetch that trusts fakefal's CA
// and a WebSocket shim that only rewrites URLs.
import { spawn } from "node:child_process";
import { readFile, mkdtemp, rm } from "node:fs/promises";
import https from "node:https";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import WS from "ws";

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, "..", "..", "..");
const binDir = process.env.FALGUARD_BIN_DIR || path.join(repoRoot, "bin");

// The key the sidecar holds. The suite checks its secret half never reaches
// the client.
export const KEY_ID = "conformance-key";
export const KEY_SECRET = "s3cr3t-conformance-0123456789abcdef";
export const FAL_KEY = `${KEY_ID}:${KEY_SECRET}`;

// The fal client must never hold a credential of its own in these tests.
for (const v of ["FAL_KEY", "FAL_KEY_ID", "FAL_KEY_SECRET"]) delete process.env[v];

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** waitFor polls cond every 20 ms until it is truthy or timeoutMs passes. */
export async function waitFor(cond, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Child process with captured output and a bounded stop. */
function startProcess(bin, args, env) {
  const child = spawn(bin, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  // Never leave a fakefal or sidecar behind, even when the test process dies
  // of an uncaught error.
  const reap = () => child.kill("SIGKILL");
  process.once("exit", reap);
  child.once("exit", () => process.removeListener("exit", reap));
  const out = { text: "", spawnError: null };
  child.stdout.on("data", (d) => (out.text += d));
  child.stderr.on("data", (d) => (out.text += d));
  const exited = new Promise((resolve) => {
    child.on("exit", (code, signal) => resolve({ code, signal }));
    child.on("error", (err) => {
      out.spawnError = err;
      resolve({ code: -1, signal: null, err });
    });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return exited;
    child.kill("SIGTERM");
    let timer;
    const res = await Promise.race([exited, new Promise((r) => (timer = setTimeout(() => r(null), 10_000)))]);
    clearTimeout(timer);
    if (res === null) {
      child.kill("SIGKILL");
      return exited;
    }
    return res;
  };
  return { child, out, exited, stop };
}

/**
 * fetchTrusting returns a fetch that trusts ca for https URLs (fakefal's
 * listeners) and uses the global fetch for everything else (the sidecar).
 * rewrite may map a URL to another before the request.
 */
export function fetchTrusting(ca, rewrite = (u) => u) {
  return async function fetchWithCA(input, init = {}) {
    const url = new URL(rewrite(typeof input === "string" || input instanceof URL ? String(input) : input.url));
    if (url.protocol !== "https:") return fetch(url, init);
    let body = null;
    if (init.body != null) body = Buffer.from(await new Response(init.body).arrayBuffer());
    const headers = Object.fromEntries(new Headers(init.headers || {}));
    return new Promise((resolve, reject) => {
      const req = https.request(url, { method: init.method || "GET", headers, ca, signal: init.signal }, (res) => {
        const h = new Headers();
        for (const [k, v] of Object.entries(res.headers)) {
          if (Array.isArray(v)) v.forEach((x) => h.append(k, x));
          else if (v != null) h.set(k, String(v));
        }
        // Streamed, so SSE works through it.
        const stream = new ReadableStream({
          start(controller) {
            res.on("data", (c) => controller.enqueue(new Uint8Array(c)));
            res.on("end", () => controller.close());
            res.on("error", (e) => controller.error(e));
          },
        });
        const noBody = [101, 204, 205, 304].includes(res.statusCode) || (init.method || "GET") === "HEAD";
        resolve(new Response(noBody ? null : stream, { status: res.statusCode, statusText: res.statusMessage, headers: h }));
      });
      req.on("error", reject);
      if (body) req.write(body);
      req.end();
    });
  };
}

/**
 * webSocketShim returns a WebSocket class (the `ws` package's, which the fal
 * client uses like the browser's) that only rewrites the URL; options carry
 * e.g. the CA to trust. seen collects the URLs actually dialled.
 */
export function webSocketShim(rewrite, options = {}, seen = []) {
  return class ShimWebSocket extends WS {
    constructor(url, protocols) {
      const to = rewrite(String(url));
      seen.push(to);
      super(to, protocols, options);
    }
  };
}

/** The deterministic body fakefal answers for binary_bytes: n (fakefal.BinaryBody). */
export function binaryBody(n) {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 131 + Math.floor(i / 256)) & 0xff;
  return b;
}

/** startFakefal runs the fakefal command with the sidecar's key. */
export async function startFakefal() {
  const dir = await mkdtemp(path.join(os.tmpdir(), "falguard-conformance-"));
  const stateFile = path.join(dir, "state.json");
  const bin = path.join(binDir, "fakefal");
  const proc = startProcess(bin, ["--key", FAL_KEY, "--state-file", stateFile], {});
  const state = await waitFor(
    async () => {
      if (proc.out.spawnError) throw new Error(`cannot run ${bin} (${proc.out.spawnError.code}): build it with 'make test-conformance' or set FALGUARD_BIN_DIR`);
      if (proc.child.exitCode !== null) throw new Error(`fakefal (${bin}) exited: ${proc.out.text}`);
      try {
        return JSON.parse(await readFile(stateFile, "utf8"));
      } catch {
        return null;
      }
    },
    15_000,
    "fakefal's state file",
  );
  const ca = await readFile(state.caFile);
  const control = async (method, p, body) => {
    const res = await fetch(state.control + p, {
      method,
      headers: body ? { "content-type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    if (!res.ok) throw new Error(`fakefal control ${method} ${p}: ${res.status} ${await res.text()}`);
    return res.status === 204 ? null : res.json();
  };
  return {
    state,
    ca,
    url: (host) => state.urls[host],
    fetch: fetchTrusting(ca),
    calls: (host = "", pathPrefix = "") =>
      control("GET", `/calls?host=${encodeURIComponent(host)}&pathPrefix=${encodeURIComponent(pathPrefix)}`),
    setFault: (f) => control("POST", "/faults", f),
    clearFaults: () => control("DELETE", "/faults"),
    control,
    async stop() {
      await proc.stop();
      await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * startSidecar runs the real falguard-sidecar in standalone mode against
 * fakefal and waits for /startupz.
 */
export async function startSidecar(fakefal, { allowedApps = ["fal-ai/*"], extraArgs = [] } = {}) {
  const [port, opsPort] = [await freePort(), await freePort()];
  const bin = path.join(binDir, "falguard-sidecar");
  const args = ["run", "--listen", `127.0.0.1:${port}`, "--ops-listen", `127.0.0.1:${opsPort}`, "--key-env", "FAL_KEY"];
  for (const a of allowedApps) args.push("--allowed-app", a);
  for (const o of fakefal.state.overrides) args.push("--upstream-override", o);
  // No lingering on SIGTERM: each test file stops its sidecar in after().
  args.push("--upstream-ca-file", fakefal.state.caFile, "--min-shutdown-delay", "0s", "--max-shutdown-delay", "2s", ...extraArgs);
  const proc = startProcess(bin, args, { FAL_KEY });
  const base = `http://127.0.0.1:${port}`;
  const ops = `http://127.0.0.1:${opsPort}`;
  await waitFor(
    async () => {
      if (proc.out.spawnError) throw new Error(`cannot run ${bin} (${proc.out.spawnError.code}): build it with 'make test-conformance' or set FALGUARD_BIN_DIR`);
      if (proc.child.exitCode !== null) throw new Error(`falguard-sidecar (${bin}) exited ${proc.child.exitCode}: ${proc.out.text}`);
      try {
        return (await fetch(ops + "/startupz")).status === 200;
      } catch {
        return false;
      }
    },
    20_000,
    "the sidecar's /startupz",
  );
  return {
    url: base,
    ops,
    proxyUrl: base + "/api/fal/proxy",
    relayUrl: `ws://127.0.0.1:${port}/realtime`,
    logs: () => proc.out.text,
    stop: () => proc.stop(),
  };
}
