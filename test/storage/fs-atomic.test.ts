import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { createStorage } from "unstorage";
import { describe, expect, it } from "vitest";
import fsAtomic from "../../storage/drivers/fs-atomic.ts";
import { createWorkspaceStore } from "../../storage/workspace-store.ts";
import { runStorageConformance, scriptOf, taggedSpec, type TaggedSpec } from "./conformance.ts";

function tempDir(): string {
  mkdirSync(".tmp", { recursive: true });
  return mkdtempSync(resolve(".tmp/storage-"));
}

/** Every file under `dir`, as paths relative to it. */
function filesUnder(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath, entry.name).slice(dir.length + 1))
    .sort();
}

runStorageConformance({
  name: "fs-atomic",
  async create() {
    const base = tempDir();
    // A second instance opens the same directory.
    const open = () => createStorage({ driver: fsAtomic({ base }) });
    return { storage: open(), open, dispose: async () => rmSync(base, { recursive: true, force: true }) };
  },
});

describe("fs-atomic on disk", () => {
  it("lays a workspace out as <root>/<id>/workspace.yaml, workspace.js and version", async () => {
    const base = tempDir();
    const version = await createWorkspaceStore<TaggedSpec>(createStorage({ driver: fsAtomic({ base }) })).put("ws-42", taggedSpec("layout"), scriptOf);
    expect(filesUnder(base)).toEqual(["ws-42/version", "ws-42/workspace.js", "ws-42/workspace.yaml"]);
    expect(readFileSync(join(base, "ws-42/version"), "utf8")).toBe(version);
    expect(readFileSync(join(base, "ws-42/workspace.yaml"), "utf8")).toMatch(/^tag: layout\nfunctions:\n/);
    rmSync(base, { recursive: true, force: true });
  });

  it("leaves no temporary files after many concurrent writes, and frees the directory on delete", async () => {
    const base = tempDir();
    const store = createWorkspaceStore<TaggedSpec>(createStorage({ driver: fsAtomic({ base }) }));
    await Promise.all(Array.from({ length: 40 }, (_, i) => store.put(`ws-${i % 4}`, taggedSpec(`t${i}`, 2, 8192), scriptOf)));
    expect(filesUnder(base).filter((path) => path.includes(".fx-tmp-"))).toEqual([]);
    expect(filesUnder(base)).toHaveLength(4 * 3);
    for (let i = 0; i < 4; i++) await store.delete(`ws-${i}`);
    expect(readdirSync(base)).toEqual([]);
    rmSync(base, { recursive: true, force: true });
  });

  it("ignores a torn temporary file left by a crash mid-write", async () => {
    const base = tempDir();
    const store = createWorkspaceStore<TaggedSpec>(createStorage({ driver: fsAtomic({ base }) }));
    const spec = taggedSpec("whole");
    await store.put("crashed", spec, scriptOf);
    // A crash between the temp write and the rename: a torn temp beside the complete file ...
    writeFileSync(join(base, "crashed/workspace.yaml.fx-tmp-0123456789ab"), "tag: torn\nfunctions:\n  f0: {co");
    // ... and a first deploy that never got renamed at all.
    mkdirSync(join(base, "never-renamed"));
    writeFileSync(join(base, "never-renamed/workspace.yaml.fx-tmp-ba9876543210"), "functions: {}\n");
    expect(await store.list()).toEqual(["crashed"]);
    expect((await store.get("crashed"))!.spec).toEqual(spec);
    expect(await store.get("never-renamed")).toBeUndefined();
    await store.put("crashed", taggedSpec("next"), scriptOf);
    expect((await store.get("crashed"))!.spec.tag).toBe("next");
    rmSync(base, { recursive: true, force: true });
  });
});
