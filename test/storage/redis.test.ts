/** Against a real Redis (127.0.0.1:6379 unless FUNCTIONS_STORAGE_REDIS_URL says otherwise), under a prefix of its own. */
import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import { createStorage, type Storage } from "unstorage";
import redisDriver from "unstorage/drivers/redis";
import { describe, expect, it } from "vitest";
import { runStorageConformance, scriptOf, taggedSpec, type TaggedSpec } from "./conformance.ts";
import { createWorkspaceStore } from "../../storage/workspace-store.ts";

const url = process.env.FUNCTIONS_STORAGE_REDIS_URL ?? "redis://127.0.0.1:6379";

/** A storage under a fresh prefix, and a way to remove every key under it. */
function redisStorage() {
  const prefix = `fx-test-${randomUUID()}`;
  const views: Storage[] = [];
  const open = () => {
    const view = createStorage({ driver: redisDriver({ url, base: prefix }) });
    views.push(view);
    return view;
  };
  return {
    prefix,
    storage: open(),
    open,
    async dispose() {
      const client = new Redis(url);
      const keys = await client.keys(`${prefix}:*`);
      if (keys.length > 0) await client.unlink(...keys);
      client.disconnect();
      await Promise.all(views.map((view) => view.dispose()));
    },
  };
}

runStorageConformance({ name: "redis", create: async () => redisStorage() });

describe("redis storage layout", () => {
  it("keeps a workspace in three keys under the prefix: <prefix>:<id>:workspace.yaml, workspace.js and version", async () => {
    const backend = redisStorage();
    try {
      const version = await createWorkspaceStore<TaggedSpec>(backend.storage).put("app.my-app.v3", taggedSpec("layout"), scriptOf);
      const client = new Redis(url);
      expect((await client.keys(`${backend.prefix}:*`)).sort()).toEqual(
        ["version", "workspace.js", "workspace.yaml"].map((name) => `${backend.prefix}:app.my-app.v3:${name}`),
      );
      expect(await client.get(`${backend.prefix}:app.my-app.v3:version`)).toBe(version);
      client.disconnect();
    } finally {
      await backend.dispose();
    }
  });
});
