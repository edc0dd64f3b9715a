/**
 * Sandbox processes: user code never runs in the service's own process. A pool of child processes
 * each hosts a sandbox adapter (vm2 or QuickJS worker threads, see child.ts); every workspace is
 * assigned to one process by a hash of its id, so its worker and `cache` stay in one place.
 *
 * Each process is its own crash domain:
 * - an empty environment (no secrets of the service),
 * - Node's permission model: it may read only the directories it is given (code, packages) and
 *   write only its scratch directory; no child processes, no native addons, no inspector,
 * - its workers' heap limits (the process's main thread only relays runs), and a limit on the
 *   whole process's resident memory (`memoryLimitMb`): sampled every `memoryCheckMs` from
 *   /proc/<pid>/status, and a process past it is killed (its runs answer `MemoryLimitError`).
 * A process that dies (a native crash, a kill) fails only its in-flight runs, with a typed
 * `SandboxProcessCrashedError`, and is started again on its next run; the other processes and
 * their workspaces do not notice. If a process does not answer a run within its timeout plus
 * `graceMs`, it is killed: the host-side last resort behind the sandbox's own deadline.
 */
import { fork, type ChildProcess } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { adapterDisposed } from "../../errors.ts";
import type { AdapterFlags, CompiledWorkspace, RunError, RunOptions, RunOutcome, RunRequest, SandboxAdapter, SyntaxProblem } from "../../types.ts";
import type { FromChild, SandboxSpec, ToChild } from "./protocol.ts";

export type { SandboxSpec };

export interface SandboxProcessAdapterOptions {
  /** What each process hosts. */
  sandbox: SandboxSpec;
  /** Capabilities of that sandbox (the process changes none). */
  flags: AdapterFlags;
  /** Deploy-time syntax check of that sandbox; it compiles, never runs, so it stays in this process. */
  checkSyntax?(code: string): SyntaxProblem | undefined;
  /** Number of sandbox processes (`FUNCTIONS_SANDBOX_PROCESSES`). @default 2 */
  processes?: number;
  /** The child entry: child.js beside this file when compiled, the shipped bundle in a Nitro build. */
  childEntry?: URL;
  /** Directories a process may read: its own code and node_modules, npm installs, shared packages. */
  readableDirs: string[];
  /** The one directory a process may write (temporary files of packages). */
  writableDir?: string;
  /**
   * Past a run's timeout plus this, an unanswering process is killed. Generous: the sandbox's own
   * deadline starts once its worker is up, which takes longer on a loaded machine. @default 5000
   */
  graceMs?: number;
  /**
   * Resident memory of each process, in MB, past which it is killed; 0 for none. Read from Linux's
   * /proc (elsewhere it is not checked). A backstop under the workers' own limits: RLIMIT_DATA
   * would be harder, but Node 24 reserves about 512 MB of address space per worker thread, which
   * it counts. @default 0
   */
  memoryLimitMb?: number;
  /** How often the resident memory is sampled. @default 500 */
  memoryCheckMs?: number;
}

interface PendingRun {
  resolve(outcome: RunOutcome): void;
  message: Extract<ToChild, { t: "run" }>;
  workspace: CompiledWorkspace;
  started: number;
  timer: NodeJS.Timeout;
}

/** One sandbox process, from its start to its exit: a replacement is a new `Proc`. */
interface Proc {
  child: ChildProcess;
  ready: Promise<void>;
  pending: Map<number, PendingRun>;
  /** The version of each workspace this process holds. */
  holds: Map<string, string>;
  outbox: ToChild[];
  /** Set when this side killed it for its memory: its runs are told so. */
  overMemory?: number;
}

/** Resident bytes of a process, or undefined when /proc cannot tell (not Linux, already gone). */
function residentBytes(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    // VmRSS is in kB whatever the page size (statm counts pages: 4 KiB here, 64 KiB on some arm64).
    const kb = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1];
    return kb === undefined ? undefined : Number(kb) * 1024;
  } catch {
    return undefined;
  }
}

/** Stable FNV-1a hash: a workspace lands on the same process on every instance and restart. */
function hash(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/** Node 20-21 name the permission model `--experimental-permission`; 22+ `--permission`. */
function permissionFlag(): string {
  return Number(process.versions.node.split(".")[0]) >= 22 ? "--permission" : "--experimental-permission";
}

export function createSandboxProcessAdapter(options: SandboxProcessAdapterOptions) {
  const count = Math.max(1, options.processes ?? 2);
  const childEntry = options.childEntry ?? new URL("./child.js", import.meta.url);
  const graceMs = options.graceMs ?? 5000;
  const execArgv = [
    permissionFlag(),
    "--allow-worker",
    ...options.readableDirs.map((dir) => `--allow-fs-read=${dir.replace(/\/$/, "")}/*`),
    ...(options.writableDir ? [`--allow-fs-write=${options.writableDir.replace(/\/$/, "")}/*`] : []),
    // No --max-old-space-size: V8 applies it to the whole process, and it makes each worker's own
    // (smaller) heap limit take seconds of garbage collection to trip. The workers' limits are
    // the memory limits; the main thread holds only compiled workspaces.
    "--no-warnings",
  ];
  /** The live process of each slot; a workspace's slot is `hash(id) % count`. */
  const procs: Array<Proc | undefined> = Array.from({ length: count }, () => undefined);
  let nextRunId = 1;
  let disposed = false;

  function start(slot: number): Proc {
    // The environment stays empty but for the IPC channel Node itself adds.
    const child = fork(fileURLToPath(childEntry), [], { env: {}, execArgv, serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"] });
    let markReady!: () => void;
    const proc: Proc = { child, ready: new Promise((resolve) => (markReady = resolve)), pending: new Map(), holds: new Map(), outbox: [] };
    procs[slot] = proc;
    child.on("message", (message: FromChild | FromChild[]) => {
      for (const reply of Array.isArray(message) ? message : [message]) {
        if (reply.t === "ready") markReady();
        else onReply(proc, reply);
      }
    });
    child.once("exit", (code, signal) => {
      if (procs[slot] === proc) procs[slot] = undefined;
      markReady();
      crashed(proc, signal ? `was killed (${signal})` : `exited (code ${code})`);
    });
    child.send({ t: "init", sandbox: options.sandbox } satisfies ToChild);
    return proc;
  }

  const memoryLimitMb = options.memoryLimitMb ?? 0;
  const memoryCheck =
    memoryLimitMb > 0
      ? setInterval(() => {
          procs.forEach((proc, slot) => {
            const resident = proc && residentBytes(proc.child.pid);
            if (!proc || resident === undefined || resident <= memoryLimitMb * 1024 * 1024) return;
            proc.overMemory = resident;
            stop(slot, proc);
          });
        }, options.memoryCheckMs ?? 500)
      : undefined;
  memoryCheck?.unref();

  /** The slot's process if it is still connected, else a new one. */
  function live(slot: number): Proc {
    const proc = procs[slot];
    if (proc?.child.connected) return proc;
    return start(slot);
  }

  function stop(slot: number, proc: Proc): void {
    if (procs[slot] === proc) procs[slot] = undefined;
    proc.child.kill("SIGKILL");
  }

  function onReply(proc: Proc, reply: FromChild): void {
    const pending = proc.pending.get((reply as { id: number }).id);
    if (!pending) return;
    if (reply.t === "missing") {
      // The process does not hold the workspace (it never had it, or forgot it): send it along.
      proc.holds.set(pending.workspace.id, pending.workspace.version);
      post(proc, { ...pending.message, workspace: pending.workspace });
      return;
    }
    if (reply.t === "result") settle(proc, reply.id, reply.outcome);
  }

  function settle(proc: Proc, id: number, outcome: RunOutcome): void {
    const pending = proc.pending.get(id);
    if (!pending) return;
    proc.pending.delete(id);
    clearTimeout(pending.timer);
    pending.resolve(outcome);
  }

  function crashed(proc: Proc, how: string): void {
    const error: RunError = proc.overMemory
      ? {
          kind: "memory",
          name: "MemoryLimitError",
          message: `The sandbox process running this workspace used ${Math.round(proc.overMemory / 1024 / 1024)} MB, past its limit of ${memoryLimitMb} MB, and was stopped; it is started again on the next run`,
        }
      : {
          kind: "function",
          name: "SandboxProcessCrashedError",
          message: `The sandbox process running this workspace ${how}; it is started again on the next run`,
        };
    for (const [id, pending] of proc.pending) settle(proc, id, { ok: false, error, logs: [], durationMs: performance.now() - pending.started });
  }

  /** Messages queued during one turn of the event loop go out as one (see the vm2 adapter). */
  function post(proc: Proc, message: ToChild): void {
    proc.outbox.push(message);
    if (proc.outbox.length === 1) {
      setImmediate(() => {
        const batch = proc.outbox;
        proc.outbox = [];
        if (proc.child.connected) proc.child.send(batch.length === 1 ? batch[0] : batch);
      });
    }
  }

  const adapter = {
    name: `${options.sandbox.kind} (sandbox processes)`,
    flags: options.flags,
    ...(options.checkSyntax && { checkSyntax: options.checkSyntax }),

    async load(): Promise<void> {
      if (disposed) throw adapterDisposed(adapter.name);
    },

    async run(request: RunRequest, runOptions: RunOptions): Promise<RunOutcome> {
      if (disposed) throw adapterDisposed(adapter.name);
      const { workspace } = request;
      const slot = hash(workspace.id) % count;
      let proc = live(slot);
      await proc.ready;
      // It died while this run waited (its exit not handled yet): one fresh process gets the run.
      if (!proc.child.connected) {
        proc = live(slot);
        await proc.ready;
      }
      const id = nextRunId++;
      const message: Extract<ToChild, { t: "run" }> = {
        t: "run",
        id,
        workspaceId: workspace.id,
        version: workspace.version,
        functionName: request.functionName,
        parameters: request.parameters,
        timeoutMs: runOptions.timeoutMs,
      };
      const fresh = proc.holds.get(workspace.id) !== workspace.version;
      if (fresh) proc.holds.set(workspace.id, workspace.version);
      const started = performance.now();
      return new Promise<RunOutcome>((resolve) => {
        const timer = setTimeout(() => {
          // The sandbox did not answer long after its own deadline: the process itself is stuck.
          settle(proc, id, { ok: false, error: { kind: "timeout", name: "TimeoutError", message: `Function exceeded its ${runOptions.timeoutMs} ms timeout; its sandbox process was stopped` }, logs: [], durationMs: performance.now() - started });
          stop(slot, proc);
        }, runOptions.timeoutMs + graceMs);
        proc.pending.set(id, { resolve, message, workspace, started, timer });
        runOptions.signal?.addEventListener("abort", () => post(proc, { t: "cancel", id }), { once: true });
        if (!proc.child.connected) return crashed(proc, "was not reachable");
        post(proc, fresh ? { ...message, workspace } : message);
      });
    },

    async unload(workspaceId: string): Promise<void> {
      const proc = procs[hash(workspaceId) % count];
      if (!proc) return;
      proc.holds.delete(workspaceId);
      post(proc, { t: "unload", workspaceId });
    },

    async dispose(): Promise<void> {
      if (disposed) return;
      disposed = true;
      clearInterval(memoryCheck);
      await Promise.all(
        procs.map(async (proc) => {
          if (!proc) return;
          const child = proc.child;
          const exited = new Promise((resolve) => child.once("exit", resolve));
          // Closing the channel asks the process to dispose of its sandbox and exit; kill it if it does not.
          child.disconnect();
          const kill = setTimeout(() => child.kill("SIGKILL"), 3000);
          await exited;
          clearTimeout(kill);
        }),
      );
    },

    /** Process ids, for tests and operators. */
    pids(): Array<number | undefined> {
      return procs.map((proc) => proc?.child.pid);
    },

    /** Which process a workspace runs on. */
    processOf(workspaceId: string): number {
      return hash(workspaceId) % count;
    },
  } satisfies SandboxAdapter & Record<string, unknown>;
  return adapter;
}
