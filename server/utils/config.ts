/**
 * Configuration from environment variables, with the plain names of the original service (see
 * docs/configuration.md). Read once at start-up and validated: a bad value stops the service with a
 * message naming the variable.
 */

export type StorageType = "filesystem" | "memory" | "redis";
export type SandboxName = "vm2" | "quickjs";
export type PythonApiMode = "external" | "bundled";

export interface ServiceConfig {
  port: number;
  storageType: StorageType;
  storageDir: string;
  redisUrl: string;
  /** Prefix of every key in Redis (`FUNCTIONS_STORAGE_REDIS_PREFIX`): instances sharing it share workspaces. */
  redisPrefix: string;
  sandbox: SandboxName;
  runTimeoutMs: number;
  maxWorkers: number;
  builtinModules: string[];
  npmRegistry?: string;
  workerMemoryLimitMb: number;
  workerIdleTimeoutMs: number;
  updateScriptsOnStartup: boolean;
  requestMaxBytes: number;
  bufferAllocLimitBytes: number;
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

type Env = Record<string, string | undefined>;

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

export function loadConfig(env: Env = process.env): ServiceConfig {
  const read = (name: string, fallback: string) => {
    const value = env[name];
    return value === undefined || value.trim() === "" ? fallback : value.trim();
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
  if (port > 65535) throw new ConfigError("PORT", `must be at most 65535, got ${port}`);
  return {
    port,
    storageType: oneOf("FUNCTIONS_STORAGE_TYPE", "filesystem", ["filesystem", "memory", "redis"] as const),
    storageDir: read("FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH", "data/functions/"),
    redisUrl: url("FUNCTIONS_STORAGE_REDIS_URL", "redis://127.0.0.1:6379"),
    redisPrefix: redisPrefix(read("FUNCTIONS_STORAGE_REDIS_PREFIX", "functions")),
    sandbox: oneOf("FUNCTIONS_SANDBOX", "vm2", ["vm2", "quickjs"] as const),
    runTimeoutMs: integer("FUNCTIONS_RUN_TIMEOUT", 20_000, 1),
    maxWorkers: integer("FUNCTIONS_WORKERS_MAX_LRU", 500, 1),
    builtinModules,
    npmRegistry: env.NPM_CONFIG_REGISTRY ? url("NPM_CONFIG_REGISTRY", "") : undefined,
    workerMemoryLimitMb: integer("NODE_WORKER_MAX_OLD_GENERATION_SIZE_MB", 100, 8, "MB"),
    workerIdleTimeoutMs: integer("INACTIVE_NODE_WORKER_DELETION_TIMEOUT", 3600, 1) * 1000,
    updateScriptsOnStartup: ["yes", "true", "1"].includes(updateScripts),
    requestMaxBytes: size("REQUEST_MAX_SIZE", "1mb"),
    bufferAllocLimitBytes: size("FUNCTIONS_BUFFER_MAX_SIZE", "64mb"),
    pythonApiUrl: url("PYTHON_API_URL", "http://localhost:8000"),
    pythonRunTimeoutMs: integer("PYTHON_FUNCTIONS_RUN_TIMEOUT", 20_000, 1),
    // An explicit PYTHON_API_URL is used as it is; without one, the service starts its own.
    pythonApiMode: read("PYTHON_API_URL", "") !== "" || !pythonAutostart ? "external" : "bundled",
    bundledPythonApiEnv: Object.fromEntries(BUNDLED_PYTHON_API_VARIABLES.flatMap((name) => (env[name] === undefined ? [] : [[name, env[name]!]]))),
  };
}

/** Handed to the bundled Python API as they are: its own settings, and PATH and locale for python3. */
const BUNDLED_PYTHON_API_VARIABLES = [
  "PATH",
  "LANG",
  "LC_ALL",
  "TZ",
  "PYTHONPATH",
  "KERNEL_POOL_SIZE",
  "PYTHON_BUILTIN_MODULES",
  "PYTHON_PACKAGES_WHITELIST_IMPORT",
  "PYTHON_MEMORY_LIMIT_MB",
  "PYTHON_FUNCTIONS_RUN_TIMEOUT",
];
