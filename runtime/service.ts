/**
 * The core: deploy, read, delete, list and run workspaces over a store and sandbox adapters.
 * Framework-free: `server/` turns its results and named errors into HTTP, and other h3 apps can
 * embed it as it is.
 */
import { LRUCache } from "lru-cache";
import type { WorkspaceStore } from "../storage/workspace-store.ts";
import type { DependencyManager, DependencyStatus } from "./dependencies.ts";
import { workspaceIdProblem } from "../storage/keys.ts";
import { notFound, validationError, type ValidationIssue } from "./errors.ts";
import { compileWorkspace, nodeFunctions } from "./script.ts";
import type { CompiledWorkspace, RunOutcome, SandboxAdapter, SyntaxProblem, WorkspaceSpec } from "./types.ts";
import { parseWorkspaceSpec } from "./validate.ts";

/** An adapter that can also check a body's syntax at deploy, without running it. */
export type NodeSandboxAdapter = SandboxAdapter & { checkSyntax?(code: string): SyntaxProblem | undefined };

/** The Python adapter; it may compile a spec's Python functions at deploy (`undefined`: could not tell). */
export type PythonSandboxAdapter = SandboxAdapter & {
  checkFunctions?(spec: WorkspaceSpec): Promise<Array<{ function: string; line: number; message: string }> | undefined>;
};

export interface ServiceLogger {
  info(message: string, fields?: Record<string, unknown>): void;
  warn(message: string, fields?: Record<string, unknown>): void;
  error(message: string, fields?: Record<string, unknown>): void;
}

export interface FunctionsServiceOptions {
  store: WorkspaceStore<WorkspaceSpec>;
  /** Runs `nodejs` functions. */
  node: NodeSandboxAdapter;
  /** Runs `python` functions; without it they fail with a clear error. */
  python?: PythonSandboxAdapter;
  /** `FUNCTIONS_RUN_TIMEOUT`. @default 20_000 */
  runTimeoutMs?: number;
  /** `PYTHON_FUNCTIONS_RUN_TIMEOUT`. @default 20_000 */
  pythonRunTimeoutMs?: number;
  /** npm packages of Node functions (runtime/dependencies.ts); without it, `require` reaches builtins only. */
  dependencies?: DependencyManager;
  logger?: ServiceLogger;
}

export interface RunCallOptions {
  signal?: AbortSignal;
  /** Echoed in the service's log lines (`x-correlation-id`). */
  correlationId?: string;
}

export type FunctionsService = ReturnType<typeof createFunctionsService>;

const silentLogger: ServiceLogger = { info() {}, warn() {}, error() {} };

function checkWorkspaceId(id: string): void {
  const problem = workspaceIdProblem(id);
  if (problem) throw validationError([{ path: "workspace", message: `workspace id ${problem}` }]);
}

/**
 * @example
 *   const service = createFunctionsService({ store, node: createVm2Adapter() })
 *   await service.deploy("test", { functions: { hello: { code: "return 'hi ' + name", parameters: { name: {} } } } })
 *   await service.run("test", "hello", { name: "you" }) // { ok: true, result: "hi you", logs: [], durationMs: 0.3 }
 */
export function createFunctionsService(options: FunctionsServiceOptions) {
  const { store, node, python, dependencies } = options;
  const logger = options.logger ?? silentLogger;
  const runTimeoutMs = options.runTimeoutMs ?? 20_000;
  const pythonRunTimeoutMs = options.pythonRunTimeoutMs ?? 20_000;
  /** Compiled workspaces by id; checked against the stored version on every run. */
  const compiled = new LRUCache<string, CompiledWorkspace>({ max: 10_000 });
  /** Loads in flight, by id and the version that was seen when they started. */
  const loading = new Map<string, Promise<CompiledWorkspace | undefined>>();

  function syntaxIssues(spec: WorkspaceSpec): ValidationIssue[] {
    if (!node.checkSyntax) return [];
    const issues: ValidationIssue[] = [];
    for (const [name, fn] of nodeFunctions(spec)) {
      const problem = node.checkSyntax(fn.code);
      if (problem) issues.push({ path: `functions.${name}.code`, message: `${problem.message} (function '${name}', line ${problem.line})` });
    }
    return issues;
  }

  /** The generated module, plus the packages it may load when npm dependencies are on. */
  function compile(id: string, version: string, spec: WorkspaceSpec): CompiledWorkspace {
    const workspace = compileWorkspace(id, version, spec);
    const modules = dependencies?.modules(spec);
    return modules ? { ...workspace, modules } : workspace;
  }

  async function loadCompiled(id: string): Promise<CompiledWorkspace | undefined> {
    const stored = await store.get(id);
    if (!stored) return undefined;
    const workspace = compile(id, stored.version, stored.spec);
    compiled.set(id, workspace);
    return workspace;
  }

  /** Forgets a workspace deleted through another instance, ending this instance's workers for it. */
  async function forget(id: string): Promise<void> {
    if (!compiled.delete(id)) return;
    await Promise.all([node.unload(id), python?.unload(id)]);
  }

  /**
   * The workspace as stored now: one small read when warm, a reload after a deploy anywhere.
   * A cached entry always pairs a version with the spec hashing to it, so running it when the
   * versions match runs exactly what is stored.
   */
  async function current(id: string): Promise<CompiledWorkspace | undefined> {
    const version = await store.version(id);
    if (version === undefined) {
      await forget(id);
      return undefined;
    }
    const cached = compiled.get(id);
    if (cached?.version === version) return cached;
    // Join only a load that started after this version was seen: an older one may have read the
    // spec before the deploy that wrote `version`, and would run stale code.
    const key = `${id}\0${version}`;
    let inFlight = loading.get(key);
    if (!inFlight) {
      inFlight = loadCompiled(id).finally(() => loading.delete(key));
      loading.set(key, inFlight);
    }
    return inFlight;
  }

  return {
    /** Validates and stores a workspace (full replace); answers the stored body. */
    async deploy(id: string, body: unknown): Promise<WorkspaceSpec> {
      checkWorkspaceId(id);
      const spec = parseWorkspaceSpec(body);
      const pythonProblems = (await python?.checkFunctions?.(spec)) ?? [];
      const issues = [
        ...syntaxIssues(spec),
        ...pythonProblems.map((p) => ({ path: `functions.${p.function}.code`, message: p.message })),
        ...(dependencies?.check(spec) ?? []),
      ];
      if (issues.length > 0) throw validationError(issues);
      // The store calls back with the spec it settled on, which is another deploy's when one
      // through another instance finished later; the last call is what is stored.
      let last: CompiledWorkspace | undefined;
      const version = await store.put(id, spec, (v, stored) => (last = compile(id, v, stored)).script);
      if (version === undefined) compiled.delete(id);
      else compiled.set(id, last!);
      // Not awaited: runs wait for the install (within their timeout), the deploy does not.
      dependencies?.prepare(spec);
      logger.info("Workspace deployed", { workspace: id, version, functions: Object.keys(spec.functions).length });
      return spec;
    },

    async get(id: string): Promise<{ spec: WorkspaceSpec; version: string; dependencies?: DependencyStatus }> {
      checkWorkspaceId(id);
      const stored = await store.get(id);
      if (!stored) throw notFound(`Workspace '${id}' not found`);
      return { spec: stored.spec, version: stored.version, ...(dependencies && { dependencies: dependencies.status(stored.spec) }) };
    },

    async delete(id: string): Promise<void> {
      checkWorkspaceId(id);
      if (!(await store.delete(id))) throw notFound(`Workspace '${id}' not found`);
      compiled.delete(id);
      await Promise.all([node.unload(id), python?.unload(id)]);
      logger.info("Workspace deleted", { workspace: id });
    },

    list(): Promise<string[]> {
      return store.list();
    },

    /** Runs one function. Failures of the user's code come back as `{ ok: false }` outcomes. */
    async run(id: string, functionName: string, parameters: Record<string, unknown> = {}, call: RunCallOptions = {}): Promise<RunOutcome> {
      checkWorkspaceId(id);
      const workspace = await current(id);
      if (!workspace) throw notFound(`Workspace '${id}' not found`);
      if (!Object.hasOwn(workspace.spec.functions, functionName)) throw notFound(`Function '${functionName}' not found in workspace '${id}'`);
      const language = workspace.spec.functions[functionName].language ?? "nodejs";
      const adapter = language === "python" ? python : node;
      if (!adapter) {
        return { ok: false, error: { kind: "upstream", name: "PythonApiError", message: "Python functions are not enabled on this service" }, logs: [], durationMs: 0 };
      }
      let timeoutMs = language === "python" ? pythonRunTimeoutMs : runTimeoutMs;
      let outcome: RunOutcome | undefined;
      if (language === "nodejs" && dependencies) {
        // The wait for an install counts against the run's timeout.
        const started = performance.now();
        const error = await dependencies.waitUntilReady(workspace.spec, { timeoutMs, signal: call.signal });
        const waitedMs = performance.now() - started;
        if (error) outcome = { ok: false, error, logs: [], durationMs: waitedMs };
        timeoutMs = Math.max(1, Math.round(timeoutMs - waitedMs));
      }
      outcome ??= await adapter.run({ workspace, functionName, parameters }, { timeoutMs, signal: call.signal });
      if (!outcome.ok) {
        logger.warn("Failed running function", {
          workspace: id,
          function: functionName,
          error: outcome.error.name,
          message: outcome.error.message,
          correlationId: call.correlationId,
        });
      }
      return outcome;
    },

    /** Rewrites every workspace's generated script from its `workspace.yaml` (`UPDATE_SCRIPTS_ON_STARTUP`). */
    async refreshScripts(): Promise<number> {
      let count = 0;
      for (const id of await store.list()) {
        if (await store.refreshScript(id, (version, spec) => compileWorkspace(id, version, spec).script)) count++;
      }
      return count;
    },

    async dispose(): Promise<void> {
      await Promise.all([node.dispose(), python?.dispose()]);
    },
  };
}
