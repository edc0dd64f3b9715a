/**
 * Builds the service from the configuration: storage backend, sandbox adapter, core. The only place
 * that chooses implementations; everything it builds takes plain options.
 */
import { mkdtemp } from "node:fs/promises";
import { tmpdir, totalmem } from "node:os";
import { join, resolve as resolvePath } from "node:path";
import { fileURLToPath } from "node:url";
import { createStorage, type Storage } from "unstorage";
import type { DependencyManager } from "../../runtime/dependencies.ts";
import { createFunctionsService, type FunctionsService, type NodeSandboxAdapter } from "../../runtime/service.ts";
import type { SandboxAdapter, WorkspaceSpec } from "../../runtime/types.ts";
import { createWorkspaceStore } from "../../storage/workspace-store.ts";
import type { ServiceConfig } from "./config.ts";
import { logger } from "./logger.ts";

export async function createStorageFromConfig(config: ServiceConfig): Promise<Storage> {
  switch (config.storageType) {
    case "memory": {
      const { default: memory } = await import("unstorage/drivers/memory");
      return createStorage({ driver: memory() });
    }
    case "redis": {
      const { default: redis } = await import("unstorage/drivers/redis");
      return createStorage({ driver: redis({ url: config.redisUrl, base: config.redisPrefix }) });
    }
    case "filesystem": {
      const { default: fsAtomic } = await import("../../storage/drivers/fs-atomic.ts");
      return createStorage({ driver: fsAtomic({ base: config.storageDir }) });
    }
    case "cloudflare-kv":
      // loadConfig offers it on the edge target only; server/utils/edge-service.ts builds that.
      throw new Error("cloudflare-kv storage exists only in the cloudflare-module build");
  }
}

export async function createSandboxFromConfig(config: ServiceConfig): Promise<NodeSandboxAdapter> {
  if (config.sandboxProcesses > 0) return createSandboxProcessesFromConfig(config);
  if (config.sandbox === "quickjs") {
    // On Node, QuickJS runs in worker threads so a runaway native builtin can still be ended.
    const { createQuickJsWorkerAdapter } = await import("../../runtime/adapters/quickjs/workers.ts");
    const adapter = createQuickJsWorkerAdapter(quickjsOptions(config, config.maxWorkers));
    await adapter.ready();
    return adapter;
  }
  const { createVm2Adapter } = await import("../../runtime/adapters/vm2/index.ts");
  return createVm2Adapter(vm2Options(config, config.maxWorkers));
}

function vm2Options(config: ServiceConfig, maxWorkers: number) {
  return {
    maxWorkers,
    idleTimeoutMs: config.workerIdleTimeoutMs,
    memoryLimitMb: config.workerMemoryLimitMb,
    builtinModules: config.builtinModules,
    bufferAllocLimitBytes: config.bufferAllocLimitBytes,
    externalMemoryLimitMb: config.workerExternalMemoryLimitMb,
    egress: config.egress,
  };
}

function quickjsOptions(config: ServiceConfig, maxRuntimes: number) {
  return { memoryLimitMb: config.quickjsMemoryLimitMb, maxRuntimes, idleTimeoutMs: config.workerIdleTimeoutMs, egress: config.egress };
}

/**
 * `FUNCTIONS_SANDBOX_PROCESS_MEMORY_MB` when unset: three quarters of the machine's memory (or of
 * the container's, when a cgroup limits it) shared between the processes, at least 1 GB each.
 */
function defaultSandboxProcessMemoryMb(processes: number): number {
  const constrained = process.constrainedMemory?.() ?? 0;
  const memory = constrained > 0 ? Math.min(constrained, totalmem()) : totalmem();
  return Math.max(1024, Math.floor((memory * 0.75) / processes / 1024 / 1024));
}

/**
 * The sandbox in `FUNCTIONS_SANDBOX_PROCESSES` child processes (runtime/adapters/sandbox-process):
 * they may read only the service's own files (the build directory, where this module is) and the
 * npm package directories, and write only a scratch directory. Workers are spread over them, so
 * `FUNCTIONS_WORKERS_MAX_LRU` is divided between the processes.
 */
async function createSandboxProcessesFromConfig(config: ServiceConfig): Promise<NodeSandboxAdapter> {
  const { createSandboxProcessAdapter } = await import("../../runtime/adapters/sandbox-process/index.ts");
  const perProcess = Math.ceil(config.maxWorkers / config.sandboxProcesses);
  const scratchDir = await mkdtemp(join(tmpdir(), "functions-sandbox-"));
  const common = {
    processes: config.sandboxProcesses,
    readableDirs: [fileURLToPath(new URL("./", import.meta.url)), resolvePath(config.nodeModulesDir), ...(config.sharedNodeModulesDir ? [resolvePath(config.sharedNodeModulesDir)] : [])],
    writableDir: scratchDir,
    memoryLimitMb: config.sandboxProcessMemoryMb ?? defaultSandboxProcessMemoryMb(config.sandboxProcesses),
  };
  if (config.sandbox === "quickjs") {
    const { QUICKJS_WORKER_URL } = await import("../../runtime/adapters/quickjs/workers.ts");
    const { createQuickJsAdapter } = await import("../../runtime/adapters/quickjs.ts");
    // Deploys compile bodies here, never run them: an in-process QuickJS serves that check.
    const local = createQuickJsAdapter();
    await local.ready();
    return createSandboxProcessAdapter({
      ...common,
      sandbox: { kind: "quickjs", options: { ...quickjsOptions(config, perProcess), workerUrl: QUICKJS_WORKER_URL.href } },
      flags: local.flags,
      checkSyntax: local.checkSyntax,
    });
  }
  const { checkNodeSyntax, VM2_WORKER_URL } = await import("../../runtime/adapters/vm2/index.ts");
  return createSandboxProcessAdapter({
    ...common,
    sandbox: { kind: "vm2", options: { ...vm2Options(config, perProcess), workerUrl: VM2_WORKER_URL.href } },
    flags: { languages: ["nodejs"], memoryLimit: true, builtins: true },
    checkSyntax: checkNodeSyntax,
  });
}

/** npm packages for Node functions: only the vm2 sandbox can load them. */
export async function createDependenciesFromConfig(config: ServiceConfig): Promise<DependencyManager | undefined> {
  if (config.sandbox !== "vm2") return undefined;
  const { createDependencyManager } = await import("../../runtime/dependencies.ts");
  return createDependencyManager({
    installRootDir: config.nodeModulesDir,
    sharedModulesDir: config.sharedNodeModulesDir,
    registryUrl: config.npmRegistry,
    allowedPackages: config.packagesWhitelist,
    blockedPackages: config.packagesBlacklist,
    logger,
  });
}

/**
 * Python functions go to the Python API at `PYTHON_API_URL`, or to one this service starts itself
 * (and stops on dispose). When that cannot start, Node functions still work and Python runs answer
 * `PythonApiError` saying why; the details go to the log only, as they name host paths.
 */
export async function createPythonAdapterFromConfig(config: ServiceConfig): Promise<SandboxAdapter> {
  const { createPythonApiAdapter, createUnavailablePythonAdapter } = await import("../../runtime/adapters/python-api.ts");
  const { createNodeFetch } = await import("../../runtime/node-fetch.ts");
  const fetch = createNodeFetch();
  if (config.pythonApiMode === "external") return createPythonApiAdapter({ baseUrl: config.pythonApiUrl, fetch });
  const { PythonNotFoundError, startBundledPythonApi } = await import("../../runtime/python-process.ts");
  try {
    // The service's own port: Python functions may never connect to it on a local address.
    const api = await startBundledPythonApi({ env: { ...config.bundledPythonApiEnv, FUNCTIONS_SERVICE_PORT: String(config.port) }, logger });
    logger.info("Python API started", { url: api.url });
    const adapter = createPythonApiAdapter({ baseUrl: api.url, source: "bundled, started by this service", fetch });
    return {
      ...adapter,
      async dispose() {
        await adapter.dispose();
        await api.stop();
      },
    };
  } catch (error) {
    logger.error("Python API did not start", { error: String((error as Error)?.message ?? error) });
    const cause = error instanceof PythonNotFoundError ? "python3 was not found on this machine" : "the bundled Python API could not be started (see the service's log)";
    return createUnavailablePythonAdapter(`Python functions cannot run: ${cause}. Install Python 3.10+ or set PYTHON_API_URL to a running Python API.`);
  }
}

export async function createServiceFromConfig(config: ServiceConfig): Promise<FunctionsService> {
  const store = createWorkspaceStore<WorkspaceSpec>(await createStorageFromConfig(config));
  const [node, python] = await Promise.all([createSandboxFromConfig(config), createPythonAdapterFromConfig(config)]);
  return createFunctionsService({
    store,
    node,
    python,
    dependencies: await createDependenciesFromConfig(config),
    runTimeoutMs: config.runTimeoutMs,
    pythonRunTimeoutMs: config.pythonRunTimeoutMs,
    logger,
  });
}
