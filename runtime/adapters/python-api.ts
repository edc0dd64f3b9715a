/**
 * The python-api adapter: runs `language: python` functions by forwarding them over HTTP to the
 * Python API (runtime/python/server.py, or any server speaking its protocol v1, see
 * docs/python-api.md).
 *
 * - Warm runs are small: the API keeps each workspace's code by version, so the functions travel
 *   only on the first run of a version, or when the API answers 409 `VersionUnknown` (it restarted,
 *   or another instance sent that version first).
 * - Run timeout (hard, on this side too): the API answers within about `timeoutMs`; if it does not,
 *   the request is aborted `graceMs` later and the run answers `TimeoutError`, so a hung API never
 *   hangs a caller.
 * - Any failure of the API itself (down, 5xx, an answer that is not protocol v1) is a run outcome of
 *   kind `upstream` (HTTP 502 `PythonApiError`), never a throw.
 * - Connections are kept alive and pooled by the global fetch (undici).
 */
import { adapterDisposed } from "../errors.ts";
import type { CompiledWorkspace, FunctionSpec, LogEntry, LogLevel, RunError, RunOptions, RunOutcome, RunRequest, SandboxAdapter, WorkspaceSpec } from "../types.ts";

export const PROTOCOL_VERSION = 1;
const ADAPTER_NAME = "python-api";
const FLAGS = { languages: ["python" as const], memoryLimit: true, builtins: false };

export interface PythonApiAdapterOptions {
  /** Where the Python API listens, e.g. `http://localhost:8000` (`PYTHON_API_URL`). */
  baseUrl: string;
  /** Says in error messages where `baseUrl` came from. @default "PYTHON_API_URL" */
  source?: string;
  /** Extra wait past a run's `timeoutMs` before this side gives up on the API. @default 1000 */
  graceMs?: number;
  /** For tests and custom agents. @default globalThis.fetch, looked up at each call */
  fetch?: typeof fetch;
}

/** `POST /v1/run` body, protocol v1. */
interface RunBody {
  protocol: typeof PROTOCOL_VERSION;
  workspace: string;
  version: string;
  functions?: Record<string, { code: string; parameters: NonNullable<FunctionSpec["parameters"]> }>;
  function: string;
  parameters: Record<string, unknown>;
  timeoutMs: number;
}

const LOG_LEVELS: readonly LogLevel[] = ["log", "info", "warn", "error", "debug"];
const API_ERROR_KINDS: readonly RunError["kind"][] = ["function", "timeout", "memory"];

/** Thrown inside this module only, to turn into an `upstream` outcome. */
class UpstreamProblem extends Error {}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function isLogEntry(value: unknown): value is LogEntry {
  return isRecord(value) && LOG_LEVELS.includes(value.level as LogLevel) && typeof value.message === "string" && typeof value.timestamp === "string";
}

function isRunError(value: unknown): value is RunError {
  return (
    isRecord(value) &&
    API_ERROR_KINDS.includes(value.kind as RunError["kind"]) &&
    typeof value.name === "string" &&
    typeof value.message === "string" &&
    (value.stack === undefined || value.stack === null || typeof value.stack === "string")
  );
}

/** A 200 answer as a `RunOutcome`, or why it is not one: nothing unchecked reaches the caller. */
function parseOutcome(body: unknown): RunOutcome {
  if (!isRecord(body) || typeof body.ok !== "boolean") throw new UpstreamProblem("its answer has no boolean `ok`");
  if (!Array.isArray(body.logs) || !body.logs.every(isLogEntry)) throw new UpstreamProblem("its answer's `logs` is not a list of {level, message, timestamp}");
  if (typeof body.durationMs !== "number" || !Number.isFinite(body.durationMs)) throw new UpstreamProblem("its answer's `durationMs` is not a number");
  const { logs, durationMs } = body as { logs: LogEntry[]; durationMs: number };
  if (body.ok) {
    if (!("result" in body)) throw new UpstreamProblem("its answer has no `result`");
    return { ok: true, result: body.result, logs, durationMs };
  }
  if (!isRunError(body.error)) throw new UpstreamProblem("its answer's `error` is not {kind: function|timeout|memory, name, message}");
  const { kind, name, message, stack } = body.error;
  return { ok: false, error: stack ? { kind, name, message, stack } : { kind, name, message }, logs, durationMs };
}

/** A short sentence for a fetch failure: undici hides the useful part (ECONNREFUSED...) in `cause`. */
function describeFetchError(error: unknown): string {
  const cause = (error as { cause?: { code?: string; message?: string } })?.cause;
  switch (cause?.code) {
    case "ECONNREFUSED":
      return "the connection was refused (is the Python API running?)";
    case "ENOTFOUND":
    case "EAI_AGAIN":
      return "its host name could not be resolved";
    case "ECONNRESET":
    case "UND_ERR_SOCKET":
      return "the connection was closed before it answered";
    default:
      return `the request failed: ${cause?.message ?? (error as Error)?.message ?? String(error)}`;
  }
}

/** The `functions` map of protocol v1: every Python function of the workspace. */
function pythonFunctions(spec: WorkspaceSpec): NonNullable<RunBody["functions"]> {
  const functions: NonNullable<RunBody["functions"]> = {};
  for (const [name, fn] of Object.entries(spec.functions)) {
    if (fn.language === "python") functions[name] = { code: fn.code, parameters: fn.parameters ?? {} };
  }
  return functions;
}

/** A Python function that does not compile, as `/v1/check` names it. */
export interface PythonProblem {
  function: string;
  line: number;
  message: string;
}

/**
 * @example
 *   const python = createPythonApiAdapter({ baseUrl: "http://localhost:8000" })
 *   await python.run({ workspace, functionName: "hello", parameters: { name: "you" } }, { timeoutMs: 20_000 })
 */
export function createPythonApiAdapter(options: PythonApiAdapterOptions) {
  const baseUrl = options.baseUrl.replace(/\/+$/, "");
  const runUrl = `${baseUrl}/v1/run`;
  const source = options.source ?? "PYTHON_API_URL";
  const graceMs = options.graceMs ?? 1000;
  // Looked up per call, not captured: test interceptors and agents patch the global after import.
  const doFetch: typeof fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init));
  /** Per workspace, the version the API is known to hold. */
  const versionsSent = new Map<string, string>();
  /** Aborted on dispose, so shutting down never waits for a slow API. */
  const inFlight = new Set<AbortController>();
  let disposed = false;

  const upstream = (problem: string, started: number): RunOutcome => ({
    ok: false,
    error: { kind: "upstream", name: "PythonApiError", message: `The Python API at ${baseUrl} (${source}) ${problem}` },
    logs: [],
    durationMs: performance.now() - started,
  });

  /** One POST; answers the status and the parsed JSON body, or throws UpstreamProblem. */
  async function post(body: RunBody, signal: AbortSignal): Promise<{ status: number; json: unknown }> {
    const response = await doFetch(runUrl, {
      method: "POST",
      headers: { "content-type": "application/json", accept: "application/json" },
      body: JSON.stringify(body),
      signal,
    });
    const text = await response.text();
    try {
      return { status: response.status, json: JSON.parse(text) };
    } catch {
      const snippet = text.length > 120 ? `${text.slice(0, 120)}...` : text;
      throw new UpstreamProblem(`answered HTTP ${response.status} with a body that is not JSON: ${JSON.stringify(snippet)}`);
    }
  }

  /** The exchange itself: a warm request first, the functions again if the API does not know the version. */
  async function exchange(request: RunRequest, timeoutMs: number, signal: AbortSignal): Promise<RunOutcome> {
    const { workspace } = request;
    const body: RunBody = {
      protocol: PROTOCOL_VERSION,
      workspace: workspace.id,
      version: workspace.version,
      function: request.functionName,
      // As sent by the caller: the API applies defaults, so they are declared once, in `functions`.
      parameters: request.parameters,
      timeoutMs,
    };
    if (versionsSent.get(workspace.id) !== workspace.version) body.functions = pythonFunctions(workspace.spec);
    let answer = await post(body, signal);
    if (answer.status === 409 && !body.functions && isRecord(answer.json) && answer.json.error === "VersionUnknown") {
      body.functions = pythonFunctions(workspace.spec);
      answer = await post(body, signal);
    }
    const { status, json } = answer;
    if (status !== 200) {
      const detail = isRecord(json) && typeof json.error === "string" ? `: ${json.error}${typeof json.message === "string" ? ` (${json.message})` : ""}` : "";
      throw new UpstreamProblem(`answered HTTP ${status}${detail}`);
    }
    const outcome = parseOutcome(json);
    if (body.functions) versionsSent.set(workspace.id, workspace.version);
    return outcome;
  }

  return {
    name: ADAPTER_NAME,
    flags: FLAGS,

    /**
     * Compiles a spec's Python functions in the Python API (`POST /v1/check`), without running
     * them: the problems found, or `undefined` when the API could not tell (down, old, slow), in
     * which case a deploy goes on and a broken function fails at run instead.
     */
    async checkFunctions(spec: WorkspaceSpec): Promise<PythonProblem[] | undefined> {
      const functions = pythonFunctions(spec);
      if (Object.keys(functions).length === 0) return [];
      try {
        const response = await doFetch(`${baseUrl}/v1/check`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ protocol: PROTOCOL_VERSION, functions }),
          signal: AbortSignal.timeout(5000),
        });
        const json = response.ok ? ((await response.json()) as { problems?: unknown }) : undefined;
        return Array.isArray(json?.problems) ? (json.problems as PythonProblem[]) : undefined;
      } catch {
        return undefined;
      }
    },

    /** The code travels with the first run of a version; nothing to do ahead of it. */
    async load(): Promise<void> {
      if (disposed) throw adapterDisposed(ADAPTER_NAME);
    },

    async run(request: RunRequest, runOptions: RunOptions): Promise<RunOutcome> {
      if (disposed) throw adapterDisposed(ADAPTER_NAME);
      const started = performance.now();
      const { timeoutMs } = runOptions;
      const controller = new AbortController();
      const deadline = setTimeout(() => controller.abort(), timeoutMs + graceMs);
      const onCallerAbort = () => controller.abort();
      runOptions.signal?.addEventListener("abort", onCallerAbort, { once: true });
      if (runOptions.signal?.aborted) controller.abort();
      inFlight.add(controller);
      try {
        return await exchange(request, timeoutMs, controller.signal);
      } catch (error) {
        const durationMs = performance.now() - started;
        if (disposed) return { ok: false, error: { kind: "upstream", name: "AdapterDisposedError", message: "The python-api adapter was shut down during the run" }, logs: [], durationMs };
        if (runOptions.signal?.aborted) return { ok: false, error: { kind: "timeout", name: "AbortError", message: "The run was aborted by its caller" }, logs: [], durationMs };
        if (controller.signal.aborted) {
          const message = `Function exceeded its ${timeoutMs} ms timeout (the Python API did not answer within ${timeoutMs + graceMs} ms)`;
          return { ok: false, error: { kind: "timeout", name: "TimeoutError", message }, logs: [], durationMs };
        }
        if (error instanceof UpstreamProblem) return upstream(error.message, started);
        return upstream(`could not be reached: ${describeFetchError(error)}`, started);
      } finally {
        clearTimeout(deadline);
        runOptions.signal?.removeEventListener("abort", onCallerAbort);
        inFlight.delete(controller);
      }
    },

    async unload(workspaceId: string): Promise<void> {
      versionsSent.delete(workspaceId);
    },

    async dispose(): Promise<void> {
      disposed = true;
      for (const controller of inFlight) controller.abort();
      versionsSent.clear();
    },
  } satisfies SandboxAdapter & Record<string, unknown>;
}

/**
 * Stands in for the Python API when there is none to reach (e.g. `python3` is missing and no
 * `PYTHON_API_URL` is set): every Python run answers `PythonApiError` with `reason`.
 */
export function createUnavailablePythonAdapter(reason: string) {
  let disposed = false;
  return {
    name: ADAPTER_NAME,
    flags: FLAGS,
    async load(): Promise<void> {},
    async run(): Promise<RunOutcome> {
      if (disposed) throw adapterDisposed(ADAPTER_NAME);
      return { ok: false, error: { kind: "upstream", name: "PythonApiError", message: reason }, logs: [], durationMs: 0 };
    },
    async unload(): Promise<void> {},
    async dispose(): Promise<void> {
      disposed = true;
    },
  } satisfies SandboxAdapter;
}
