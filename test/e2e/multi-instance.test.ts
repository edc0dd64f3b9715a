/**
 * Several instances on one store: two real server processes sharing a Redis prefix, and two sharing
 * one storage directory. Whatever instance a request reaches, it runs what was deployed last, and
 * racing deploys never leave a mix of two versions. Workers and `cache` stay per instance.
 */
import { randomUUID } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Redis } from "ioredis";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "./harness.ts";

const redisUrl = process.env.FUNCTIONS_STORAGE_REDIS_URL ?? "redis://127.0.0.1:6379";

/** One store that several servers share, and raw access to it for the test. */
interface SharedStore {
  env: Record<string, string>;
  readScript(id: string): Promise<string | null>;
  writeScript(id: string, script: string): Promise<void>;
  dispose(): Promise<void>;
}

const stores: Record<string, () => SharedStore> = {
  redis() {
    const prefix = `fx-e2e-${randomUUID()}`;
    const client = new Redis(redisUrl);
    return {
      env: { FUNCTIONS_STORAGE_TYPE: "redis", FUNCTIONS_STORAGE_REDIS_URL: redisUrl, FUNCTIONS_STORAGE_REDIS_PREFIX: prefix },
      readScript: (id) => client.get(`${prefix}:${id}:workspace.js`),
      writeScript: async (id, script) => void (await client.set(`${prefix}:${id}:workspace.js`, script)),
      async dispose() {
        const keys = await client.keys(`${prefix}:*`);
        if (keys.length > 0) await client.unlink(...keys);
        client.disconnect();
      },
    };
  },
  filesystem() {
    mkdirSync(".tmp", { recursive: true });
    const dir = mkdtempSync(resolve(".tmp/e2e-shared-"));
    return {
      env: { FUNCTIONS_STORAGE_TYPE: "filesystem", FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH: dir },
      readScript: async (id) => readFileSync(join(dir, id, "workspace.js"), "utf8"),
      writeScript: async (id, script) => writeFileSync(join(dir, id, "workspace.js"), script),
      dispose: async () => rmSync(dir, { recursive: true, force: true }),
    };
  },
};

/** No Python API for these servers: only Node functions run here. */
const baseEnv = { PYTHON_API_AUTOSTART: "no" };

/** Every function returns the deploy's tag; `all` calls them all in one run. */
function tagged(tag: string) {
  const functions: Record<string, { code: string }> = {};
  for (let i = 0; i < 4; i++) functions[`f${i}`] = { code: `return ${JSON.stringify(tag)};` };
  functions.all = { code: "return [await f0(), await f1(), await f2(), await f3()];" };
  return { functions };
}

/** The tag an instance runs now; fails if its functions disagree. */
async function runningTag(server: RunningServer, id: string): Promise<string> {
  const reply = await server.run(id, "all");
  expect(reply.status, JSON.stringify(reply.body)).toBe(200);
  const tags: string[] = reply.body.result;
  expect(new Set(tags).size, `mixed versions: ${tags}`).toBe(1);
  return tags[0];
}

describe.each(Object.keys(stores))("two instances sharing one %s store", (kind) => {
  let store: SharedStore;
  let a: RunningServer;
  let b: RunningServer;

  beforeAll(async () => {
    store = stores[kind]();
    [a, b] = await Promise.all([startServer({ ...baseEnv, ...store.env }), startServer({ ...baseEnv, ...store.env })]);
  });
  afterAll(async () => {
    await Promise.all([a?.stop(), b?.stop()]);
    await store?.dispose();
  });

  it("a deploy through A is what the very next run through B executes, redeploys included", async () => {
    for (let round = 0; round < 10; round++) {
      expect((await a.deploy("handoff", tagged(`v${round}`))).status).toBe(200);
      // B is warm from the previous round: it must notice the redeploy on this very run.
      expect(await runningTag(b, "handoff")).toBe(`v${round}`);
      expect(await runningTag(a, "handoff")).toBe(`v${round}`);
    }
  });

  it("a delete through A makes B answer 404, even while B has the workspace warm", async () => {
    await a.deploy("gone", tagged("here"));
    expect(await runningTag(b, "gone")).toBe("here");
    expect((await a.request("DELETE", "/v2/functions/gone")).status).toBe(204);
    expect((await b.run("gone", "all")).status).toBe(404);
    expect((await b.request("GET", "/v2/functions/gone")).status).toBe(404);
    expect((await b.request("GET", "/v2/functions")).body).not.toContain("gone");
    await b.deploy("gone", tagged("back"));
    expect(await runningTag(a, "gone")).toBe("back");
  });

  it("deploys of one workspace racing through A and B leave one complete version on both", async () => {
    await a.deploy("raced", tagged("start"));
    await Promise.all([runningTag(a, "raced"), runningTag(b, "raced")]);
    for (let round = 0; round < 30; round++) {
      const tags = [`a${round}`, `b${round}`];
      // Runs during the race may see either deploy, or the one before, but never a mix.
      const [deployA, deployB] = await Promise.all([
        a.deploy("raced", tagged(tags[0])),
        b.deploy("raced", tagged(tags[1])),
        runningTag(a, "raced"),
        runningTag(b, "raced"),
      ]);
      expect([deployA.status, deployB.status]).toEqual([200, 200]);
      const winner = await runningTag(a, "raced");
      expect(tags).toContain(winner);
      expect(await runningTag(b, "raced")).toBe(winner);
      for (const server of [a, b]) {
        const read = await server.request("GET", "/v2/functions/raced");
        expect(read.body.functions).toEqual(tagged(winner).functions);
      }
      expect(await store.readScript("raced")).toContain(JSON.stringify(winner));
    }
  });

  it("each instance keeps its own warm workers, so `cache` is per instance", async () => {
    await a.deploy("counter", { functions: { count: { code: "cache.n = (cache.n ?? 0) + 1; return cache.n;" } } });
    expect((await a.run("counter", "count")).body.result).toBe(1);
    expect((await a.run("counter", "count")).body.result).toBe(2);
    expect((await b.run("counter", "count")).body.result).toBe(1);
  });

  it("UPDATE_SCRIPTS_ON_STARTUP is safe when two instances run it at once", async () => {
    const ids = Array.from({ length: 8 }, (_, i) => `startup-${i}`);
    for (const id of ids) await a.deploy(id, tagged(id));
    const fresh = await store.readScript(ids[0]);
    for (const id of ids) await store.writeScript(id, "// stale script from an older release\n");
    const env = { ...baseEnv, ...store.env, UPDATE_SCRIPTS_ON_STARTUP: "yes" };
    const [c, d] = await Promise.all([startServer(env), startServer(env)]);
    try {
      expect(await store.readScript(ids[0])).toBe(fresh);
      for (const id of ids) {
        expect(await store.readScript(id)).toContain(JSON.stringify(id));
        expect(await runningTag(c, id)).toBe(id);
        expect(await runningTag(d, id)).toBe(id);
      }
      expect(c.output() + d.output()).toContain("Scripts updated on start-up");
    } finally {
      await Promise.all([c.stop(), d.stop()]);
    }
  });
});
