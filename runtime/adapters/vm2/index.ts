/**
 * The vm2 adapter: one worker thread per workspace, each holding a vm2 NodeVM with the workspace's
 * generated module. The default sandbox on Node.
 *
 * Limits, all enforced by this host side:
 * - run timeout (hard): a watchdog per run answers `TimeoutError` at the deadline. If the worker's
 *   event loop is stuck (sync loop) the worker is terminated; if it still turns (a promise that never
 *   settles) only the run is dropped. A worker whose loop stays stuck with no run in flight (a timer
 *   spinning after its run returned) is terminated by the periodic check.
 * - heap (hard): `resourceLimits.maxOldGenerationSizeMb`; exhausting it ends the worker and answers
 *   `MemoryLimitError`.
 * - Buffer allocations (hard): vm2's `bufferAllocLimit`; the same number caps each decompression.
 * - memory outside the heap, in sum (`externalMemoryLimitMb`): checked by the worker at each
 *   allocation of 1 MiB or more (the allocation throws a RangeError) and at every heartbeat (the
 *   worker is ended and its runs answer `MemoryLimitError`).
 * - outbound connections (hard, checked at connect time): the egress policy (runtime/egress.mjs).
 * - workers: at most `maxWorkers` live, least recently used ended first; idle ones end after
 *   `idleTimeoutMs`.
 */
import { Script } from "node:vm";
import { Worker } from "node:worker_threads";
import { LRUCache } from "lru-cache";
import { createEgressPolicy, type EgressOptions } from "../../egress.mjs";
import { adapterDisposed } from "../../errors.ts";
import { mapStack, transformImports } from "../../script.ts";
import type { CompiledWorkspace, RunError, RunOptions, RunOutcome, RunRequest, SandboxAdapter, SyntaxProblem } from "../../types.ts";

export interface Vm2AdapterOptions {
  /** Live workers kept at most (`FUNCTIONS_WORKERS_MAX_LRU`). @default 500 */
  maxWorkers?: number;
  /** A worker with no run for this long is ended (`INACTIVE_NODE_WORKER_DELETION_TIMEOUT`). @default 3_600_000 */
  idleTimeoutMs?: number;
  /** Old-generation heap per worker (`NODE_WORKER_MAX_OLD_GENERATION_SIZE_MB`). @default 100 */
  memoryLimitMb?: number;
  /** Builtins `require()` may load (`NODE_BUILTIN_MODULES`). */
  builtinModules?: string[];
  /** Largest single Buffer a function may allocate, and most bytes one decompression may produce. @default 64 MiB */
  bufferAllocLimitBytes?: number;
  /** ArrayBuffers and Buffers alive at once per worker, outside the heap (`NODE_WORKER_MAX_EXTERNAL_MEMORY_MB`). @default 256 */
  externalMemoryLimitMb?: number;
  /** What function code may connect to (`FUNCTIONS_EGRESS_*`). @default public addresses only */
  egress?: EgressOptions;
  /** Where the worker script is; the Nitro build passes its own copy. */
  workerUrl?: URL;
  /** Keep one worker started ahead of need, so a new workspace's first run skips the start-up. @default true */
  prestart?: boolean;
  /**
   * Called when a worker told to end is still busy in native code 2 s later. A sandbox process
   * exits then (see sandbox-process/child.ts), which ends the thread for sure.
   */
  onWorkerStuck?: () => void;
}

/** The worker script (in a Nitro build, its shipped copy): sandbox processes are told where it is. */
export const VM2_WORKER_URL = new URL("./worker.mjs", import.meta.url);

export const DEFAULT_BUILTIN_MODULES = ["http", "https", "url", "util", "zlib", "dns", "stream", "buffer", "crypto"];

interface PendingRun {
  resolve(outcome: RunOutcome): void;
  workspace: CompiledWorkspace;
  started: number;
  timer?: NodeJS.Timeout;
}

interface WorkerHandle {
  worker: Worker;
  heartbeat: Float64Array;
  ready: Promise<void>;
  isReady: boolean;
  loadedVersion?: string;
  pending: Map<number, PendingRun>;
  /** Messages not yet posted: sent as one batch per event-loop turn (see `post`). */
  outbox: object[];
  /** No new runs: it ends once its pending runs are answered. */
  retiring: boolean;
  ended: boolean;
}

type WorkerReply =
  | { t: "ready" }
  | { t: "uncaught"; error: RunError }
  | { t: "memory"; externalBytes: number }
  | { t: "result"; id: number; ok: true; json: string; logs: RunOutcome["logs"]; durationMs: number }
  | { t: "result"; id: number; ok: false; error: Omit<RunError, "kind">; logs: RunOutcome["logs"]; durationMs: number };

const AsyncFunction = (async () => undefined).constructor as new (...args: string[]) => unknown;

/**
 * Compiles a body the way the generated module will, without running it. Two checks: the body
 * must compile inside an async function (for the line of a syntax error), and it must parse as a
 * function body on its own, so it cannot close the wrapper and add code around it.
 */
export function checkNodeSyntax(code: string): SyntaxProblem | undefined {
  const body = transformImports(code);
  try {
    new AsyncFunction(body);
    return undefined;
  } catch (error) {
    try {
      new Script(`(async function () {\n${body}\n})`, { filename: "body" });
    } catch (syntaxError) {
      const stack = String((syntaxError as Error).stack ?? "");
      const line = Number(/^body:(\d+)/.exec(stack)?.[1] ?? 2) - 1;
      return { line: Math.max(1, line), message: (syntaxError as Error).message };
    }
    return { line: 1, message: `${(error as Error).message} (the code must be a function body: it cannot close its wrapper)` };
  }
}

export function createVm2Adapter(options: Vm2AdapterOptions = {}) {
  const maxWorkers = options.maxWorkers ?? 500;
  const idleTimeoutMs = options.idleTimeoutMs ?? 3_600_000;
  const memoryLimitMb = options.memoryLimitMb ?? 100;
  const externalMemoryLimitMb = options.externalMemoryLimitMb ?? 256;
  const workerUrl = options.workerUrl ?? VM2_WORKER_URL;
  createEgressPolicy(options.egress); // an invalid entry fails here, not in every worker
  const workerData = {
    builtinModules: options.builtinModules ?? DEFAULT_BUILTIN_MODULES,
    bufferAllocLimitBytes: options.bufferAllocLimitBytes ?? 64 * 1024 * 1024,
    maxExternalBytes: externalMemoryLimitMb * 1024 * 1024,
    egress: options.egress ?? {},
    beatMs: 50,
    maxLogEntries: 1000,
    maxLogBytes: 1024 * 1024,
  };
  /** A worker whose heartbeat is older than this has a stuck event loop. */
  const stuckAfterMs = 1000;

  let disposed = false;
  let nextRunId = 1;
  let spare: WorkerHandle | undefined;

  const workers = new LRUCache<string, WorkerHandle>({
    max: maxWorkers,
    ttl: idleTimeoutMs,
    updateAgeOnGet: true,
    dispose: (handle) => retire(handle),
  });

  // One timer for every worker: purges idle workers and ends stuck ones that have no run in flight.
  const sweeper = setInterval(() => {
    workers.purgeStale();
    const now = Date.now();
    for (const [id, handle] of workers.entries()) {
      if (handle.isReady && now - handle.heartbeat[0] > Math.max(stuckAfterMs, 5 * workerData.beatMs) && handle.pending.size === 0) {
        workers.delete(id);
        terminate(handle, { kind: "timeout", name: "TimeoutError", message: "The workspace's worker was stuck and has been stopped" });
      }
    }
  }, stuckAfterMs);
  sweeper.unref();

  function spawn(): WorkerHandle {
    const heartbeatBuffer = new SharedArrayBuffer(8);
    const heartbeat = new Float64Array(heartbeatBuffer);
    heartbeat[0] = Date.now();
    const worker = new Worker(workerUrl, {
      workerData: { ...workerData, heartbeat: heartbeatBuffer },
      resourceLimits: { maxOldGenerationSizeMb: memoryLimitMb },
      env: {},
      stdout: true,
      stderr: true,
    });
    let markReady!: () => void;
    const handle: WorkerHandle = {
      worker,
      heartbeat,
      ready: new Promise((resolve) => (markReady = resolve)),
      isReady: false,
      pending: new Map(),
      outbox: [],
      retiring: false,
      ended: false,
    };
    worker.on("message", (message: WorkerReply | WorkerReply[]) => {
      if (Array.isArray(message)) for (const reply of message) onReply(reply);
      else onReply(message);
    });
    function onReply(reply: WorkerReply): void {
      if (reply.t === "ready") {
        handle.isReady = true;
        markReady();
      } else if (reply.t === "result") {
        settle(handle, reply.id, reply.ok ? toSuccess(reply) : toFailure(handle, reply));
      } else if (reply.t === "uncaught") {
        // State can no longer be trusted: finish what is in flight, then end it.
        handle.retiring = true;
        removeFromPool(handle);
        if (handle.pending.size === 0) void endWorker(handle);
      } else if (reply.t === "memory") {
        terminate(handle, { kind: "memory", name: "MemoryLimitError", message: `The function ran out of memory outside the heap (limit ${externalMemoryLimitMb} MB of ArrayBuffers and Buffers)` });
      }
    }
    worker.on("error", (error: Error & { code?: string }) => {
      const outOfMemory = error.code === "ERR_WORKER_OUT_OF_MEMORY";
      failAll(handle, {
        kind: outOfMemory ? "memory" : "function",
        name: outOfMemory ? "MemoryLimitError" : "WorkerCrashedError",
        message: outOfMemory ? `The function ran out of memory (limit ${memoryLimitMb} MB)` : "The workspace's worker crashed",
      });
    });
    worker.on("exit", () => {
      handle.ended = true;
      removeFromPool(handle);
      failAll(handle, { kind: "function", name: "WorkerCrashedError", message: "The workspace's worker exited" });
    });
    // A worker's stdout/stderr are only read so they do not fill up; functions log through console.
    worker.stdout.resume();
    worker.stderr.resume();
    worker.unref();
    return handle;
  }

  /**
   * Queues a message for a worker. Everything queued during one turn of the event loop goes in one
   * postMessage: under load, one wake-up of the worker serves many runs.
   */
  function post(handle: WorkerHandle, message: object): void {
    handle.outbox.push(message);
    if (handle.outbox.length === 1) setImmediate(flush, handle);
  }

  function flush(handle: WorkerHandle): void {
    const batch = handle.outbox;
    handle.outbox = [];
    if (!handle.ended) handle.worker.postMessage(batch.length === 1 ? batch[0] : batch);
  }

  function toSuccess(reply: Extract<WorkerReply, { t: "result"; ok: true }>): RunOutcome {
    return { ok: true, result: JSON.parse(reply.json), logs: reply.logs, durationMs: reply.durationMs };
  }

  function toFailure(handle: WorkerHandle, reply: Extract<WorkerReply, { t: "result"; ok: false }>): RunOutcome {
    const pending = handle.pending.get(reply.id);
    const stack = reply.error.stack && pending ? mapStack(reply.error.stack, pending.workspace.lineMap) : undefined;
    return { ok: false, error: { kind: "function", ...reply.error, stack }, logs: reply.logs, durationMs: reply.durationMs };
  }

  function settle(handle: WorkerHandle, id: number, outcome: RunOutcome): void {
    const pending = handle.pending.get(id);
    if (!pending) return;
    handle.pending.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(outcome);
    if (handle.retiring && handle.pending.size === 0) void endWorker(handle);
  }

  function failAll(handle: WorkerHandle, error: RunError): void {
    for (const [id, pending] of handle.pending) {
      settle(handle, id, { ok: false, error, logs: [], durationMs: performance.now() - pending.started });
    }
  }

  function removeFromPool(handle: WorkerHandle): void {
    if (spare === handle) spare = undefined;
    for (const [id, h] of workers.entries()) {
      if (h === handle) {
        // Deleting calls `dispose`, which retires: mark first so it does not end the worker twice.
        workers.delete(id);
        return;
      }
    }
  }

  function retire(handle: WorkerHandle): void {
    handle.retiring = true;
    if (handle.pending.size === 0) void endWorker(handle);
  }

  async function endWorker(handle: WorkerHandle): Promise<void> {
    if (handle.ended) return;
    handle.ended = true;
    // terminate() cannot interrupt a native call (a huge pbkdf2Sync): the thread ends when it
    // returns. Past a grace period, the host is told, to end the whole process if it can.
    const stuck = setTimeout(() => options.onWorkerStuck?.(), 2000);
    stuck.unref();
    await handle.worker.terminate();
    clearTimeout(stuck);
  }

  function terminate(handle: WorkerHandle, error: RunError): void {
    removeFromPool(handle);
    failAll(handle, error);
    void endWorker(handle);
  }

  function takeWorker(workspaceId: string): WorkerHandle {
    let handle = workers.get(workspaceId);
    if (handle && !handle.retiring && !handle.ended) return handle;
    handle = spare && !spare.ended ? spare : spawn();
    spare = undefined;
    workers.set(workspaceId, handle);
    if (options.prestart !== false) spare = spawn();
    return handle;
  }

  function onDeadline(handle: WorkerHandle, id: number, timeoutMs: number): void {
    const pending = handle.pending.get(id);
    if (!pending) return;
    const error: RunError = { kind: "timeout", name: "TimeoutError", message: `Function exceeded its ${timeoutMs} ms timeout` };
    const stuck = handle.isReady && Date.now() - handle.heartbeat[0] > Math.min(stuckAfterMs, Math.max(4 * workerData.beatMs, timeoutMs / 2));
    if (stuck || !handle.isReady) {
      // The event loop is held by user code: only ending the thread stops it.
      terminate(handle, { ...error, message: `${error.message}; the workspace's worker was stopped` });
      return;
    }
    post(handle, { t: "cancel", id });
    settle(handle, id, { ok: false, error, logs: [], durationMs: performance.now() - pending.started });
  }

  /** The workspace's worker, told to load this version if it holds another (messages keep their order). */
  function workerWith(workspace: CompiledWorkspace): WorkerHandle {
    const handle = takeWorker(workspace.id);
    if (handle.loadedVersion !== workspace.version) {
      post(handle, { t: "load", version: workspace.version, script: workspace.script, modules: workspace.modules });
      handle.loadedVersion = workspace.version;
    }
    return handle;
  }

  const adapter = {
    name: "vm2",
    flags: { languages: ["nodejs"], memoryLimit: true, builtins: true },
    checkSyntax: checkNodeSyntax,

    async load(workspace: CompiledWorkspace): Promise<void> {
      if (disposed) throw adapterDisposed("vm2");
      workerWith(workspace);
    },

    run(request: RunRequest, runOptions: RunOptions): Promise<RunOutcome> {
      if (disposed) return Promise.reject(adapterDisposed("vm2"));
      const { workspace } = request;
      const handle = workerWith(workspace);
      const id = nextRunId++;
      return new Promise<RunOutcome>((resolve) => {
        const pending: PendingRun = { resolve, workspace, started: performance.now() };
        const arm = () => {
          if (handle.pending.has(id)) pending.timer = setTimeout(() => onDeadline(handle, id, runOptions.timeoutMs), runOptions.timeoutMs);
        };
        handle.pending.set(id, pending);
        // The deadline is the function's: a worker still starting (a loaded machine) does not eat it.
        if (handle.isReady) arm();
        else void handle.ready.then(arm);
        runOptions.signal?.addEventListener("abort", () => onDeadline(handle, id, runOptions.timeoutMs), { once: true });
        post(handle, { t: "run", id, version: workspace.version, fn: request.functionName, params: JSON.stringify(request.parameters) });
      });
    },

    async unload(workspaceId: string): Promise<void> {
      workers.delete(workspaceId);
    },

    async dispose(): Promise<void> {
      if (disposed) return;
      disposed = true;
      clearInterval(sweeper);
      const all = [...workers.values(), ...(spare ? [spare] : [])];
      spare = undefined;
      workers.clear();
      await Promise.all(all.map((handle) => terminate(handle, { kind: "function", name: "AdapterDisposedError", message: "The sandbox was shut down" })));
    },
  } satisfies SandboxAdapter & Record<string, unknown>;
  return adapter;
}

