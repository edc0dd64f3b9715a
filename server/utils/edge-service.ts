/**
 * Builds the service for edge runtimes (the `cloudflare-module` preset, run by workerd): QuickJS in
 * this isolate, workspaces in a KV namespace (or in memory), Python functions forwarded to
 * `PYTHON_API_URL` by the global fetch. Edge builds bundle this file in place of ./service.ts (the
 * `#service-builder` alias of nitro.config.ts), so nothing here may reach vm2, worker threads or the
 * file system.
 */
import variant from "@jitl/quickjs-wasmfile-release-sync";
// workerd compiles no WebAssembly from bytes: the wasm is deployed as a module of the worker, and
// imported compiled (nitro.config.ts defines the alias; unwasm's `?module` keeps it a Module).
import quickJsWasm from "#quickjs-wasm/emscripten-module.wasm?module";
import { newQuickJSWASMModuleFromVariant, newVariant } from "quickjs-emscripten-core";
import { createStorage, type Storage } from "unstorage";
import cloudflareKvBinding from "unstorage/drivers/cloudflare-kv-binding";
import memory from "unstorage/drivers/memory";
import { createPythonApiAdapter, createUnavailablePythonAdapter } from "../../runtime/adapters/python-api.ts";
import { createQuickJsAdapter } from "../../runtime/adapters/quickjs.ts";
import { createFunctionsService, type FunctionsService } from "../../runtime/service.ts";
import type { WorkspaceSpec } from "../../runtime/types.ts";
import { createWorkspaceStore } from "../../storage/workspace-store.ts";
import type { ServiceConfig } from "./config.ts";
import { logger } from "./logger.ts";

/**
 * Workers give an isolate 128 MB, the WebAssembly memory included: QuickJS's memory, which never
 * shrinks, stays under this so the isolate keeps room for its own heap.
 */
const EDGE_SHARED_MEMORY_LIMIT_MB = 96;

function createEdgeStorage(config: ServiceConfig): Storage {
  // Memory is per isolate: workspaces vanish when it is evicted and isolates do not share them.
  if (config.storageType === "memory") return createStorage({ driver: memory() });
  // By name: the driver finds the binding in the worker's env (checked by loadConfig at start-up).
  return createStorage({ driver: cloudflareKvBinding({ binding: config.kvBinding }) });
}

/** The edge counterpart of `createServiceFromConfig` in ./service.ts, under the same name. */
export async function createServiceFromConfig(config: ServiceConfig): Promise<FunctionsService> {
  const node = createQuickJsAdapter({
    memoryLimitMb: Math.min(config.quickjsMemoryLimitMb, EDGE_SHARED_MEMORY_LIMIT_MB),
    sharedMemoryLimitMb: EDGE_SHARED_MEMORY_LIMIT_MB,
    maxRuntimes: config.maxWorkers,
    idleTimeoutMs: config.workerIdleTimeoutMs,
    module: newQuickJSWASMModuleFromVariant(newVariant(variant, { wasmModule: quickJsWasm })),
  });
  await node.ready();
  const python =
    config.pythonApiMode === "external"
      ? createPythonApiAdapter({ baseUrl: config.pythonApiUrl })
      : createUnavailablePythonAdapter("Python functions cannot run: an edge build starts no Python API of its own. Set PYTHON_API_URL to a running Python API.");
  return createFunctionsService({
    store: createWorkspaceStore<WorkspaceSpec>(createEdgeStorage(config)),
    node,
    python,
    runTimeoutMs: config.runTimeoutMs,
    pythonRunTimeoutMs: config.pythonRunTimeoutMs,
    logger,
  });
}
