/**
 * The workspace store: `workspace.yaml` (the deploy body as YAML, the source of truth), the
 * generated script beside it, and a small `version` key that makes the warm-path check cheap.
 * Works over any unstorage `Storage`; nothing here assumes a filesystem.
 *
 * Each key is written atomically by the driver, but no driver writes several keys at once. A write
 * stores the spec, then the script and version derived from it, then reads the spec back and
 * repeats until what it last derived matches the spec as stored. Two deploys racing through
 * different instances can interleave their writes; because every writer ends with that check, the
 * last one to finish leaves all three keys from one spec. Readers never see a mix either: the
 * version of what they load is computed from the spec they read.
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

/** Generates the script stored beside a spec; called with the spec actually stored, which may be another writer's. */
export type ScriptGenerator<Spec> = (version: string, spec: Spec) => string;

export interface WorkspaceStore<Spec = unknown> {
  /**
   * Writes a workspace (spec, generated script, version). Answers the version stored once the
   * writes settled: this spec's, another's when a concurrent deploy finished later, or undefined
   * when a concurrent delete won.
   */
  put(id: string, spec: Spec, script: ScriptGenerator<Spec>): Promise<string | undefined>;
  get(id: string): Promise<StoredWorkspace<Spec> | undefined>;
  /** The stored version marker, one small read: what the warm path checks. */
  version(id: string): Promise<string | undefined>;
  /**
   * Regenerates the script and version from the stored spec (`UPDATE_SCRIPTS_ON_STARTUP`); safe
   * while other instances do the same or deploy. Answers whether anything was rewritten.
   */
  refreshScript(id: string, script: ScriptGenerator<Spec>): Promise<boolean>;
  getScript(id: string): Promise<string | undefined>;
  delete(id: string): Promise<boolean>;
  /** Ids of the stored workspaces; keys that are not `<valid id>:workspace.yaml` are ignored. */
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

  /** Writes the script and version of `yaml`, then follows the stored spec until it stops changing. */
  async function settle(id: string, yaml: string | undefined, script: ScriptGenerator<Spec>): Promise<string | undefined> {
    let written: string | undefined;
    while (yaml !== undefined) {
      const version = await contentHash(yaml);
      if (version === written) return version;
      await storage.setItemRaw(keys.script(id), script(version, parse(yaml) as Spec));
      await storage.setItemRaw(keys.version(id), version);
      written = version;
      yaml = await readText(keys.spec(id));
    }
    return undefined;
  }

  return {
    storage,
    async put(id, spec, script) {
      assertId(id);
      const yaml = stringify(spec, { lineWidth: 0 });
      await storage.setItemRaw(keys.spec(id), yaml);
      return settle(id, yaml, script);
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
    async refreshScript(id, script) {
      assertId(id);
      const yaml = await readText(keys.spec(id));
      if (yaml === undefined) return false;
      const version = await contentHash(yaml);
      const [storedScript, storedVersion] = await Promise.all([readText(keys.script(id)), readText(keys.version(id))]);
      if (storedVersion === version && storedScript === script(version, parse(yaml) as Spec)) return false;
      await settle(id, yaml, script);
      return true;
    },
    async getScript(id) {
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
      const suffix = `:${WORKSPACE_FILE}`;
      const ids = (await storage.getKeys())
        .filter((key) => key.endsWith(suffix))
        .map((key) => key.slice(0, -suffix.length))
        .filter((id) => workspaceIdProblem(id) === undefined);
      return [...new Set(ids)].sort();
    },
  };
}

export { SCRIPT_FILE, WORKSPACE_FILE };
