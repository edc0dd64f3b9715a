// `npm run bench`: the figures of the issues' performance sections, measured on the built server
// (.output/server/index.mjs, built by the npm script) over real HTTP on loopback.
//
// Sections: warm runs vs a bare h3 route (1 and 32 connections), cold workspaces (deploy + first
// run), memory per warm workspace. BENCH_SECONDS sets the length of each load phase (default 5).
import { fileURLToPath } from "node:url";
import { fmt, load, rssMb, send, startProcess, startService, summarise } from "./lib.mjs";

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const entry = fileURLToPath(new URL("../.output/server/index.mjs", import.meta.url));
const hello = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };
const runHello = () => ["POST", "/v2/functions/bench/run/hello", { parameters: { name: "world" } }];

function line(label, result) {
  console.log(
    `${label.padEnd(34)} ${fmt(result.perSecond, 0).padStart(7)} req/s   http p50 ${fmt(result.latency.p50)} ms  p99 ${fmt(result.latency.p99)} ms` +
      (result.duration.n ? `   duration p50 ${fmt(result.duration.p50, 3)} ms` : "") +
      (result.errors ? `   ERRORS ${result.errors}` : ""),
  );
}

async function warmSection() {
  console.log(`\n## Warm runs (${seconds} s per phase)`);
  const service = await startService(entry);
  const bare = await startProcess(fileURLToPath(new URL("./bare-h3.mjs", import.meta.url)), {}, async (url) => (await send(url, "POST", "/v2/functions/x/run/y", { parameters: { name: "a" } })).status === 200);
  try {
    await send(service.url, "POST", "/v2/functions/bench", hello);
    await load(service.url, 4, 1, runHello); // warm-up: worker started, JIT warm
    await load(bare.url, 4, 1, runHello);
    const results = {};
    for (const connections of [1, 32]) {
      results[`fx${connections}`] = await load(service.url, connections, seconds, runHello);
      line(`service, ${connections} connection(s)`, results[`fx${connections}`]);
      results[`bare${connections}`] = await load(bare.url, connections, seconds, runHello);
      line(`bare h3 route, ${connections} connection(s)`, results[`bare${connections}`]);
      console.log(`  ratio service/bare at ${connections}: ${fmt(results[`fx${connections}`].perSecond / results[`bare${connections}`].perSecond)}`);
    }
    return results;
  } finally {
    await Promise.all([service.stop(), bare.stop()]);
  }
}

async function coldSection() {
  console.log("\n## Cold workspaces (deploy + first run, sequential)");
  const service = await startService(entry);
  try {
    await send(service.url, "POST", "/v2/functions/warmup", hello);
    await send(service.url, "POST", "/v2/functions/warmup/run/hello", { parameters: { name: "x" } });
    const deploys = [];
    const totals = [];
    for (let i = 0; i < 30; i++) {
      const started = performance.now();
      const deploy = await send(service.url, "POST", `/v2/functions/cold-${i}`, hello);
      const run = await send(service.url, "POST", `/v2/functions/cold-${i}/run/hello`, { parameters: { name: "x" } });
      if (deploy.status !== 200 || run.status !== 200) throw new Error(`cold run failed: ${deploy.status} ${run.status}`);
      deploys.push(deploy.ms);
      totals.push(performance.now() - started);
      // Leave the pre-started spare worker time to come up, as between real deploys.
      await new Promise((r) => setTimeout(r, 150));
    }
    const deploy = summarise(deploys);
    const total = summarise(totals);
    console.log(`deploy p50 ${fmt(deploy.p50)} ms; deploy + first run p50 ${fmt(total.p50)} ms, p99 ${fmt(total.p99)} ms`);
  } finally {
    await service.stop();
  }
}

async function memorySection() {
  console.log("\n## Memory per warm workspace (100 workspaces)");
  const service = await startService(entry);
  try {
    await send(service.url, "POST", "/v2/functions/base", hello);
    await send(service.url, "POST", "/v2/functions/base/run/hello", { parameters: { name: "x" } });
    await new Promise((r) => setTimeout(r, 500));
    const before = rssMb(service.pid);
    for (let i = 0; i < 100; i++) {
      await send(service.url, "POST", `/v2/functions/mem-${i}`, hello);
      await send(service.url, "POST", `/v2/functions/mem-${i}/run/hello`, { parameters: { name: "x" } });
    }
    await new Promise((r) => setTimeout(r, 1000));
    const after = rssMb(service.pid);
    console.log(`RSS ${fmt(before, 0)} MB -> ${fmt(after, 0)} MB with 100 more warm workspaces: ${fmt((after - before) / 100)} MB per warm workspace`);
  } finally {
    await service.stop();
  }
}

await warmSection();
await coldSection();
await memorySection();
process.exit(0);
