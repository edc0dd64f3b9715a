// `npm run bench`: the figures of the issues' performance sections, measured on the built server
// (.output/server/index.mjs, built by the npm script) over real HTTP on loopback.
//
// Sections: warm runs vs a bare h3 route (1 and 32 connections), cold workspaces (deploy + first
// run), memory per warm workspace, each for every sandbox (FUNCTIONS_SANDBOX: vm2, then quickjs);
// Python functions (bench/python.mjs). BENCH_SECONDS sets the length of each load phase (default 5);
// BENCH_SANDBOXES the sandboxes, comma-separated (default "vm2,quickjs").
import { fileURLToPath } from "node:url";
import { dependenciesSection } from "./dependencies.mjs";
import { fmt, load, rssMb, send, startProcess, startService, summarise } from "./lib.mjs";
import { pythonSection } from "./python.mjs";

const seconds = Number(process.env.BENCH_SECONDS ?? 5);
const sandboxes = (process.env.BENCH_SANDBOXES ?? "vm2,quickjs").split(",").map((name) => name.trim()).filter(Boolean);
const entry = fileURLToPath(new URL("../.output/server/index.mjs", import.meta.url));
const hello = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };
const runHello = () => ["POST", "/v2/functions/bench/run/hello", { parameters: { name: "world" } }];
/** The issues' targets, by sandbox (issue 3 for QuickJS). */
const TARGETS = { quickjs: { warmDurationMs: 0.5, coldMs: 20, perWorkspaceMb: 2 } };

/** A target line, for the sandboxes that have this target. */
function target(sandbox, key, label, value) {
  const limit = TARGETS[sandbox]?.[key];
  if (limit !== undefined) console.log(`  ${label}: ${fmt(value, 3)} (target < ${limit}: ${value < limit ? "met" : "MISSED"})`);
}

function line(label, result) {
  console.log(
    `${label.padEnd(34)} ${fmt(result.perSecond, 0).padStart(7)} req/s   http p50 ${fmt(result.latency.p50)} ms  p99 ${fmt(result.latency.p99)} ms` +
      (result.duration.n ? `   duration p50 ${fmt(result.duration.p50, 3)} ms` : "") +
      (result.errors ? `   ERRORS ${result.errors}` : ""),
  );
}

async function warmSection(sandbox, processes = "2") {
  const where = processes === "0" ? "in the HTTP process" : `in ${processes} sandbox processes`;
  console.log(`\n## Warm runs, ${sandbox} ${where} (${seconds} s per phase)`);
  const service = await startService(entry, { FUNCTIONS_SANDBOX: sandbox, FUNCTIONS_SANDBOX_PROCESSES: processes });
  const bare = await startProcess(fileURLToPath(new URL("./bare-h3.mjs", import.meta.url)), {}, async (url) => (await send(url, "POST", "/v2/functions/x/run/y", { parameters: { name: "a" } })).status === 200);
  try {
    await send(service.url, "POST", "/v2/functions/bench", hello);
    await load(service.url, 4, 1, runHello); // warm-up: worker started, JIT warm
    await load(bare.url, 4, 1, runHello);
    const results = {};
    for (const connections of [1, 32]) {
      results[`fx${connections}`] = await load(service.url, connections, seconds, runHello);
      line(`service, ${connections} connection(s)`, results[`fx${connections}`]);
      target(sandbox, "warmDurationMs", "warm run duration p50 (ms)", results[`fx${connections}`].duration.p50);
      results[`bare${connections}`] = await load(bare.url, connections, seconds, runHello);
      line(`bare h3 route, ${connections} connection(s)`, results[`bare${connections}`]);
      console.log(`  ratio service/bare at ${connections}: ${fmt(results[`fx${connections}`].perSecond / results[`bare${connections}`].perSecond)}`);
    }
    return results;
  } finally {
    await Promise.all([service.stop(), bare.stop()]);
  }
}

async function coldSection(sandbox) {
  console.log(`\n## Cold workspaces, ${sandbox} (deploy + first run, sequential)`);
  const service = await startService(entry, { FUNCTIONS_SANDBOX: sandbox });
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
    target(sandbox, "coldMs", "deploy + first run p50 (ms)", total.p50);
  } finally {
    await service.stop();
  }
}

async function memorySection(sandbox) {
  console.log(`\n## Memory per warm workspace, ${sandbox} (100 workspaces)`);
  const service = await startService(entry, { FUNCTIONS_SANDBOX: sandbox });
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
    target(sandbox, "perWorkspaceMb", "MB per warm workspace", (after - before) / 100);
  } finally {
    await service.stop();
  }
}

for (const sandbox of sandboxes) {
  await warmSection(sandbox);
  // The same without the process boundary (FUNCTIONS_SANDBOX_PROCESSES=0): what the extra hop costs.
  if (sandbox === "vm2") await warmSection(sandbox, "0");
  await coldSection(sandbox);
  await memorySection(sandbox);
}
await pythonSection(entry);
await dependenciesSection(entry);
process.exit(0);
