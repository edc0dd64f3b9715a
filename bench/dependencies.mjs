// npm dependencies: deploy + first run of a workspace needing one small package, when its
// dependency set must be installed (cold: npm runs) and when another workspace already installed
// it (warm). Packages come from the fixture registry on loopback (test/fixtures/registry).
//
// Standalone: `node bench/dependencies.mjs` after `npm run build`; or `dependenciesSection(entry)`.
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { startFixtureRegistry } from "../test/fixtures/registry/index.mjs";
import { fmt, send, startService, summarise } from "./lib.mjs";

// Distinct ranges that all resolve to fx-greet 2.0.0: each is a dependency set of its own.
const COLD_RANGES = ["2.0.0", "^2.0.0", "~2.0.0", ">=2.0.0", "2.x", "2", "2.0.x", "^2"];
const WARM_RUNS = 30;

const workspace = (range) => ({ functions: { hello: { code: "const greet = require('fx-greet');\nreturn greet(name);", parameters: { name: {} } } }, dependencies: { "fx-greet": range } });

async function deployAndRun(url, id, body) {
  const started = performance.now();
  const deploy = await send(url, "POST", `/v2/functions/${id}`, body);
  const run = await send(url, "POST", `/v2/functions/${id}/run/hello`, { parameters: { name: "x" } });
  if (deploy.status !== 200 || run.status !== 200) throw new Error(`${id}: deploy ${deploy.status}, run ${run.status} ${JSON.stringify(run.body)}`);
  return { deployMs: deploy.ms, totalMs: performance.now() - started };
}

export async function dependenciesSection(entry) {
  console.log("\n## npm dependencies (deploy + first run, one small package)");
  const registry = await startFixtureRegistry();
  const modules = mkdtempSync(join(tmpdir(), "fx-bench-modules-"));
  const service = await startService(entry, { NPM_CONFIG_REGISTRY: registry.url, NODE_MODULES_DIRECTORY: modules, PYTHON_API_AUTOSTART: "no" });
  try {
    await send(service.url, "POST", "/v2/functions/warmup", { functions: { hello: { code: "return 1;" } } });
    await send(service.url, "POST", "/v2/functions/warmup/run/hello", {});
    const cold = [];
    for (const [i, range] of COLD_RANGES.entries()) cold.push(await deployAndRun(service.url, `cold-${i}`, workspace(range)));
    const warm = [];
    for (let i = 0; i < WARM_RUNS; i++) {
      warm.push(await deployAndRun(service.url, `warm-${i}`, workspace("^2.0.0")));
      await new Promise((r) => setTimeout(r, 150)); // the pre-started spare worker comes up, as between real deploys
    }
    const first = cold[0].totalMs;
    const coldTotals = summarise(cold.slice(1).map((c) => c.totalMs));
    const warmTotals = summarise(warm.map((w) => w.totalMs));
    const warmDeploys = summarise(warm.map((w) => w.deployMs));
    console.log(`cold, npm cache empty: ${fmt(first)} ms`);
    console.log(`cold, npm cache warm (${cold.length - 1} new sets): p50 ${fmt(coldTotals.p50)} ms, p99 ${fmt(coldTotals.p99)} ms`);
    console.log(`warm, set already installed (${WARM_RUNS} workspaces): deploy p50 ${fmt(warmDeploys.p50)} ms; deploy + first run p50 ${fmt(warmTotals.p50)} ms, p99 ${fmt(warmTotals.p99)} ms`);
    return { coldFirstMs: first, cold: coldTotals, warm: warmTotals };
  } finally {
    await service.stop();
    await registry.close();
    rmSync(modules, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await dependenciesSection(fileURLToPath(new URL("../.output/server/index.mjs", import.meta.url)));
  process.exit(0);
}
