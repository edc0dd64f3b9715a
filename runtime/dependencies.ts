/**
 * npm dependencies of workspaces: which packages a workspace needs, whether the service's policy
 * lets it import them, and their installation with the real npm client on the local disk.
 * Node-only (child processes, fs): the server creates it only with the vm2 sandbox.
 *
 * Layout under `installRootDir` (`NODE_MODULES_DIRECTORY`):
 *
 *     <key>/node_modules/...   one install per dependency set, shared by every workspace with that set
 *                              (key: hash of the sorted name@range list)
 *     <key>.lock/              exists while a process installs <key>
 *     .tmp-<key>-XXXXXX/       an install in progress, renamed to <key> once npm succeeded
 *     .npm-cache/              npm's cache, so the service never touches the user's ~/.npm
 *
 * `<key>` appears complete or not at all (rename is atomic), so an install on disk is trusted after
 * a restart. The lock only saves a second npm run: when two processes still race (a lock taken
 * over as stale), the second rename fails and its copy is thrown away.
 */
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, readdirSync } from "node:fs";
import { mkdir, mkdtemp, readdir, rename, rm, stat, writeFile } from "node:fs/promises";
import { isBuiltin } from "node:module";
import { join, resolve } from "node:path";
import type { ValidationIssue } from "./errors.ts";
import { nodeFunctions, requiredModules } from "./script.ts";
import type { ServiceLogger } from "./service.ts";
import type { RunError, WorkspaceModules, WorkspaceSpec } from "./types.ts";
import { isPackageName } from "./validate.ts";

export interface DependencyManagerOptions {
  /** Where installs go (`NODE_MODULES_DIRECTORY`); local disk, whatever the storage backend. */
  installRootDir: string;
  /**
   * Packages every workspace may use without an install (`SHARED_NODE_MODULES_DIRECTORY`): a folder
   * of package folders, or a folder whose `node_modules` holds them. Listed once, at creation.
   */
  sharedModulesDir?: string;
  /** `NPM_CONFIG_REGISTRY`. @default npm's own configuration */
  registryUrl?: string;
  /** `NODEJS_PACKAGES_WHITELIST_IMPORT`: when set, the only packages a function may import. */
  allowedPackages?: string[];
  /** `NODEJS_PACKAGES_BLACKLIST_IMPORT`: packages no function may import; wins over the allow-list. */
  blockedPackages?: string[];
  /** @default "npm" */
  npmCommand?: string;
  /** An npm install running longer is killed and fails. @default 300_000 */
  installTimeoutMs?: number;
  /** Another process's lock older than this is taken over; keep it above `installTimeoutMs`. @default 600_000 */
  lockStaleMs?: number;
  logger?: ServiceLogger;
}

export interface DependencyStatus {
  status: "none" | "installing" | "ready" | "failed";
  /** Packages installed for the workspace: name -> requested range (`latest` when not pinned). */
  packages: Record<string, string>;
  /** npm's reason, when `failed`. */
  error?: string;
}

export type DependencyManager = ReturnType<typeof createDependencyManager>;

/** What a workspace's spec asks for, under the current policy. Computed once per spec object. */
interface DependencyPlan {
  install: Record<string, string>;
  /** Undefined when there is nothing to install. */
  key?: string;
  modules?: WorkspaceModules;
  issues: ValidationIssue[];
}

type InstallState = { status: "installing"; done: Promise<void> } | { status: "ready" } | { status: "failed"; error: string };

const NPM_FLAGS = ["install", "--no-audit", "--no-fund", "--no-package-lock", "--ignore-scripts", "--omit=dev", "--no-bin-links", "--no-update-notifier", "--loglevel=error"];

/**
 * The package a module specifier loads, or undefined for builtins, relative and absolute paths.
 * @example packageName("lodash/fp") // "lodash";  packageName("@scope/pkg/sub") // "@scope/pkg";  packageName("node:fs") // undefined
 */
export function packageName(specifier: string): string | undefined {
  if (specifier.startsWith(".") || specifier.startsWith("/") || isBuiltin(specifier)) return undefined;
  const parts = specifier.split("/");
  const name = specifier.startsWith("@") ? parts.slice(0, 2).join("/") : parts[0];
  return isPackageName(name) ? name : undefined;
}

/** The install key of a dependency set: the same set gives the same key, whatever the order. */
export function dependencySetKey(packages: Record<string, string>): string {
  const list = Object.entries(packages).map(([name, range]) => `${name}@${range}`).sort();
  return createHash("sha256").update(list.join("\n")).digest("hex").slice(0, 16);
}

/** Package names in a node_modules-style folder, scoped ones as `@scope/name`. */
function listPackages(dir: string): string[] {
  const names: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    if (!entry.isDirectory() || entry.name.startsWith(".")) continue;
    if (entry.name.startsWith("@")) names.push(...listPackages(join(dir, entry.name)).map((inner) => `${entry.name}/${inner}`));
    else names.push(entry.name);
  }
  return names.filter(isPackageName);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * @example
 *   const dependencies = createDependencyManager({ installRootDir: "data/node_modules" })
 *   dependencies.check(spec)                 // [] or the packages the policy refuses
 *   dependencies.prepare(spec)               // starts the install in the background
 *   await dependencies.waitUntilReady(spec, { timeoutMs: 20_000 }) // undefined once installed, else a RunError
 */
export function createDependencyManager(options: DependencyManagerOptions) {
  const root = resolve(options.installRootDir);
  const cacheDir = join(root, ".npm-cache");
  const npmCommand = options.npmCommand ?? "npm";
  const installTimeoutMs = options.installTimeoutMs ?? 300_000;
  const lockStaleMs = options.lockStaleMs ?? 600_000;
  const logger = options.logger;
  const allowed = options.allowedPackages && new Set(options.allowedPackages);
  const blocked = new Set(options.blockedPackages ?? []);

  let sharedDir: string | undefined;
  if (options.sharedModulesDir) {
    const dir = resolve(options.sharedModulesDir);
    if (!existsSync(dir)) throw new Error(`The shared modules directory ${dir} does not exist`);
    sharedDir = existsSync(join(dir, "node_modules")) ? join(dir, "node_modules") : dir;
  }
  const shared = new Set(sharedDir ? listPackages(sharedDir) : []);

  const plans = new WeakMap<WorkspaceSpec, DependencyPlan>();
  const states = new Map<string, InstallState>();

  function policyProblem(name: string): string | undefined {
    if (blocked.has(name)) return "is blocked on this service";
    if (allowed && !allowed.has(name)) return "is not among the packages this service allows";
    return undefined;
  }

  function planOf(spec: WorkspaceSpec): DependencyPlan {
    let plan = plans.get(spec);
    if (plan) return plan;
    const issues: ValidationIssue[] = [];
    const required = new Set<string>();
    for (const [fnName, fn] of nodeFunctions(spec)) {
      for (const specifier of requiredModules(fn.code)) {
        const name = packageName(specifier);
        if (!name) continue;
        const problem = policyProblem(name);
        if (problem) issues.push({ path: `functions.${fnName}.code`, message: `package '${name}' ${problem} (function '${fnName}')` });
        else required.add(name);
      }
    }
    const install: Record<string, string> = {};
    if (!spec.disableNpmRegistry) {
      // Pins install even what the shared folder has: the workspace asked for that version.
      for (const [name, range] of Object.entries(spec.dependencies ?? {})) {
        const problem = policyProblem(name);
        if (problem) issues.push({ path: `dependencies.${name}`, message: `package '${name}' ${problem}` });
        else install[name] = range;
      }
      for (const name of required) if (!shared.has(name) && !Object.hasOwn(install, name)) install[name] = "latest";
    }
    const key = Object.keys(install).length > 0 ? dependencySetKey(install) : undefined;
    const names = [...new Set([...Object.keys(install), ...[...shared].filter((name) => !policyProblem(name))])].sort();
    const modules = names.length > 0 ? { names, installDir: key && join(root, key, "node_modules"), sharedDir } : undefined;
    plan = { install, key, modules, issues };
    plans.set(spec, plan);
    return plan;
  }

  function isInstalled(key: string, names: string[]): boolean {
    return names.every((name) => existsSync(join(root, key, "node_modules", name, "package.json")));
  }

  /** The known state of a set, or `ready` when a previous run of the service left it on disk. */
  function stateOf(key: string, packages: Record<string, string>): InstallState | undefined {
    const known = states.get(key);
    if (known || !isInstalled(key, Object.keys(packages))) return known;
    const ready: InstallState = { status: "ready" };
    states.set(key, ready);
    return ready;
  }

  /**
   * The state of a set, starting its install when it is neither on disk nor under way. A deploy
   * also retries a failed install; a run or a read finding nothing (a new disk, another instance's
   * deploy) says so in the log.
   */
  function ensure(key: string, packages: Record<string, string>, byDeploy: boolean): InstallState {
    const known = stateOf(key, packages);
    if (known && !(byDeploy && known.status === "failed")) return known;
    if (!known && !byDeploy) logger?.warn("Some dependencies are missing", { key, packages });
    const done = install(key, packages).then(
      () => void states.set(key, { status: "ready" }),
      (error: unknown) => {
        const reason = failureReason(error);
        states.set(key, { status: "failed", error: reason });
        logger?.error("Failed npm install", { key, packages, reason });
      },
    );
    const state: InstallState = { status: "installing", done };
    states.set(key, state);
    return state;
  }

  async function install(key: string, packages: Record<string, string>): Promise<void> {
    await mkdir(root, { recursive: true });
    const release = await lock(key);
    try {
      const names = Object.keys(packages);
      if (isInstalled(key, names)) return; // another process installed it while we waited
      const target = join(root, key);
      await rm(target, { recursive: true, force: true }); // an incomplete tree (files deleted by hand)
      const temp = await mkdtemp(join(root, `.tmp-${key}-`));
      try {
        await writeFile(join(temp, "package.json"), JSON.stringify({ private: true, dependencies: packages }));
        logger?.info(`Installing ${names.length} modules...`, { key, packages });
        const started = performance.now();
        await npmInstall(temp);
        await rename(temp, target);
        logger?.info("Dependencies installed", { key, durationMs: Math.round(performance.now() - started) });
      } catch (error) {
        await rm(temp, { recursive: true, force: true });
        if (!isInstalled(key, names)) throw error; // else: another process published the same set first
      }
    } finally {
      await release();
    }
  }

  /** Cross-process: a directory only one process can create. Waits while another holds it. */
  async function lock(key: string): Promise<() => Promise<void>> {
    const path = join(root, `${key}.lock`);
    for (;;) {
      try {
        await mkdir(path);
        return () => rm(path, { recursive: true, force: true });
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "EEXIST") throw error;
      }
      const since = (await stat(path).catch(() => undefined))?.mtimeMs;
      if (since !== undefined && Date.now() - since > lockStaleMs) await rm(path, { recursive: true, force: true }); // its holder died
      else await sleep(100);
    }
  }

  function npmInstall(dir: string): Promise<void> {
    const args = [...NPM_FLAGS, `--cache=${cacheDir}`, ...(options.registryUrl ? [`--registry=${options.registryUrl}`] : [])];
    return new Promise((resolveInstall, reject) => {
      execFile(npmCommand, args, { cwd: dir, timeout: installTimeoutMs, maxBuffer: 16 * 1024 * 1024 }, (error, _stdout, stderr) => {
        if (error) reject(Object.assign(error, { stderr }));
        else resolveInstall();
      });
    });
  }

  /**
   * npm's own words without the host's paths: its first error lines, which name the cause (`code
   * E404; 404 Not Found - GET .../name`); the lines after them are generic hints.
   */
  function failureReason(error: unknown): string {
    const failure = error as NodeJS.ErrnoException & { stderr?: string; killed?: boolean };
    if (failure.killed) return `npm install did not finish within ${installTimeoutMs} ms`;
    if (failure.code === "ENOENT" && failure.syscall?.startsWith("spawn")) return `the npm client (${npmCommand}) was not found`;
    const lines = (failure.stderr ?? "")
      .split("\n")
      .map((line) => line.replace(/^npm (error|ERR!)/, "").replace(/\s+/g, " ").trim())
      .filter((line) => line.includes(" ") && !line.includes("A complete log of this run"));
    const reason = lines.slice(0, 4).join("; ") || failure.message;
    return reason.replaceAll(root, "<install dir>");
  }

  async function removeLeftovers(): Promise<void> {
    const entries = await readdir(root).catch(() => []);
    for (const entry of entries.filter((name) => name.startsWith(".tmp-"))) {
      const path = join(root, entry);
      const age = Date.now() - ((await stat(path).catch(() => undefined))?.mtimeMs ?? Date.now());
      if (age > lockStaleMs) await rm(path, { recursive: true, force: true });
    }
  }
  // Installs cut off by a crash leave their temp folder; one older than any live install is garbage.
  removeLeftovers().catch((error: unknown) => logger?.warn("Could not remove old temporary install folders", { error: String(error) }));

  return {
    /** Packages the policy refuses, as deploy validation issues naming the package and the function. */
    check(spec: WorkspaceSpec): ValidationIssue[] {
      return planOf(spec).issues;
    },

    /** What the sandbox may load for this workspace; undefined when no package is available. */
    modules(spec: WorkspaceSpec): WorkspaceModules | undefined {
      return planOf(spec).modules;
    },

    /** After a deploy: starts the install in the background (again, when it failed before). */
    prepare(spec: WorkspaceSpec): void {
      const plan = planOf(spec);
      if (plan.key) ensure(plan.key, plan.install, true);
    },

    status(spec: WorkspaceSpec): DependencyStatus {
      const plan = planOf(spec);
      if (!plan.key) return { status: "none", packages: {} };
      const state = ensure(plan.key, plan.install, false);
      return { status: state.status, packages: plan.install, ...(state.status === "failed" ? { error: state.error } : {}) };
    },

    /**
     * Before a run: waits for the workspace's install, at most `timeoutMs`. Undefined when the
     * packages are there, else the run's error (`DependencyInstalling` or `DependencyInstallFailed`).
     */
    async waitUntilReady(spec: WorkspaceSpec, wait: { timeoutMs: number; signal?: AbortSignal }): Promise<RunError | undefined> {
      const plan = planOf(spec);
      if (!plan.key) return undefined;
      let state = ensure(plan.key, plan.install, false);
      if (state.status === "installing") {
        let timer: NodeJS.Timeout | undefined;
        const gaveUp = new Promise<void>((resolveWait) => {
          timer = setTimeout(resolveWait, wait.timeoutMs);
          wait.signal?.addEventListener("abort", () => resolveWait(), { once: true });
        });
        await Promise.race([state.done, gaveUp]);
        clearTimeout(timer);
        state = states.get(plan.key)!;
      }
      if (state.status === "installing") {
        logger?.warn("Dependencies are still being installed", { key: plan.key, packages: plan.install });
        return { kind: "dependency", name: "DependencyInstalling", message: "Dependencies are still being installed" };
      }
      if (state.status === "failed") return { kind: "dependency", name: "DependencyInstallFailed", message: `Failed to install dependencies: ${state.error}` };
      return undefined;
    },
  };
}
