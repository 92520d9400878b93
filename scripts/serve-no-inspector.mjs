// `wrangler dev` without its DevTools inspector, for measurements (scripts/serve --no-inspector
// runs this; see scripts/bench-worker).
//
// The `wrangler dev` command always attaches an inspector to the worker's isolate and enables the
// Network and Runtime domains on it: workerd then reports every subrequest and console call to
// wrangler's node process, which parses and prints them. A deployed worker has no inspector
// attached, and under `wrangler dev` that reporting about doubles workerd's CPU time per RAG
// request. This starts the same dev server (wrangler's startWorker API, which the command also
// uses: same build command, bindings, local R2 and Durable Objects) with the inspector off.
// Console output still reaches stdout.
//
// Usage: node scripts/serve-no-inspector.mjs --port P --persist-to DIR [--var NAME:VALUE]...
import { unstable_startWorker } from "wrangler";

const args = { port: 8787, persist: ".wrangler/state", vars: {} };
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const value = () => {
    if (i + 1 >= argv.length) throw new Error(`${argv[i]} needs a value`);
    return argv[++i];
  };
  switch (argv[i]) {
    case "--port": args.port = Number(value()); break;
    case "--persist-to": args.persist = value(); break;
    case "--var": {
      const pair = value();
      const colon = pair.indexOf(":");
      if (colon < 1) throw new Error(`--var needs NAME:VALUE, got ${pair}`);
      args.vars[pair.slice(0, colon)] = pair.slice(colon + 1);
      break;
    }
    default: throw new Error(`unknown argument ${argv[i]}`);
  }
}

const bindings = Object.fromEntries(Object.entries(args.vars).map(([name, value]) => [name, { type: "plain_text", value }]));
const worker = await unstable_startWorker({
  config: "wrangler.toml",
  bindings,
  dev: {
    inspector: false,
    remote: false,
    watch: false,
    persist: args.persist,
    server: { hostname: "127.0.0.1", port: args.port },
  },
});
await worker.ready;
console.log(`serving ${(await worker.url).href} (no inspector)`);
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, async () => {
    await worker.dispose();
    process.exit(0);
  });
}
