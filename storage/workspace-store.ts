/**
 * The workspace store: `workspace.yaml` (the deploy body as YAML, the source of truth), the
 * generated script beside it, and a small `version` key that makes the warm-path check cheap.
 * Works over any unstorage `Storage`; nothing here assumes a filesystem.
 *
 * Each key is written atomically by the driver. A deploy writes the spec, then the script, then
 * the version: a reader that sees a new version finds the spec that goes with it. The version of
 * what a reader loads is always computed from the spec it read, so even two deploys racing through
 * different instances can never make anyone run a mix of two versions.
 */
import type { Storage } from "unstorage";
import { parse, stringify } from "yaml";
import { keys, SCRIPT_FILE, WORKSPACE_FILE, workspaceIdProblem } from "./keys.ts";

export interface StoredWorkspace<Spec> {
  id: string;
  spec: Spec;
  /** Content hash of `workspace.yaml` as stored. */
  version: string;
}

export interface WorkspaceStore<Spec = unknown> {
  /** Writes a workspace (spec, generated script, version) and returns its version. */
  put(id: string, spec: Spec, script: (version: string) => string): Promise<string>;
  get(id: string): Promise<StoredWorkspace<Spec> | undefined>;
  /** The stored version marker, one small read: what the warm path checks. */
  version(id: string): Promise<string | undefined>;
  /** Rewrites the generated script of a workspace (`UPDATE_SCRIPTS_ON_STARTUP`). */
  putScript(id: string, script: string): Promise<void>;
  getScript(id: string): Promise<string | undefined>;
  delete(id: string): Promise<boolean>;
  list(): Promise<string[]>;
  readonly storage: Storage;
}

/** Hex SHA-256, through Web Crypto so the store also runs on edge runtimes. */
export async function contentHash(text: string): Promise<string> {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest).subarray(0, 12), (b) => b.toString(16).padStart(2, "0")).join("");
}

function assertId(id: string): void {
  const problem = workspaceIdProblem(id);
  if (problem) throw new TypeError(`Invalid workspace id ${JSON.stringify(id)}: ${problem}`);
}

/**
 * @example
 *   const store = createWorkspaceStore(createStorage({ driver: fsAtomic({ base: "data/functions" }) }))
 *   await store.put("test", { functions: {} }, () => "")
 */
export function createWorkspaceStore<Spec = unknown>(storage: Storage): WorkspaceStore<Spec> {
  async function readText(key: string): Promise<string | undefined> {
    const value = await storage.getItemRaw(key);
    if (value === null || value === undefined) return undefined;
    return typeof value === "string" ? value : new TextDecoder().decode(value as Uint8Array);
  }

  return {
    storage,
    async put(id, spec, script) {
      assertId(id);
      const yaml = stringify(spec, { lineWidth: 0 });
      const version = await contentHash(yaml);
      await storage.setItemRaw(keys.spec(id), yaml);
      await storage.setItemRaw(keys.script(id), script(version));
      await storage.setItemRaw(keys.version(id), version);
      return version;
    },
    async get(id) {
      assertId(id);
      const yaml = await readText(keys.spec(id));
      if (yaml === undefined) return undefined;
      return { id, spec: parse(yaml) as Spec, version: await contentHash(yaml) };
    },
    async version(id) {
      assertId(id);
      return readText(keys.version(id));
    },
    async putScript(id, script) {
      assertId(id);
      await storage.setItemRaw(keys.script(id), script);
    },
    getScript(id) {
      assertId(id);
      return readText(keys.script(id));
    },
    async delete(id) {
      assertId(id);
      const existed = await storage.hasItem(keys.spec(id));
      // The version goes first: from then on no instance loads this workspace again.
      await storage.removeItem(keys.version(id));
      await storage.removeItem(keys.script(id));
      await storage.removeItem(keys.spec(id));
      return existed;
    },
    async list() {
      const all = await storage.getKeys();
      const ids = all.filter((k) => k.endsWith(`:${WORKSPACE_FILE}`) && k.split(":").length === 2).map((k) => k.split(":")[0]);
      return [...new Set(ids)].sort();
    },
  };
}

export { SCRIPT_FILE, WORKSPACE_FILE };
