// The official @fal-ai/client, configured with proxyUrl {when: "always"},
// driving the sidecar's /api/fal/proxy against fakefal: run, subscribe, the
// queue, SSE streaming and storage upload setup.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createFalClient, ApiError } from "@fal-ai/client";
import { startFakefal, startSidecar, binaryBody, waitFor, KEY_ID, KEY_SECRET } from "../lib/harness.mjs";

let fakefal, sidecar, fal;
const seen = []; // every response the client received, to prove the key never leaks

before(async () => {
  fakefal = await startFakefal();
  sidecar = await startSidecar(fakefal, { allowedApps: ["fal-ai/*"] });
  const recording = async (input, init) => {
    const res = await fakefal.fetch(input, init);
    seen.push(
      res
        .clone()
        .text()
        .then((body) => ({ url: String(input), body, headers: JSON.stringify([...res.headers]) })),
    );
    return res;
  };
  fal = createFalClient({
    proxyUrl: { url: sidecar.proxyUrl, when: "always" },
    fetch: recording,
    // A credential in the client must be dropped by the sidecar, never forwarded.
    credentials: "caller-key:caller-secret",
  });
});

after(async () => {
  await sidecar?.stop();
  await fakefal?.stop();
});

test("fal.run: input echoed, request id from x-fal-request-id, the sidecar's key used", async () => {
  const before = (await fakefal.calls("fal.run", "/fal-ai/flux/dev")).length;
  const { data, requestId } = await fal.run("fal-ai/flux/dev", { input: { prompt: "a red fox", seed: 7 } });
  assert.equal(data.prompt, "a red fox");
  assert.equal(data.seed, 7);
  assert.ok(requestId, "requestId comes from the x-fal-request-id header");
  assert.equal(data.request_id, requestId);
  const calls = (await fakefal.calls("fal.run", "/fal-ai/flux/dev")).slice(before);
  assert.equal(calls.length, 1, "exactly one upstream call");
  assert.equal(calls[0].keyID, KEY_ID, "fakefal saw the sidecar's key, not the caller's");
  assert.equal(calls[0].method, "POST");
});

test("fal.run: binary responses arrive byte-exact", async () => {
  const n = 300_000;
  const { data } = await fal.run("fal-ai/flux/dev", { input: { binary_bytes: n } });
  assert.ok(data instanceof ArrayBuffer, `want an ArrayBuffer, got ${Object.prototype.toString.call(data)}`);
  assert.deepEqual(new Uint8Array(data), binaryBody(n));
});

test("fal.subscribe: polls the queue to completion with logs", async () => {
  const updates = [];
  const { data, requestId } = await fal.subscribe("fal-ai/flux/dev", {
    input: { prompt: "subscribe", queue_polls: 2 },
    logs: true,
    pollInterval: 50,
    onQueueUpdate: (u) => updates.push(u.status),
  });
  assert.equal(data.prompt, "subscribe");
  assert.equal(data.request_id, requestId);
  assert.deepEqual(updates, ["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]);
});

test("fal.subscribe (streaming mode): status over SSE through the proxy", async () => {
  const updates = [];
  const { data } = await fal.subscribe("fal-ai/flux/dev", {
    input: { prompt: "streamed status", queue_polls: 2 },
    mode: "streaming",
    onQueueUpdate: (u) => updates.push(u.status),
  });
  assert.equal(data.prompt, "streamed status");
  assert.ok(updates.includes("COMPLETED"), `updates ${updates}`);
  assert.ok((await fakefal.calls("queue.fal.run")).some((c) => c.path.endsWith("/status/stream") && c.status === 200));
});

test("fal.queue: submit, status, result", async () => {
  const sub = await fal.queue.submit("fal-ai/flux/dev", { input: { prompt: "queued", queue_polls: 1 } });
  assert.ok(sub.request_id, "submit answers a request_id");
  for (const k of ["status_url", "response_url", "cancel_url"]) assert.ok(sub[k], `submit answers ${k}`);
  const first = await fal.queue.status("fal-ai/flux/dev", { requestId: sub.request_id, logs: true });
  assert.equal(first.status, "IN_QUEUE");
  const done = await waitFor(
    async () => {
      const s = await fal.queue.status("fal-ai/flux/dev", { requestId: sub.request_id, logs: true });
      return s.status === "COMPLETED" && s;
    },
    5_000,
    "COMPLETED",
  );
  assert.ok(Array.isArray(done.logs), "logs=1 gives a log list");
  const { data, requestId } = await fal.queue.result("fal-ai/flux/dev", { requestId: sub.request_id });
  assert.equal(requestId, sub.request_id);
  assert.equal(data.prompt, "queued");
  // The client drops the sub-path for status/result; the sidecar must allow that.
  const statusCalls = (await fakefal.calls("queue.fal.run", "/fal-ai/flux/requests/")).filter((c) => c.path.includes(sub.request_id));
  assert.ok(statusCalls.length >= 3 && statusCalls.every((c) => c.keyID === KEY_ID));
});

test("fal.queue.submit: webhook query, x-fal-* headers and the client's User-Agent reach fal", async () => {
  const webhookUrl = "https://hooks.example.com/fal?token=a&b=c";
  const sub = await fal.queue.submit("fal-ai/flux/dev", {
    input: { prompt: "hooked" },
    webhookUrl,
    priority: "low",
    hint: "runner-7",
    startTimeout: 30,
  });
  const all = (await fakefal.calls("queue.fal.run", "/fal-ai/flux/dev")).filter((c) => c.method === "POST");
  const submit = all.find((c) => new URLSearchParams(c.query).get("fal_webhook") === webhookUrl);
  assert.ok(submit, `no submit with fal_webhook=${webhookUrl} among ${JSON.stringify(all.map((c) => c.query))}`);
  const h = (name) => submit.header?.[name]?.[0];
  assert.equal(h("X-Fal-Queue-Priority"), "low");
  assert.equal(h("X-Fal-Runner-Hint"), "runner-7");
  assert.equal(h("X-Fal-Request-Timeout"), "30");
  assert.match(h("User-Agent") ?? "", /^@fal-ai\/client\/1\.10\.1/);
  assert.equal(h("X-Fal-Target-Url"), undefined, "the proxy header is not sent on to fal");
  assert.ok(sub.request_id);
});

test("fal.queue.cancel: PUT goes through and the request ends cancelled", async () => {
  const sub = await fal.queue.submit("fal-ai/flux/dev", { input: { queue_polls: 5 } });
  await fal.queue.cancel("fal-ai/flux/dev", { requestId: sub.request_id });
  const calls = await fakefal.calls("queue.fal.run", `/fal-ai/flux/requests/${sub.request_id}/cancel`);
  assert.equal(calls.length, 1);
  assert.equal(calls[0].method, "PUT");
  assert.equal(calls[0].status, 202);
  await assert.rejects(fal.queue.result("fal-ai/flux/dev", { requestId: sub.request_id }), (e) => e instanceof ApiError && e.status === 400);
});

test("fal.stream: SSE events stream through intact", async () => {
  const stream = await fal.stream("fal-ai/flux/dev", { input: { prompt: "sse", num_events: 4, event_delay_ms: 20 } });
  const events = [];
  for await (const ev of stream) events.push(ev);
  const last = await stream.done();
  assert.equal(events.length, 4);
  assert.deepEqual(
    events.map((e) => e.index),
    [0, 1, 2, 3],
  );
  assert.ok(events.every((e) => e.prompt === "sse"));
  assert.equal(last.done, true);
  const call = (await fakefal.calls("fal.run", "/fal-ai/flux/dev/stream")).at(-1);
  assert.equal(call.keyID, KEY_ID);
  // The client sends "application/json, text/event-stream"; the official
  // proxy would force "application/json".
  assert.match(call.header?.["Accept"]?.[0] ?? "", /text\/event-stream/, "the client's Accept is kept");
});

test("fal.storage.upload: initiate through the proxy, PUT straight to the CDN", async () => {
  const bytes = binaryBody(4096);
  const before = (await fakefal.calls("rest.fal.ai", "/storage/upload/initiate")).length;
  const url = await fal.storage.upload(new Blob([bytes], { type: "image/png" }));
  assert.match(url, /^https:\/\/127\.0\.0\.1:\d+\/__cdn\/files\//);
  const initiate = (await fakefal.calls("rest.fal.ai", "/storage/upload/initiate")).slice(before);
  assert.equal(initiate.length, 1, "one initiate call reached fal");
  assert.equal(initiate[0].keyID, KEY_ID);
  assert.equal(initiate[0].query, "storage_type=fal-cdn-v3");
  const res = await fakefal.fetch(url);
  assert.equal(res.status, 200);
  assert.deepEqual(new Uint8Array(await res.arrayBuffer()), bytes);
});

test("storage multipart initiate is allowed (the official proxy 1.2.x refuses it)", async () => {
  // Driven through the same proxy wire protocol the client uses for >90 MB files.
  const res = await fetch(sidecar.proxyUrl, {
    method: "POST",
    headers: {
      "content-type": "application/json",
      "x-fal-target-url": "https://rest.fal.ai/storage/upload/initiate-multipart?storage_type=fal-cdn-v3",
    },
    body: JSON.stringify({ content_type: "application/octet-stream", file_name: "big.bin" }),
  });
  assert.equal(res.status, 200, await res.clone().text());
  const body = await res.json();
  assert.ok(body.upload_url && body.file_url);
});

test("50 POSTed streams and 50 POSTed 200 KB binary answers all arrive complete", async () => {
  // A proxy that races its upstream request-body write against writing the
  // response truncates a few percent of these; one at a time hides that.
  const truncated = { sse: 0, binary: 0 };
  const errors = [];
  for (let i = 0; i < 50; i++) {
    const stream = await fal.stream("fal-ai/flux/dev", { input: { num_events: 4, event_delay_ms: 5, i } });
    let n = 0;
    // on("data") rather than for-await: the client's iterator never ends if
    // the stream failed before iteration began (@fal-ai/client 1.10.1).
    stream.on("data", () => n++);
    try {
      await stream.done();
    } catch (e) {
      errors.push(e.message);
    }
    if (n !== 4) truncated.sse++;
    try {
      const { data } = await fal.run("fal-ai/flux/dev", { input: { binary_bytes: 200_000, i } });
      if (data.byteLength !== 200_000) truncated.binary++;
    } catch (e) {
      truncated.binary++;
      errors.push(e.message);
    }
  }
  assert.deepEqual(truncated, { sse: 0, binary: 0 }, `truncated answers; errors: ${[...new Set(errors)].join("; ")}`);
});

test("the key's secret never reaches the client", async () => {
  // Answers that broke off mid-body are another test's failure, not a leak.
  const all = (await Promise.allSettled(seen)).filter((r) => r.status === "fulfilled").map((r) => r.value);
  assert.ok(all.length > 10, `only ${all.length} responses recorded`);
  for (const r of all) {
    assert.ok(!r.body.includes(KEY_SECRET), `secret in the body from ${r.url}`);
    assert.ok(!r.headers.includes(KEY_SECRET), `secret in the headers from ${r.url}`);
  }
  assert.ok(!sidecar.logs().includes(KEY_SECRET), "secret in the sidecar's logs");
  const calls = await fakefal.calls();
  assert.ok(!calls.some((c) => c.keyID === "caller-key"), "the caller's Authorization was forwarded to fal");
});
