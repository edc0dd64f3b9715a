/**
 * The storage conformance suite: the same cases against every storage backend (fs-atomic, memory,
 * Redis), through the workspace store. Each case states what the service relies on, whichever
 * backend holds the workspaces.
 *
 * Use it from `<backend>.test.ts`:
 *   runStorageConformance({ name: "memory", create: async () => { const storage = createStorage(); return { storage, open: () => storage, dispose: async () => {} } } })
 */
import type { Storage } from "unstorage";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { contentHash, createWorkspaceStore, type ScriptGenerator, type WorkspaceStore } from "../../storage/workspace-store.ts";

export interface StorageUnderTest {
  /** An empty storage of this backend. */
  storage: Storage;
  /** Another view onto the same data, as a second instance of the service would open it. */
  open(): Storage;
  /** Removes everything the storage holds and closes every view. */
  dispose(): Promise<void>;
}

export interface StorageTarget {
  name: string;
  create(): Promise<StorageUnderTest>;
}

export interface TaggedSpec {
  tag: string;
  functions: Record<string, { code: string }>;
}

/** A spec whose every part names its tag, so a mix of two specs shows. */
export function taggedSpec(tag: string, functions = 3, bodyBytes = 64): TaggedSpec {
  const body = `return ${JSON.stringify(tag)}; // ${tag} `.padEnd(bodyBytes, "x");
  return { tag, functions: Object.fromEntries(Array.from({ length: functions }, (_, i) => [`f${i}`, { code: body }])) };
}

/** A script naming its version and spec, so a script from another spec shows. */
export const scriptOf: ScriptGenerator<TaggedSpec> = (version, spec) => `// version ${version}\n${JSON.stringify(spec)}`;

/** The version a spec gets when stored: the hash of its YAML. */
export const versionOf = (spec: TaggedSpec) => contentHash(stringify(spec, { lineWidth: 0 }));

/** Every part of the spec names the same tag. */
function expectWhole(spec: TaggedSpec): void {
  for (const fn of Object.values(spec.functions)) expect(fn.code).toContain(JSON.stringify(spec.tag));
}

/** The three keys of a workspace come from one spec: the last one written. */
async function expectSettled(store: WorkspaceStore<TaggedSpec>, id: string): Promise<TaggedSpec> {
  const stored = (await store.get(id))!;
  expectWhole(stored.spec);
  expect(await store.version(id)).toBe(stored.version);
  expect(await store.getScript(id)).toBe(scriptOf(stored.version, stored.spec));
  return stored.spec;
}

export function runStorageConformance(target: StorageTarget): void {
  describe(`${target.name} storage conformance`, () => {
    let backend: StorageUnderTest;
    let store: WorkspaceStore<TaggedSpec>;

    beforeAll(async () => {
      backend = await target.create();
      store = createWorkspaceStore<TaggedSpec>(backend.storage);
    });
    afterAll(async () => {
      await backend?.dispose();
    });

    it("stores a workspace and reads it back with its version and generated script", async () => {
      const spec = taggedSpec("one");
      const version = await store.put("put-get", spec, scriptOf);
      expect(version).toBe(await versionOf(spec));
      expect(await store.get("put-get")).toEqual({ id: "put-get", spec, version });
      expect(await store.version("put-get")).toBe(version);
      expect(await store.getScript("put-get")).toBe(scriptOf(version!, spec));
    });

    it("a redeploy replaces the whole workspace and changes the version; the same spec keeps it", async () => {
      const first = await store.put("redeploy", taggedSpec("a", 3), scriptOf);
      const second = await store.put("redeploy", taggedSpec("b", 1), scriptOf);
      expect(second).not.toBe(first);
      expect((await store.get("redeploy"))!.spec).toEqual(taggedSpec("b", 1));
      expect(await store.put("redeploy", taggedSpec("b", 1), scriptOf)).toBe(second);
    });

    it("a missing workspace has no spec, version or script, and deleting it answers false", async () => {
      expect(await store.get("missing")).toBeUndefined();
      expect(await store.version("missing")).toBeUndefined();
      expect(await store.getScript("missing")).toBeUndefined();
      expect(await store.delete("missing")).toBe(false);
    });

    it("ids with dots, dashes and underscores are stored and listed like any other", async () => {
      const ids = ["app.my-app.v3", "ws-42", "a_b", "A1", "x".repeat(128)];
      for (const id of ids) await store.put(id, taggedSpec(id), scriptOf);
      for (const id of ids) expect((await store.get(id))!.spec.tag).toBe(id);
      expect(await store.list()).toEqual(expect.arrayContaining(ids));
    });

    it("rejects invalid ids before they reach the storage", async () => {
      let calls = 0;
      const watched = new Proxy(backend.storage, {
        get(storage, property, receiver) {
          const value = Reflect.get(storage, property, receiver);
          if (typeof value !== "function") return value;
          return (...args: unknown[]) => {
            calls++;
            return value.apply(storage, args);
          };
        },
      });
      const guarded = createWorkspaceStore<TaggedSpec>(watched);
      const invalid = ["..", ".", "a/b", "a\\b", "%2e%2e", "a\0b", "x".repeat(129), "", ".hidden", "-dash", "a:b", "a b"];
      for (const id of invalid) {
        await expect(guarded.put(id, taggedSpec("bad"), scriptOf), id).rejects.toThrow(TypeError);
        await expect(guarded.get(id), id).rejects.toThrow(TypeError);
        await expect(guarded.version(id), id).rejects.toThrow(TypeError);
        await expect(guarded.getScript(id), id).rejects.toThrow(TypeError);
        await expect(guarded.refreshScript(id, scriptOf), id).rejects.toThrow(TypeError);
        await expect(guarded.delete(id), id).rejects.toThrow(TypeError);
      }
      expect(calls).toBe(0);
    });

    it("delete removes every key of the workspace and nothing else", async () => {
      await store.put("doomed", taggedSpec("doomed"), scriptOf);
      await store.put("doomed-neighbour", taggedSpec("neighbour"), scriptOf);
      expect(await store.delete("doomed")).toBe(true);
      const keys = await backend.storage.getKeys();
      expect(keys.filter((key) => key.startsWith("doomed:"))).toEqual([]);
      expect(await store.get("doomed")).toBeUndefined();
      expect(await store.version("doomed")).toBeUndefined();
      expect(await store.list()).not.toContain("doomed");
      expect((await store.get("doomed-neighbour"))!.spec.tag).toBe("neighbour");
    });

    it("list answers sorted workspace ids and ignores keys that are not workspaces", async () => {
      const foreign = ["other-app:config.json", "nested:deeper:workspace.yaml", "loose-file", "bad id!:workspace.yaml", "_x:workspace.yaml", "only-script:workspace.js"];
      for (const key of foreign) await backend.storage.setItemRaw(key, "not a workspace");
      const ids = await store.list();
      expect(ids).toEqual([...ids].sort());
      for (const id of ["other-app", "nested", "nested:deeper", "loose-file", "bad id!", "_x", "only-script"]) expect(ids).not.toContain(id);
      for (const key of foreign) await backend.storage.removeItem(key);
    });

    it("keeps large specs whole (bodies of tens of kilobytes)", async () => {
      const spec = taggedSpec("large", 8, 48 * 1024);
      const version = await store.put("large", spec, scriptOf);
      const stored = await store.get("large");
      expect(stored!.spec).toEqual(spec);
      expect(stored!.version).toBe(version);
      expect((await store.getScript("large"))!.length).toBeGreaterThan(8 * 48 * 1024);
    });

    it("a reader concurrent with many writers only ever sees complete versions", async () => {
      const specs = Array.from({ length: 24 }, (_, i) => taggedSpec(`w${i}`, 4, 16 * 1024));
      const versions = new Set(await Promise.all(specs.map(versionOf)));
      await store.put("contended", taggedSpec("w0", 4, 16 * 1024), scriptOf);
      let writing = true;
      let reads = 0;
      const reader = (async () => {
        while (writing) {
          const [stored, version] = await Promise.all([store.get("contended"), store.version("contended")]);
          expectWhole(stored!.spec);
          expect(versions).toContain(stored!.version);
          expect(versions).toContain(version);
          reads++;
        }
      })();
      await Promise.all(specs.map((spec) => store.put("contended", spec, scriptOf)));
      writing = false;
      await reader;
      expect(reads).toBeGreaterThan(0);
      await expectSettled(store, "contended");
    });

    it("deploys racing through two instances leave the spec, script and version of one deploy", async () => {
      const other = createWorkspaceStore<TaggedSpec>(backend.open());
      for (let round = 0; round < 20; round++) {
        const results = await Promise.all([
          store.put("raced", taggedSpec(`a${round}`, 4, 4096), scriptOf),
          other.put("raced", taggedSpec(`b${round}`, 4, 4096), scriptOf),
        ]);
        const spec = await expectSettled(store, "raced");
        expect([`a${round}`, `b${round}`]).toContain(spec.tag);
        // At least the deploy that finished last answers the version that is stored.
        expect(results).toContain(await store.version("raced"));
      }
    });

    it("refreshScript rewrites a stale script once, and is safe while another instance deploys", async () => {
      await store.put("refresh", taggedSpec("r0"), scriptOf);
      await backend.storage.setItemRaw("refresh:workspace.js", "// stale");
      expect(await store.refreshScript("refresh", scriptOf)).toBe(true);
      expect(await store.refreshScript("refresh", scriptOf)).toBe(false);
      await expectSettled(store, "refresh");
      const other = createWorkspaceStore<TaggedSpec>(backend.open());
      for (let round = 1; round <= 10; round++) {
        await backend.storage.setItemRaw("refresh:workspace.js", "// stale");
        await Promise.all([store.refreshScript("refresh", scriptOf), other.refreshScript("refresh", scriptOf), other.put("refresh", taggedSpec(`r${round}`), scriptOf)]);
        expect((await expectSettled(store, "refresh")).tag).toBe(`r${round}`);
      }
      expect(await store.refreshScript("missing", scriptOf)).toBe(false);
    });
  });
}
