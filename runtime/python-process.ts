/**
 * Runs the bundled Python API (runtime/python/server.py) as a child process, so that a machine with
 * `python3` runs Python functions out of the box, with no `PYTHON_API_URL` to set up. Node only.
 *
 * - The child gets only the environment it is given (nothing secret from this process).
 * - It is restarted when it dies, after a backoff that grows while it keeps dying; its port stays
 *   the same, so the URL handed out once stays valid.
 * - It is ended by `stop()`, and by this process exiting (a last-resort SIGTERM).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import type { ServiceLogger } from "./service.ts";

export interface BundledPythonApiOptions {
  /** The interpreter, looked up in `env.PATH`. @default "python3" */
  python?: string;
  /** @default 0: a free port, picked once and kept across restarts */
  port?: number;
  /** @default "127.0.0.1": reachable from this machine only */
  host?: string;
  /** The child's whole environment (`PORT` and `HOST` are added). @default {} */
  env?: Record<string, string | undefined>;
  /**
   * Directory holding server.py and kernel.py. @default runtime/python from the sources; in the
   * Nitro build, `python/` beside .output/server/index.mjs (Nitro makes `import.meta.url` the entry's).
   */
  scriptDir?: string | URL;
  /** Wait for the `listening on` line at most this long. @default 10_000 */
  startTimeoutMs?: number;
  /** Hears about restarts and the child's stderr. */
  logger?: ServiceLogger;
}

export interface BundledPythonApi {
  /** Where it listens, e.g. `http://127.0.0.1:40123`. */
  readonly url: string;
  /** The current child's process id; a new one after a restart. */
  readonly pid: number | undefined;
  /** Ends the child and stops restarting it. Idempotent. */
  stop(): Promise<void>;
}

/** The interpreter does not exist: Python functions cannot run on this machine. */
export class PythonNotFoundError extends Error {
  constructor(readonly python: string) {
    super(`${python} was not found on this machine's PATH`);
    this.name = "PythonNotFoundError";
  }
}

const READY_LINE = /python-api listening on (http:\/\/\S+)/;
const FIRST_BACKOFF_MS = 500;
const MAX_BACKOFF_MS = 30_000;
/** A child that lived this long was healthy: the next restart starts over from the first backoff. */
const STABLE_AFTER_MS = 30_000;
const STOP_GRACE_MS = 5_000;
const STDERR_TAIL_LINES = 20;

function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once("error", reject);
    probe.listen(0, host, () => {
      const { port } = probe.address() as { port: number };
      probe.close(() => resolve(port));
    });
  });
}

const silentLogger: ServiceLogger = { info() {}, warn() {}, error() {} };

/**
 * Starts the Python API and resolves once it listens; rejects if the first start fails
 * (`PythonNotFoundError` when the interpreter is missing).
 *
 * @example
 *   const api = await startBundledPythonApi({ env: { PATH: process.env.PATH, KERNEL_POOL_SIZE: "2" } })
 *   const python = createPythonApiAdapter({ baseUrl: api.url })
 *   // ... later
 *   await api.stop()
 */
export async function startBundledPythonApi(options: BundledPythonApiOptions = {}): Promise<BundledPythonApi> {
  const python = options.python ?? "python3";
  const host = options.host ?? "127.0.0.1";
  const port = options.port || (await freePort(host));
  const scriptDir = options.scriptDir ?? new URL("./python/", import.meta.url);
  const serverPath = join(typeof scriptDir === "string" ? scriptDir : fileURLToPath(scriptDir), "server.py");
  const env = { ...options.env, PORT: String(port), HOST: host };
  const startTimeoutMs = options.startTimeoutMs ?? 10_000;
  const logger = options.logger ?? silentLogger;
  const url = `http://${host.includes(":") ? `[${host}]` : host}:${port}`;

  let child: ChildProcess | undefined;
  let stopping = false;
  let restartTimer: NodeJS.Timeout | undefined;
  let backoffMs = FIRST_BACKOFF_MS;

  /** One child, resolved when it listens; it reports its own death to `onDeath` afterwards. */
  function launch(): Promise<void> {
    return new Promise((resolve, reject) => {
      // stdin is a pipe the API watches: when this process dies, even by SIGKILL, the API stops too.
      const proc = spawn(python, [serverPath], { env: { ...env, PYTHON_API_EXIT_WITH_STDIN: "1" }, stdio: ["pipe", "pipe", "pipe"] });
      child = proc;
      const startedAt = Date.now();
      const stderrTail: string[] = [];
      let ready = false;
      let settled = false;
      const fail = (error: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(startTimer);
        proc.kill("SIGKILL");
        reject(error);
      };
      const failWith = (problem: string) => {
        const tail = stderrTail.length > 0 ? `; its last output: ${stderrTail.join(" | ")}` : "";
        fail(new Error(`The Python API (${python} ${serverPath}) ${problem}${tail}`));
      };
      const startTimer = setTimeout(() => failWith(`did not start listening within ${startTimeoutMs} ms`), startTimeoutMs);

      createInterface({ input: proc.stdout! }).on("line", (line) => {
        if (!ready && READY_LINE.test(line)) {
          ready = settled = true;
          clearTimeout(startTimer);
          resolve();
        }
      });
      createInterface({ input: proc.stderr! }).on("line", (line) => {
        stderrTail.push(line);
        if (stderrTail.length > STDERR_TAIL_LINES) stderrTail.shift();
        logger.warn("Python API stderr", { line });
      });
      proc.once("error", (error: NodeJS.ErrnoException) => {
        if (error.code === "ENOENT") fail(new PythonNotFoundError(python));
        else failWith(`could not be started: ${error.message}`);
      });
      proc.once("exit", (code, signal) => {
        if (!ready) failWith(`exited before listening (${signal ?? `exit code ${code}`})`);
        else onDeath(code, signal, Date.now() - startedAt);
      });
      // A forgotten stop() must not keep this process alive; the `exit` handler below ends the child.
      proc.unref();
      for (const stream of [proc.stdout, proc.stderr]) (stream as unknown as { unref?(): void }).unref?.();
    });
  }

  function onDeath(code: number | null, signal: NodeJS.Signals | null, livedMs: number): void {
    if (stopping) return;
    if (livedMs >= STABLE_AFTER_MS) backoffMs = FIRST_BACKOFF_MS;
    logger.warn("Python API exited, restarting it", { code, signal, restartInMs: backoffMs });
    scheduleRestart();
  }

  function scheduleRestart(): void {
    const waitMs = backoffMs;
    backoffMs = Math.min(backoffMs * 2, MAX_BACKOFF_MS);
    restartTimer = setTimeout(() => {
      if (stopping) return;
      launch().then(
        () => logger.info("Python API restarted", { url }),
        (error: Error) => {
          if (stopping) return;
          logger.error("Python API restart failed", { error: error.message, retryInMs: backoffMs });
          scheduleRestart();
        },
      );
    }, waitMs);
    restartTimer.unref();
  }

  const killOnExit = () => child?.kill("SIGTERM");
  process.once("exit", killOnExit);

  try {
    await launch();
  } catch (error) {
    process.off("exit", killOnExit);
    throw error;
  }

  return {
    url,
    get pid() {
      return child?.pid;
    },
    async stop(): Promise<void> {
      if (stopping) return;
      stopping = true;
      clearTimeout(restartTimer);
      process.off("exit", killOnExit);
      const proc = child;
      if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
      const exited = new Promise((resolve) => proc.once("exit", resolve));
      // SIGTERM lets the server end its kernels; SIGKILL only if it does not.
      proc.kill("SIGTERM");
      const force = setTimeout(() => proc.kill("SIGKILL"), STOP_GRACE_MS);
      await exited;
      clearTimeout(force);
    },
  };
}
