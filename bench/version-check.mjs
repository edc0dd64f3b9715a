// `npm run bench:storage`: what the warm path pays for sharing a store.
//
// 1. The version check alone: `store.version(id)` (one small read) against fs-atomic, Redis and
//    memory, through the built library (dist/, imported by the package's own name).
// 2. Warm runs over HTTP: the built server (.output/server/index.mjs, or BENCH_ENTRY), one process
//    with the filesystem backend and one with Redis, taking turns; sequential runs of hello.
//
// Redis at FUNCTIONS_STORAGE_REDIS_URL (default redis://127.0.0.1:6379), under a prefix of its own
// that is removed afterwards. BENCH_RUNS sets the number of HTTP runs per backend (default 2000).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";
import { createStorage } from "unstorage";
import memory from "unstorage/drivers/memory";
import redisDriver from "unstorage/drivers/redis";
import { createWorkspaceStore } from "functions-service";
import fsAtomic from "functions-service/fs-atomic";
import { fmt, send, startService, summarise } from "./lib.mjs";

const redisUrl = process.env.FUNCTIONS_STORAGE_REDIS_URL ?? "redis://127.0.0.1:6379";
const runs = Number(process.env.BENCH_RUNS ?? 2000);
const entry = process.env.BENCH_ENTRY ?? fileURLToPath(new URL("../.output/server/index.mjs", import.meta.url));
const prefix = `fx-bench-${process.pid}`;
const hello = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };

async function removeRedisKeys() {
  const client = new Redis(redisUrl);
  const keys = await client.keys(`${prefix}*`);
  if (keys.length > 0) await client.unlink(...keys);
  client.disconnect();
}

/** Microseconds per `store.version()` call, sequential, after a warm-up. */
async function versionCheck(label, storage) {
  const store = createWorkspaceStore(storage);
  await store.put("bench", hello, () => "// script");
  for (let i = 0; i < 2000; i++) await store.version("bench");
  const times = [];
  for (let i = 0; i < 20_000; i++) {
    const started = performance.now();
    await store.version("bench");
    times.push((performance.now() - started) * 1000);
  }
  const { p50, p99 } = summarise(times);
  console.log(`${label.padEnd(12)} p50 ${fmt(p50, 1).padStart(6)} µs   p99 ${fmt(p99, 1).padStart(6)} µs`);
  await storage.dispose();
}

/**
 * p50 and p99 of `runs` sequential warm runs of hello over HTTP on each service. The services take
 * turns, run by run, so both see the same machine load.
 */
async function warmRuns(services) {
  const started = await Promise.all(Object.values(services).map((env) => startService(entry, env)));
  try {
    const runners = started.map((service) => () => send(service.url, "POST", "/v2/functions/bench/run/hello", { parameters: { name: "world" } }));
    for (const service of started) await send(service.url, "POST", "/v2/functions/bench", hello);
    for (let i = 0; i < 500; i++) for (const run of runners) await run(); // workers started, JIT warm
    const times = runners.map(() => []);
    for (let i = 0; i < runs; i++) {
      for (const [index, run] of runners.entries()) {
        const reply = await run();
        if (reply.status !== 200) throw new Error(`run failed: ${reply.status} ${JSON.stringify(reply.body)}`);
        times[index].push(reply.ms);
      }
    }
    const results = {};
    for (const [index, label] of Object.keys(services).entries()) {
      results[label] = summarise(times[index]);
      console.log(`${label.padEnd(12)} p50 ${fmt(results[label].p50, 3)} ms   p99 ${fmt(results[label].p99, 3)} ms   (${runs} sequential runs)`);
    }
    return results;
  } finally {
    await Promise.all(started.map((service) => service.stop()));
  }
}

const dir = mkdtempSync(join(tmpdir(), "fx-bench-version-"));
try {
  console.log("## store.version(): the warm path's one read per run");
  await versionCheck("memory", createStorage({ driver: memory() }));
  await versionCheck("fs-atomic", createStorage({ driver: fsAtomic({ base: dir }) }));
  await versionCheck("redis", createStorage({ driver: redisDriver({ url: redisUrl, base: `${prefix}-micro` }) }));

  console.log("\n## Warm runs over HTTP, by storage backend");
  const { filesystem, redis } = await warmRuns({
    filesystem: { FUNCTIONS_STORAGE_TYPE: "filesystem", PYTHON_API_AUTOSTART: "no" },
    redis: { FUNCTIONS_STORAGE_TYPE: "redis", FUNCTIONS_STORAGE_REDIS_URL: redisUrl, FUNCTIONS_STORAGE_REDIS_PREFIX: prefix, PYTHON_API_AUTOSTART: "no" },
  });
  console.log(`ratio redis/filesystem at p50: ${fmt(redis.p50 / filesystem.p50)} (target: at most 1.20)`);
} finally {
  rmSync(dir, { recursive: true, force: true });
  await removeRedisKeys();
}
