/**
 * The QuickJS adapter for Node: the engine (./engine.mjs) runs in a small pool of worker threads,
 * each holding one QuickJS WebAssembly module and the runtimes of the workspaces assigned to it
 * (a workspace stays on its thread; new ones go to the thread holding the fewest). A pool rather
 * than a thread per workspace: a workspace costs well under a megabyte, a thread several.
 *
 * Why threads at all: a long native builtin (`new Array(1e8).join("x")`) never polls QuickJS's
 * interrupt handler, and only a thread can be stopped from outside. Each worker publishes the
 * deadline of the guest code it is running; a worker still inside guest code well past that
 * deadline is terminated and replaced. What that costs: the workspaces of that thread lose their
 * `cache`, and their runs in flight fail (`TimeoutError` past their own deadline, else
 * `WorkerCrashedError`). Runs of workspaces on one thread share it: while one run's synchronous code
 * runs, the others' wait (up to that run's deadline).
 *
 * Limits: run timeout, hard (interrupt handler, wall-clock timer, thread termination as the last
 * resort); memory, hard per workspace and per thread (`sharedMemoryLimitMb`), see ./engine.mjs.
 * Functions' `fetch` is the worker thread's global `fetch`; the `module` option only serves
 * `checkSyntax` here, as each worker instantiates the wasm this adapter compiled.
 */
import type { EgressOptions } from "../../egress.mjs";
import variant from "@jitl/quickjs-wasmfile-release-sync";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import { newQuickJSWASMModuleFromVariant, newVariant } from "quickjs-emscripten-core";
import { defineQuickJsAdapter, engineOptions, type QuickJsAdapterOptions, type QuickJsBackend } from "./adapter.ts";
import type { EngineError, EngineOutcome } from "./engine.mjs";

export interface QuickJsWorkerAdapterOptions extends QuickJsAdapterOptions {
  /** Worker threads hosting the workspaces. @default min(4, available CPUs) */
  threads?: number;
  /** Where the worker script is; the Nitro build passes its own copy. */
  workerUrl?: URL;
  /** Egress policy of the guests' `fetch` (runtime/egress.mjs); checked in each worker at connect time. */
  egress?: EgressOptions;
}

interface PendingRun {
  resolve(outcome: EngineOutcome): void;
  deadline: number;
  timeoutMs: number;
  started: number;
  watchdog: NodeJS.Timeout;
}

interface Slot {
  /** Started with the adapter, and again on the first use after it was stopped. */
  worker?: Worker;
  /** Resolves when the worker has its engine (or is gone). */
  ready: Promise<void>;
  /** The deadline of the guest code the worker is running now, 0 when none (written by the worker). */
  busy: Float64Array;
  /** The workspace versions this worker has been sent. */
  loaded: Map<string, string>;
  pending: Map<number, PendingRun>;
  /** How many workspaces are assigned to this slot. */
  workspaces: number;
}

/** How long past a deadline the engine may take to answer before its thread counts as stuck. */
const GRACE_MS = 100;

const timeoutError = (timeoutMs: number): EngineError => ({ kind: "timeout", name: "TimeoutError", message: `Function exceeded its ${timeoutMs} ms timeout` });
const crashedError: EngineError = {
  kind: "function",
  name: "WorkerCrashedError",
  message: "The QuickJS worker running this function was restarted; run it again",
};

const shutDownError: EngineError = { kind: "function", name: "AdapterDisposedError", message: "The sandbox was shut down" };

let compiledQuickJs: Promise<WebAssembly.Module> | undefined;

/** The QuickJS wasm, compiled once per process: workers get the compiled module, not the bytes. */
function compileQuickJs(): Promise<WebAssembly.Module> {
  const wasmPath = createRequire(import.meta.url).resolve("@jitl/quickjs-wasmfile-release-sync/wasm");
  return (compiledQuickJs ??= readFile(wasmPath).then((bytes) => WebAssembly.compile(bytes)));
}

/** The worker script (in a Nitro build, its shipped copy): sandbox processes are told where it is. */
export const QUICKJS_WORKER_URL = new URL("./worker.mjs", import.meta.url);

export function createQuickJsWorkerAdapter(options: QuickJsWorkerAdapterOptions = {}) {
  const threads = Math.max(1, options.threads ?? Math.min(4, availableParallelism()));
  const workerUrl = options.workerUrl ?? QUICKJS_WORKER_URL;
  const engine = engineOptions(options);
  let disposed = false;
  const assigned = new Map<string, Slot>();
  let slots: Slot[] = [];
  /** Set before the first slot exists; restarts reuse it. */
  let wasmModule!: WebAssembly.Module;
  const compiled = compileQuickJs();
  const started = compiled.then((loaded) => {
    wasmModule = loaded;
    if (disposed) return;
    slots = Array.from({ length: threads }, () => {
      const slot: Slot = { ready: Promise.resolve(), busy: new Float64Array(1), loaded: new Map(), pending: new Map(), workspaces: 0 };
      workerOf(slot);
      return slot;
    });
  });
  // A wasm that fails to load fails every run; `ready()` reports it to whoever waits on it.
  started.catch(() => undefined);

  // Stuck threads with no run waiting on them (the run was answered while another held the thread).
  const sweeper = setInterval(() => {
    for (const slot of slots) if (isStuck(slot)) stop(slot);
  }, 1000);
  sweeper.unref();

  /** The slot's worker, started if it has none (so a worker that cannot start is not retried in a loop). */
  function workerOf(slot: Slot): Worker {
    if (slot.worker) return slot.worker;
    const busy = new SharedArrayBuffer(Float64Array.BYTES_PER_ELEMENT);
    const worker = new Worker(workerUrl, { workerData: { wasmModule, busy, engine, egress: options.egress }, env: {} });
    const ready = new Promise<void>((resolve) => {
      worker.once("message", () => resolve());
      worker.once("exit", () => resolve());
    });
    Object.assign(slot, { worker, ready, busy: new Float64Array(busy) });
    slot.loaded.clear();
    worker.on("message", (reply: { t: "ready" } | { t: "result"; id: number; outcome: EngineOutcome }) => {
      if (reply.t === "result") settle(slot, reply.id, reply.outcome);
    });
    // A stopped worker still reports its exit: only the slot's current one counts.
    const crashed = () => {
      if (slot.worker === worker) stop(slot);
    };
    worker.on("error", crashed);
    worker.on("exit", crashed);
    worker.unref();
    return worker;
  }

  /** Ends the slot's worker and fails its runs; the next use starts another. */
  function stop(slot: Slot): void {
    const { worker } = slot;
    if (!worker) return;
    slot.worker = undefined;
    void worker.terminate();
    const now = Date.now();
    for (const [id, run] of slot.pending) settle(slot, id, failure(run, now >= run.deadline ? timeoutError(run.timeoutMs) : crashedError));
  }

  function isStuck(slot: Slot): boolean {
    const busyUntil = slot.busy[0];
    return busyUntil !== 0 && Date.now() - busyUntil > GRACE_MS / 2;
  }

  function failure(run: PendingRun, error: EngineError): EngineOutcome {
    return { ok: false, error, logs: [], durationMs: performance.now() - run.started };
  }

  function settle(slot: Slot, id: number, outcome: EngineOutcome): void {
    const run = slot.pending.get(id);
    if (!run) return;
    slot.pending.delete(id);
    clearTimeout(run.watchdog);
    run.resolve(outcome);
  }

  /** Answers a run as timed out; the worker drops it (its answer, if any, is ignored). */
  function cancel(slot: Slot, id: number): void {
    const run = slot.pending.get(id);
    if (!run) return;
    slot.worker?.postMessage({ t: "cancel", id });
    settle(slot, id, failure(run, timeoutError(run.timeoutMs)));
  }

  function onDeadline(slot: Slot, id: number): void {
    if (!slot.pending.has(id)) return;
    if (isStuck(slot)) stop(slot);
    else cancel(slot, id);
  }

  function slotFor(workspaceId: string): Slot {
    let slot = assigned.get(workspaceId);
    if (!slot) {
      slot = slots.reduce((least, candidate) => (candidate.workspaces < least.workspaces ? candidate : least));
      slot.workspaces++;
      assigned.set(workspaceId, slot);
    }
    return slot;
  }

  function sendScript(slot: Slot, workspace: { id: string; version: string; script: string }): void {
    const worker = workerOf(slot);
    if (slot.loaded.get(workspace.id) === workspace.version) return;
    worker.postMessage({ t: "load", workspaceId: workspace.id, version: workspace.version, script: workspace.script });
    slot.loaded.set(workspace.id, workspace.version);
  }

  const backend: QuickJsBackend = {
    async ready() {
      await started;
      await Promise.all(slots.map((slot) => slot.ready));
    },

    async load(workspace) {
      await started;
      sendScript(slotFor(workspace.id), workspace);
    },

    async run(id, workspace, request) {
      const deadline = Date.now() + request.timeoutMs;
      const runStarted = performance.now();
      await started;
      if (disposed) return { ok: false, error: shutDownError, logs: [], durationMs: performance.now() - runStarted };
      const slot = slotFor(workspace.id);
      sendScript(slot, workspace);
      return new Promise((resolve) => {
        const watchdog = setTimeout(() => onDeadline(slot, id), deadline - Date.now() + GRACE_MS);
        slot.pending.set(id, { resolve, deadline, timeoutMs: request.timeoutMs, started: runStarted, watchdog });
        workerOf(slot).postMessage({ t: "run", id, workspaceId: workspace.id, ...request, deadline });
      });
    },

    cancel(id) {
      const slot = slots.find((candidate) => candidate.pending.has(id));
      if (slot) cancel(slot, id);
    },

    unload(workspaceId) {
      const slot = assigned.get(workspaceId);
      if (!slot) return;
      assigned.delete(workspaceId);
      slot.workspaces--;
      slot.loaded.delete(workspaceId);
      slot.worker?.postMessage({ t: "unload", workspaceId });
    },

    async dispose() {
      disposed = true;
      clearInterval(sweeper);
      for (const slot of slots) for (const [id, run] of slot.pending) settle(slot, id, failure(run, shutDownError));
      await Promise.all(slots.map((slot) => slot.worker?.terminate()));
    },

    stats() {
      return { threads, runs: slots.reduce((sum, slot) => sum + slot.pending.size, 0) };
    },
  };
  // This thread's module only checks syntax: from the same compiled wasm.
  const module = options.module ?? compiled.then((loaded) => newQuickJSWASMModuleFromVariant(newVariant(variant, { wasmModule: loaded })));
  return defineQuickJsAdapter(backend, options, Promise.resolve(module));
}
