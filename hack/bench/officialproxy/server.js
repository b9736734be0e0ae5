// Runs fal's official @fal-ai/server-proxy (Express adapter) as a benchmark
// peer, unchanged: the only set-up is what a user would do to point it at a
// test double. fal's host names resolve to 127.0.0.1 through an undici Agent
// lookup override (Node's fetch uses the global undici dispatcher), fakefal's
// CA comes from NODE_EXTRA_CA_CERTS, and allowedUrlPatterns is widened to
// accept fakefal's port and rest.fal.ai/tokens/ (1.2.1 rejects both).
//
// Env: FAL_KEY (required), BENCH_LISTEN_PORT (0 = any; the chosen port is
// printed as "listening <port>" on stdout).
import express from "express";
import { createHandler, route } from "@fal-ai/server-proxy/express";
import { Agent, setGlobalDispatcher } from "undici";

const falHosts = new Set(["fal.run", "queue.fal.run", "rest.fal.ai", "rest.alpha.fal.ai"]);

setGlobalDispatcher(
  new Agent({
    connections: 256,
    connect: {
      lookup(hostname, options, callback) {
        if (!falHosts.has(hostname)) {
          callback(new Error(`bench launcher resolves only fal hosts, not ${hostname}`));
          return;
        }
        if (options && options.all) {
          callback(null, [{ address: "127.0.0.1", family: 4 }]);
        } else {
          callback(null, "127.0.0.1", 4);
        }
      },
    },
  }),
);

if (!process.env.FAL_KEY) {
  console.error("FAL_KEY is not set: the official proxy signs with it");
  process.exit(2);
}

const app = express();
app.use(express.json({ limit: "32mb" }));
app.all(
  route,
  createHandler({
    // Default patterns plus a port (fakefal listens on a random one) and the
    // token endpoint the realtime client needs.
    allowedUrlPatterns: ["fal.run:*/**", "queue.fal.run:*/**", "rest.fal.ai:*/tokens/", "fal.run/**", "rest.fal.ai/tokens/"],
  }),
);

const server = app.listen(Number(process.env.BENCH_LISTEN_PORT || 0), "127.0.0.1", () => {
  process.stdout.write(`listening ${server.address().port}\n`);
});
server.keepAliveTimeout = 65000;
for (const sig of ["SIGTERM", "SIGINT"]) {
  process.on(sig, () => server.close(() => process.exit(0)));
}
