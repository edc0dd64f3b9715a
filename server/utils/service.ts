/**
 * Builds the service from the configuration: storage backend, sandbox adapter, core. The only place
 * that chooses implementations; everything it builds takes plain options.
 */
import { createStorage, type Storage } from "unstorage";
import { createFunctionsService, type FunctionsService, type NodeSandboxAdapter } from "../../runtime/service.ts";
import type { WorkspaceSpec } from "../../runtime/types.ts";
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
      return createStorage({ driver: redis({ url: config.redisUrl, base: "functions" }) });
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

export async function createServiceFromConfig(config: ServiceConfig): Promise<FunctionsService> {
  const store = createWorkspaceStore<WorkspaceSpec>(await createStorageFromConfig(config));
  const node = await createSandboxFromConfig(config);
  return createFunctionsService({
    store,
    node,
    runTimeoutMs: config.runTimeoutMs,
    pythonRunTimeoutMs: config.pythonRunTimeoutMs,
    logger,
  });
}
