// fal's official client on the server, through the falguard sidecar's proxy:
// proxyUrl with when: "always" sends every call (queue submit, status polls,
// result) to FAL_PROXY_URL with the real fal URL in x-fal-target-url. The
// sidecar adds the key; this process never has one.
//
//   node queue.mjs [app] [prompt]
//   (defaults: fal-ai/flux/dev, "a lighthouse at dusk")
import { createFalClient } from "@fal-ai/client";

const { FAL_PROXY_URL } = process.env;
if (!FAL_PROXY_URL) {
  console.error("FAL_PROXY_URL must be set: the falguard webhook sets it in pods annotated falguard.dev/inject");
  process.exit(2);
}

const app = process.argv[2] || "fal-ai/flux/dev";
const prompt = process.argv[3] || "a lighthouse at dusk";
const fal = createFalClient({ proxyUrl: { url: FAL_PROXY_URL, when: "always" } });

try {
  const result = await fal.subscribe(app, {
    input: { prompt },
    pollInterval: 100,
    onQueueUpdate: (u) => console.log(JSON.stringify({ event: "queue", status: u.status })),
  });
  console.log(JSON.stringify({ event: "result", requestId: result.requestId, prompt: result.data.prompt }));
} catch (err) {
  // Errors from the sidecar itself carry {message, code} in err.body; errors
  // from fal keep fal's status and body.
  console.error(JSON.stringify({ event: "error", status: err.status ?? 0, code: err.body?.code, message: String(err.message ?? err) }));
  process.exit(1);
}
