/**
 * Configuration from environment variables, with the plain names of the original service (see
 * docs/configuration.md). Read once at start-up and validated: a bad value stops the service with a
 * message naming the variable.
 */

import { parseEgressList, type EgressOptions } from "../../runtime/egress.mjs";
import { isPackageName } from "../../runtime/validate.ts";

export type StorageType = "filesystem" | "memory" | "redis" | "cloudflare-kv";
export type SandboxName = "vm2" | "quickjs";
export type PythonApiMode = "external" | "bundled";
/**
 * What the build runs on: Node; Deno (its Node compatibility runs everything but vm2); or an edge
 * runtime (workerd) with neither worker threads nor a file system.
 */
export type ConfigTarget = "node" | "deno" | "edge";

export interface ServiceConfig {
  port: number;
  storageType: StorageType;
  storageDir: string;
  redisUrl: string;
  /** Prefix of every key in Redis (`FUNCTIONS_STORAGE_REDIS_PREFIX`): instances sharing it share workspaces. */
  redisPrefix: string;
  /** `FUNCTIONS_STORAGE_KV_BINDING`: the worker's KV namespace binding that holds the workspaces (edge). */
  kvBinding: string;
  sandbox: SandboxName;
  /** `FUNCTIONS_QUICKJS_MEMORY_LIMIT_MB`: memory a workspace's QuickJS runtime may grow by. */
  quickjsMemoryLimitMb: number;
  /** `FUNCTIONS_SANDBOX_PROCESSES`: child processes hosting the sandbox; 0 keeps it in this process. */
  sandboxProcesses: number;
  /** `FUNCTIONS_SANDBOX_PROCESS_MEMORY_MB`: resident memory per sandbox process (0: none); unset: derived from the machine's. */
  sandboxProcessMemoryMb?: number;

  runTimeoutMs: number;
  maxWorkers: number;
  builtinModules: string[];
  npmRegistry?: string;
  /** `NODE_MODULES_DIRECTORY`: where workspace npm installs go (local disk). */
  nodeModulesDir: string;
  /** `SHARED_NODE_MODULES_DIRECTORY`: packages every workspace may use without an install. */
  sharedNodeModulesDir?: string;
  /** `NODEJS_PACKAGES_WHITELIST_IMPORT`; undefined: every package. */
  packagesWhitelist?: string[];
  /** `NODEJS_PACKAGES_BLACKLIST_IMPORT`; wins over the whitelist. */
  packagesBlacklist: string[];
  workerMemoryLimitMb: number;
  /** `NODE_WORKER_MAX_EXTERNAL_MEMORY_MB`: ArrayBuffers and Buffers per vm2 worker, in sum. */
  workerExternalMemoryLimitMb: number;
  workerIdleTimeoutMs: number;
  updateScriptsOnStartup: boolean;
  requestMaxBytes: number;
  bufferAllocLimitBytes: number;
  /** `FUNCTIONS_EGRESS_POLICY`, `FUNCTIONS_EGRESS_ALLOW`, `FUNCTIONS_EGRESS_DENY`: what function code may connect to. */
  egress: EgressOptions;
  /** `FUNCTIONS_API_KEY`: when set, every request but the health check must carry it as a Bearer token. */
  apiKey?: string;
  /** `external`: use `pythonApiUrl`; `bundled`: start runtime/python/server.py and use it. */
  pythonApiMode: PythonApiMode;
  pythonApiUrl: string;
  pythonRunTimeoutMs: number;
  /** The bundled Python API's whole environment: its own settings, and nothing secret. */
  bundledPythonApiEnv: Record<string, string>;
}

export class ConfigError extends Error {
  constructor(readonly variable: string, problem: string) {
    super(`Invalid configuration: ${variable} ${problem}`);
    this.name = "ConfigError";
  }
}

/** Variables by name. Edge runtimes hand over every binding: vars may be numbers or booleans, and the
 * KV namespace bindings are objects. */
type Env = Record<string, unknown>;

const SIZE_UNITS: Record<string, number> = { b: 1, kb: 1024, mb: 1024 ** 2, gb: 1024 ** 3 };

/** Parses a size like body-parser does: `512`, `100kb`, `1mb`, `1.5gb` (1kb = 1024 bytes). */
export function parseSize(text: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb)?\s*$/i.exec(text);
  if (!match) return undefined;
  return Math.floor(Number(match[1]) * SIZE_UNITS[(match[2] ?? "b").toLowerCase()]);
}

/** A Redis key prefix: one or more `:`-separated segments of letters, digits, `.`, `_` and `-`. */
function redisPrefix(text: string): string {
  if (!/^[\w.-]+(?::[\w.-]+)*$/.test(text)) {
    throw new ConfigError("FUNCTIONS_STORAGE_REDIS_PREFIX", `must be segments of letters, digits, '.', '_' and '-' joined by ':', got ${JSON.stringify(text)}`);
  }
  return text;
}

/** A KV namespace binding, as far as the `cloudflare-kv-binding` driver needs one. */
function isKvNamespace(binding: unknown): boolean {
  return typeof binding === "object" && binding !== null && ["get", "put", "delete", "list"].every((method) => typeof (binding as Record<string, unknown>)[method] === "function");
}

/** Off Node the defaults are the ones that exist there (QuickJS; KV on the edge) and the rest is refused. */
export function loadConfig(env: Env = process.env, target: ConfigTarget = "node"): ServiceConfig {
  const edge = target === "edge";
  const read = (name: string, fallback: string) => {
    const raw = env[name];
    const value = typeof raw === "number" || typeof raw === "boolean" ? String(raw) : typeof raw === "string" ? raw.trim() : "";
    return value === "" ? fallback : value;
  };
  const integer = (name: string, fallback: number, min: number, unit = "") => {
    const text = read(name, String(fallback));
    const value = Number(unit ? text.replace(new RegExp(`\\s*${unit}$`, "i"), "") : text);
    if (!Number.isInteger(value) || value < min) throw new ConfigError(name, `must be an integer >= ${min}${unit ? ` (optionally followed by ${unit})` : ""}, got ${JSON.stringify(text)}`);
    return value;
  };
  const oneOf = <T extends string>(name: string, fallback: T, allowed: readonly T[]): T => {
    const value = read(name, fallback).toLowerCase() as T;
    if (!allowed.includes(value)) throw new ConfigError(name, `must be one of ${allowed.join(", ")}, got ${JSON.stringify(value)}`);
    return value;
  };
  const size = (name: string, fallback: string) => {
    const text = read(name, fallback);
    const bytes = parseSize(text);
    if (bytes === undefined || bytes <= 0) throw new ConfigError(name, `must be a size like 100kb or 1mb, got ${JSON.stringify(text)}`);
    return bytes;
  };
  const url = (name: string, fallback: string) => {
    const text = read(name, fallback);
    try {
      return new URL(text).toString().replace(/\/$/, "");
    } catch {
      throw new ConfigError(name, `must be a URL, got ${JSON.stringify(text)}`);
    }
  };
  const packageList = (name: string): string[] | undefined => {
    const text = read(name, "");
    if (text === "") return undefined;
    const names = text.split(",").map((s) => s.trim()).filter(Boolean);
    const invalid = names.find((n) => !isPackageName(n));
    if (invalid !== undefined) throw new ConfigError(name, `has an invalid npm package name ${JSON.stringify(invalid)}`);
    return names;
  };
  const builtins = read("NODE_BUILTIN_MODULES", read("NODEJS_BUILTIN_MODULES", "http, https, url, util, zlib, dns, stream, buffer, crypto"));
  const builtinModules = builtins.split(",").map((s) => s.trim().replace(/^node:/, "")).filter(Boolean);
  for (const name of builtinModules) {
    if (!/^[a-z_][a-z0-9_/]*$/.test(name)) throw new ConfigError("NODE_BUILTIN_MODULES", `has an invalid module name ${JSON.stringify(name)}`);
  }
  const updateScripts = read("UPDATE_SCRIPTS_ON_STARTUP", "no").toLowerCase();
  if (!["yes", "true", "no", "false", "1", "0"].includes(updateScripts)) {
    throw new ConfigError("UPDATE_SCRIPTS_ON_STARTUP", `must be yes, true, no or false, got ${JSON.stringify(updateScripts)}`);
  }
  const autostart = read("PYTHON_API_AUTOSTART", "yes").toLowerCase();
  if (!["yes", "true", "1", "no", "false", "0"].includes(autostart)) {
    throw new ConfigError("PYTHON_API_AUTOSTART", `must be yes, true, no or false, got ${JSON.stringify(autostart)}`);
  }
  const pythonAutostart = ["yes", "true", "1"].includes(autostart);
  if (read("KERNEL_POOL_SIZE", "") !== "") integer("KERNEL_POOL_SIZE", 1, 1); // named here rather than by a failing child
  const port = integer("PORT", 4000, 0);
  const egressList = (name: string): string[] => {
    const entries = read(name, "").split(",").map((s) => s.trim()).filter(Boolean);
    try {
      parseEgressList(entries);
    } catch (error) {
      throw new ConfigError(name, `has an invalid entry: ${(error as Error).message}`);
    }
    return entries;
  };
  // Never echoed: a config error must not print the key.
  const apiKey = read("FUNCTIONS_API_KEY", "");
  if (apiKey !== "" && !/^[\w.~+/=-]{16,}$/.test(apiKey)) throw new ConfigError("FUNCTIONS_API_KEY", "must be at least 16 characters of letters, digits and -._~+/=");
  if (port > 65535) throw new ConfigError("PORT", `must be at most 65535, got ${port}`);
  const storageType = edge
    ? oneOf("FUNCTIONS_STORAGE_TYPE", "cloudflare-kv", ["cloudflare-kv", "memory"] as const)
    : oneOf("FUNCTIONS_STORAGE_TYPE", "filesystem", ["filesystem", "memory", "redis"] as const);
  const kvBinding = read("FUNCTIONS_STORAGE_KV_BINDING", "FUNCTIONS_KV");
  const sandboxProcesses = integer("FUNCTIONS_SANDBOX_PROCESSES", target === "node" ? 2 : 0, 0);
  // They talk over Node's IPC channel, which Deno's child processes lack (and workerd has no processes).
  if (target !== "node" && sandboxProcesses > 0) throw new ConfigError("FUNCTIONS_SANDBOX_PROCESSES", `must be 0 on ${target === "deno" ? "Deno" : "edge runtimes"}, got ${sandboxProcesses}`);
  if (storageType === "cloudflare-kv" && !isKvNamespace(env[kvBinding])) {
    throw new ConfigError("FUNCTIONS_STORAGE_KV_BINDING", `names no KV namespace binding of this worker: bind one as ${JSON.stringify(kvBinding)} ([[kv_namespaces]] in wrangler.toml)`);
  }
  return {
    port,
    storageType,
    storageDir: read("FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH", "data/functions/"),
    redisUrl: url("FUNCTIONS_STORAGE_REDIS_URL", "redis://127.0.0.1:6379"),
    redisPrefix: redisPrefix(read("FUNCTIONS_STORAGE_REDIS_PREFIX", "functions")),
    kvBinding,
    // vm2 needs Node itself: edge runtimes have no worker threads, and its worker fails on Deno.
    sandbox: target === "node" ? oneOf("FUNCTIONS_SANDBOX", "vm2", ["vm2", "quickjs"] as const) : oneOf("FUNCTIONS_SANDBOX", "quickjs", ["quickjs"] as const),
    quickjsMemoryLimitMb: integer("FUNCTIONS_QUICKJS_MEMORY_LIMIT_MB", 64, 1),
    sandboxProcesses,
    sandboxProcessMemoryMb: read("FUNCTIONS_SANDBOX_PROCESS_MEMORY_MB", "") === "" ? undefined : integer("FUNCTIONS_SANDBOX_PROCESS_MEMORY_MB", 0, 0, "MB"),
    runTimeoutMs: integer("FUNCTIONS_RUN_TIMEOUT", 20_000, 1),
    maxWorkers: integer("FUNCTIONS_WORKERS_MAX_LRU", 500, 1),
    builtinModules,
    npmRegistry: read("NPM_CONFIG_REGISTRY", "") ? url("NPM_CONFIG_REGISTRY", "") : undefined,
    nodeModulesDir: read("NODE_MODULES_DIRECTORY", "data/node_modules/"),
    sharedNodeModulesDir: read("SHARED_NODE_MODULES_DIRECTORY", "") || undefined,
    packagesWhitelist: packageList("NODEJS_PACKAGES_WHITELIST_IMPORT"),
    packagesBlacklist: packageList("NODEJS_PACKAGES_BLACKLIST_IMPORT") ?? [],
    workerMemoryLimitMb: integer("NODE_WORKER_MAX_OLD_GENERATION_SIZE_MB", 100, 8, "MB"),
    workerExternalMemoryLimitMb: integer("NODE_WORKER_MAX_EXTERNAL_MEMORY_MB", 256, 8, "MB"),
    workerIdleTimeoutMs: integer("INACTIVE_NODE_WORKER_DELETION_TIMEOUT", 3600, 1) * 1000,
    updateScriptsOnStartup: ["yes", "true", "1"].includes(updateScripts),
    requestMaxBytes: size("REQUEST_MAX_SIZE", "1mb"),
    bufferAllocLimitBytes: size("FUNCTIONS_BUFFER_MAX_SIZE", "64mb"),
    egress: {
      policy: oneOf("FUNCTIONS_EGRESS_POLICY", "public-only", ["public-only", "allow-all"] as const),
      allow: egressList("FUNCTIONS_EGRESS_ALLOW"),
      deny: egressList("FUNCTIONS_EGRESS_DENY"),
      servicePort: port,
    },
    apiKey: apiKey || undefined,
    pythonApiUrl: url("PYTHON_API_URL", "http://localhost:8000"),
    pythonRunTimeoutMs: integer("PYTHON_FUNCTIONS_RUN_TIMEOUT", 20_000, 1),
    // An explicit PYTHON_API_URL is used as it is; without one, the service starts its own.
    pythonApiMode: read("PYTHON_API_URL", "") !== "" || !pythonAutostart ? "external" : "bundled",
    bundledPythonApiEnv: Object.fromEntries(BUNDLED_PYTHON_API_VARIABLES.flatMap((name) => (typeof env[name] === "string" ? [[name, env[name] as string]] : []))),
  };
}

/**
 * Handed to the bundled Python API as they are: its own settings, the egress policy, and PATH and
 * locale for python3. The service's own port goes as FUNCTIONS_SERVICE_PORT (service.ts).
 */
const BUNDLED_PYTHON_API_VARIABLES = [
  "PATH",
  "LANG",
  "LC_ALL",
  "TZ",
  "PYTHONPATH",
  "KERNEL_POOL_SIZE",
  "PYTHON_KERNELS_MAX",
  "PYTHON_KERNEL_IDLE_TIMEOUT",
  "PYTHON_BUILTIN_MODULES",
  "PYTHON_PACKAGES_WHITELIST_IMPORT",
  "PYTHON_MEMORY_LIMIT_MB",
  "PYTHON_FUNCTIONS_RUN_TIMEOUT",
  // The egress policy holds for Python functions too (the kernels check it on every connection).
  "FUNCTIONS_EGRESS_POLICY",
  "FUNCTIONS_EGRESS_ALLOW",
  "FUNCTIONS_EGRESS_DENY",
];
