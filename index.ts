/**
 * The public API of functions-service, for other apps that embed it. Everything here runs wherever
 * h3 and unstorage do; the Node-only pieces have subpaths of their own, so edge bundles never pull
 * `worker_threads` or `fs`:
 *
 *   functions-service            the core, the workspace store, the HTTP API, the Python API adapter
 *   functions-service/vm2        createVm2Adapter: the Node sandbox (worker threads + vm2)
 *   functions-service/fs-atomic  the unstorage driver writing each key atomically to a directory
 *
 * @example Mount the whole HTTP API under /functions of an h3 app (see docs/embedding.md)
 *   const store = createWorkspaceStore(createStorage({ driver: fsAtomic({ base: "data/functions" }) }))
 *   const service = createFunctionsService({ store, node: createVm2Adapter() })
 *   app.use("/functions", createApiHandler({ service, requestMaxBytes: 1024 * 1024 }))
 */
export { createApiHandler, type ApiOptions } from "./server/api.ts";
export {
  createFunctionsService,
  type FunctionsService,
  type FunctionsServiceOptions,
  type NodeSandboxAdapter,
  type RunCallOptions,
  type ServiceLogger,
} from "./runtime/service.ts";
export { contentHash, createWorkspaceStore, type ScriptGenerator, type StoredWorkspace, type WorkspaceStore } from "./storage/workspace-store.ts";
export { keys, workspaceIdProblem } from "./storage/keys.ts";
export { compileWorkspace, SCRIPT_FILENAME } from "./runtime/script.ts";
export { parseWorkspaceSpec } from "./runtime/validate.ts";
export { ServiceError, type ServiceErrorCode, type ValidationIssue } from "./runtime/errors.ts";
export { createPythonApiAdapter, type PythonApiAdapterOptions } from "./runtime/adapters/python-api.ts";
export type * from "./runtime/types.ts";
