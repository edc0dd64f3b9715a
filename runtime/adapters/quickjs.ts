/**
 * The QuickJS adapter, in-process: every workspace gets a QuickJS runtime in this thread. For
 * runtimes without worker threads (workerd and other edge targets); on Node use
 * `createQuickJsWorkerAdapter` (./quickjs/workers.ts), which can also stop a runaway native builtin.
 *
 * Limits (see ./quickjs/engine.mjs): run timeout, hard for JavaScript code and pending promises,
 * but a long native builtin (`new Array(1e8).join("x")`) holds this thread until it returns; where
 * the clock stands still while code runs (deployed Cloudflare Workers), a loop is ended by a count
 * of interrupt polls instead (soft), and the platform's CPU limit is the hard bound. Memory: hard,
 * per workspace and for all the workspaces of the adapter's QuickJS module.
 *
 * @example
 *   const adapter = createQuickJsAdapter({ memoryLimitMb: 32 })
 *   await adapter.ready()
 *   await adapter.run({ workspace, functionName: "hello", parameters: {} }, { timeoutMs: 1000 })
 */
import variant from "@jitl/quickjs-wasmfile-release-sync";
import { newQuickJSWASMModuleFromVariant, type QuickJSWASMModule } from "quickjs-emscripten-core";
import { defineQuickJsAdapter, engineOptions, type QuickJsAdapterOptions, type QuickJsBackend } from "./quickjs/adapter.ts";
import { createQuickJsEngine } from "./quickjs/engine.mjs";

export interface QuickJsInProcessAdapterOptions extends QuickJsAdapterOptions {
  /** The `fetch` functions reach. @default globalThis.fetch */
  fetch?: typeof fetch;
}

let defaultModule: Promise<QuickJSWASMModule> | undefined;

/** The default QuickJS build, loaded once per process and shared by the adapters that do not bring one. */
export function loadQuickJs(): Promise<QuickJSWASMModule> {
  return (defaultModule ??= newQuickJSWASMModuleFromVariant(variant));
}

export function createQuickJsAdapter(options: QuickJsInProcessAdapterOptions = {}) {
  const module = Promise.resolve(options.module ?? loadQuickJs());
  const engine = module.then((loaded) => createQuickJsEngine(loaded, { ...engineOptions(options), fetch: options.fetch }));
  let current: Awaited<typeof engine> | undefined;
  engine.then((created) => (current = created), () => undefined);

  const backend: QuickJsBackend = {
    async ready() {
      await engine;
    },
    async load(workspace) {
      (await engine).load(workspace.id, workspace.version, workspace.script);
    },
    async run(id, workspace, request) {
      const loaded = await engine;
      loaded.load(workspace.id, workspace.version, workspace.script);
      return loaded.run(id, { workspaceId: workspace.id, ...request });
    },
    cancel: (id) => current?.cancel(id),
    unload: (workspaceId) => current?.unload(workspaceId),
    async dispose() {
      (await engine.catch(() => undefined))?.dispose();
    },
    stats: () => current?.stats() ?? {},
  };
  return defineQuickJsAdapter(backend, options, module);
}
