/**
 * What the two QuickJS adapters share: options, the LRU of live workspaces, the syntax check, and
 * turning engine outcomes into `RunOutcome`s. Where the engine runs is a `QuickJsBackend`: in this
 * thread (../quickjs.ts) or in worker threads (./workers.ts).
 */
import { LRUCache } from "lru-cache";
import type { QuickJSWASMModule } from "quickjs-emscripten-core";
import { adapterDisposed, ServiceError } from "../../errors.ts";
import { mapStack, SCRIPT_FILENAME, transformImports } from "../../script.ts";
import type { CompiledWorkspace, RunOptions, RunOutcome, RunRequest, SandboxAdapter, SyntaxProblem } from "../../types.ts";
import { createSyntaxChecker, type EngineOptions, type EngineOutcome } from "./engine.mjs";

export interface QuickJsAdapterOptions {
  /** How much memory each workspace may take (hard, with the caveat in ./engine.mjs). @default 64 */
  memoryLimitMb?: number;
  /**
   * The most memory the workspaces of one QuickJS module share: one worker thread, or the whole
   * in-process adapter (hard). Reached, it stays allocated: WebAssembly memory never shrinks. @default 1024
   */
  sharedMemoryLimitMb?: number;
  /** Stack limit of each runtime; at most 256 KiB, as a deeper stack overflows the host's. @default 262_144 */
  maxStackSizeBytes?: number;
  /** Workspace runtimes kept at most, least recently used disposed first. @default 500 */
  maxRuntimes?: number;
  /** A workspace with no run for this long is disposed (checked when runs arrive). @default 3_600_000 */
  idleTimeoutMs?: number;
  /**
   * The QuickJS WebAssembly module, for runtimes that bring their own (workerd imports the wasm
   * precompiled). Also checks syntax. @default the `@jitl/quickjs-wasmfile-release-sync` variant
   */
  module?: QuickJSWASMModule | Promise<QuickJSWASMModule>;
}

/** Where the engine runs. `run` always answers an outcome; `cancel` makes it answer a timeout now. */
export interface QuickJsBackend {
  /** Resolves once the backend can run functions without a start-up delay. */
  ready(): Promise<void>;
  load(workspace: CompiledWorkspace): Promise<void>;
  run(id: number, workspace: CompiledWorkspace, request: { fn: string; paramsJson: string; timeoutMs: number }): Promise<EngineOutcome>;
  cancel(id: number): void;
  unload(workspaceId: string): void;
  dispose(): Promise<void>;
  stats(): Record<string, number>;
}

const MAX_STACK_SIZE_BYTES = 256 * 1024;

/** The engine's settings from the adapter's options, with defaults and the stack clamped. */
export function engineOptions(options: QuickJsAdapterOptions): Omit<EngineOptions, "fetch" | "onGuestCode"> {
  const stackBytes = options.maxStackSizeBytes ?? MAX_STACK_SIZE_BYTES;
  return {
    memoryLimitMb: options.memoryLimitMb ?? 64,
    sharedMemoryLimitMb: options.sharedMemoryLimitMb ?? 1024,
    // To QuickJS, 0 means no limit at all.
    maxStackSizeBytes: stackBytes > 0 ? Math.min(stackBytes, MAX_STACK_SIZE_BYTES) : MAX_STACK_SIZE_BYTES,
    scriptFilename: SCRIPT_FILENAME,
  };
}

function toRunOutcome(outcome: EngineOutcome, workspace: CompiledWorkspace): RunOutcome {
  const { logs, durationMs } = outcome;
  if (outcome.ok) return { ok: true, result: JSON.parse(outcome.json), logs, durationMs };
  const { stack, ...error } = outcome.error;
  return { ok: false, error: stack ? { ...error, stack: mapStack(stack, workspace.lineMap) } : error, logs, durationMs };
}

/** The `SandboxAdapter` over a backend. */
export function defineQuickJsAdapter(backend: QuickJsBackend, options: QuickJsAdapterOptions, module: Promise<QuickJSWASMModule>) {
  const idleTimeoutMs = options.idleTimeoutMs ?? 3_600_000;
  let disposed = false;
  let nextRunId = 1;
  let nextPurge = 0;
  let checker: ReturnType<typeof createSyntaxChecker> | undefined;
  const checkerReady = module.then((loaded) => {
    if (!disposed) checker = createSyntaxChecker(loaded, engineOptions(options));
  });
  // A module that fails to load fails every run; `ready()` reports it to whoever waits on it.
  checkerReady.catch(() => undefined);

  /** Recency of the workspaces the backend holds; dropping one unloads it. */
  const live = new LRUCache<string, true>({
    max: options.maxRuntimes ?? 500,
    ttl: idleTimeoutMs,
    updateAgeOnGet: true,
    dispose: (_value, workspaceId) => backend.unload(workspaceId),
  });

  function touch(workspaceId: string): void {
    // No timer for idle workspaces (edge runtimes allow none outside requests): runs purge them.
    const now = Date.now();
    if (now >= nextPurge) {
      live.purgeStale();
      nextPurge = now + Math.min(idleTimeoutMs, 60_000);
    }
    if (!live.get(workspaceId)) live.set(workspaceId, true);
  }

  return {
    name: "quickjs",
    flags: { languages: ["nodejs"], memoryLimit: true, builtins: false },

    /** Resolves once QuickJS is loaded (`checkSyntax` needs it) and the first runs need not wait for it. */
    async ready(): Promise<void> {
      await Promise.all([checkerReady, backend.ready()]);
    },

    /** Compiles a body in QuickJS without running it (see `createSyntaxChecker`). */
    checkSyntax(code: string): SyntaxProblem | undefined {
      if (!checker) throw new ServiceError("InternalError", "The QuickJS module is still loading: await the adapter's ready() first");
      return checker.check(transformImports(code));
    },

    async load(workspace: CompiledWorkspace): Promise<void> {
      if (disposed) throw adapterDisposed("quickjs");
      touch(workspace.id);
      await backend.load(workspace);
    },

    async run(request: RunRequest, runOptions: RunOptions): Promise<RunOutcome> {
      if (disposed) throw adapterDisposed("quickjs");
      const { workspace } = request;
      touch(workspace.id);
      const id = nextRunId++;
      const cancel = () => backend.cancel(id);
      runOptions.signal?.addEventListener("abort", cancel, { once: true });
      try {
        const paramsJson = JSON.stringify(request.parameters);
        const outcome = await backend.run(id, workspace, { fn: request.functionName, paramsJson, timeoutMs: runOptions.timeoutMs });
        return toRunOutcome(outcome, workspace);
      } finally {
        runOptions.signal?.removeEventListener("abort", cancel);
      }
    },

    async unload(workspaceId: string): Promise<void> {
      live.delete(workspaceId);
    },

    async dispose(): Promise<void> {
      if (disposed) return;
      disposed = true;
      await backend.dispose();
      checker?.dispose();
    },

    /** Live workspaces and runs, for metrics and tests. */
    stats(): Record<string, number> {
      return { workspaces: live.size, ...backend.stats() };
    },
  } satisfies SandboxAdapter & Record<string, unknown>;
}
