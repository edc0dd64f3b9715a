/**
 * Builds the service from the configuration: storage backend, sandbox adapter, core. The only place
 * that chooses implementations; everything it builds takes plain options.
 */
import { createStorage, type Storage } from "unstorage";
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
  }
}

export async function createSandboxFromConfig(config: ServiceConfig): Promise<NodeSandboxAdapter> {
  const { createVm2Adapter } = await import("../../runtime/adapters/vm2/index.ts");
  return createVm2Adapter({
    maxWorkers: config.maxWorkers,
    idleTimeoutMs: config.workerIdleTimeoutMs,
    memoryLimitMb: config.workerMemoryLimitMb,
    builtinModules: config.builtinModules,
    bufferAllocLimitBytes: config.bufferAllocLimitBytes,
  });
}

/**
 * Python functions go to the Python API at `PYTHON_API_URL`, or to one this service starts itself
 * (and stops on dispose). When that cannot start, Node functions still work and Python runs answer
 * `PythonApiError` saying why; the details go to the log only, as they name host paths.
 */
export async function createPythonAdapterFromConfig(config: ServiceConfig): Promise<SandboxAdapter> {
  const { createPythonApiAdapter, createUnavailablePythonAdapter } = await import("../../runtime/adapters/python-api.ts");
  if (config.pythonApiMode === "external") return createPythonApiAdapter({ baseUrl: config.pythonApiUrl });
  const { PythonNotFoundError, startBundledPythonApi } = await import("../../runtime/python-process.ts");
  try {
    const api = await startBundledPythonApi({ env: config.bundledPythonApiEnv, logger });
    logger.info("Python API started", { url: api.url });
    const adapter = createPythonApiAdapter({ baseUrl: api.url, source: "bundled, started by this service" });
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
    runTimeoutMs: config.runTimeoutMs,
    pythonRunTimeoutMs: config.pythonRunTimeoutMs,
    logger,
  });
}
