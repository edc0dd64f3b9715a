/**
 * The shapes shared by the core, the sandbox adapters and the storage layer.
 * Nothing here knows about HTTP.
 */

export type Language = "nodejs" | "python";

export type ParameterType = "string" | "number" | "integer" | "boolean" | "object" | "array" | "null";

export interface ParameterSpec {
  type?: ParameterType;
  description?: string;
  /** Applied by the service when the caller omits the parameter. Never checked against `type`. */
  default?: unknown;
}

export interface FunctionSpec {
  code: string;
  parameters?: Record<string, ParameterSpec>;
  language?: Language;
  description?: string;
}

/** The deploy body, as stored in `workspace.yaml`. */
export interface WorkspaceSpec {
  functions: Record<string, FunctionSpec>;
  disableNpmRegistry?: boolean;
  dependencies?: Record<string, string>;
}

/** A workspace ready for an adapter: validated, versioned, with its Node module generated. */
export interface CompiledWorkspace {
  id: string;
  /** Content hash of the stored spec; changes on every deploy that changes anything. */
  version: string;
  spec: WorkspaceSpec;
  /** The generated CommonJS module gathering the workspace's Node functions (see runtime/script.ts). */
  script: string;
  /** Maps a line of `script` back to the user's function and line, for stack traces. */
  lineMap: ScriptLineMap;
  /** npm packages the workspace may `require` (see runtime/dependencies.ts); none when absent. */
  modules?: WorkspaceModules;
}

export interface WorkspaceModules {
  /** Package names a function may require: the service's allow/block lists already applied. */
  names: string[];
  /** The workspace's install (`<root>/<key>/node_modules`): registry code, run inside the sandbox. */
  installDir?: string;
  /** The operator's shared packages: trusted like builtins, loaded outside the sandbox. */
  sharedDir?: string;
}

/** One entry per function, in script order: its body starts at `firstLine` of the script (1-based). */
export type ScriptLineMap = Array<{ name: string; firstLine: number; lastLine: number }>;

export type LogLevel = "log" | "info" | "warn" | "error" | "debug";

export interface LogEntry {
  level: LogLevel;
  message: string;
  timestamp: string;
}

export interface RunRequest {
  workspace: CompiledWorkspace;
  functionName: string;
  /** Values as the caller sent them; defaults are applied by the generated code, not here. */
  parameters: Record<string, unknown>;
}

export interface RunOptions {
  timeoutMs: number;
  signal?: AbortSignal;
}

export type RunErrorKind = "function" | "timeout" | "memory" | "dependency" | "upstream";

export interface RunError {
  kind: RunErrorKind;
  name: string;
  message: string;
  stack?: string;
}

/** A failure of the user's code is a value; a failure of the host is a thrown, named error. */
export type RunOutcome =
  | { ok: true; result: unknown; logs: LogEntry[]; durationMs: number }
  | { ok: false; error: RunError; logs: LogEntry[]; durationMs: number };

export interface AdapterFlags {
  languages: Language[];
  /** Runs are stopped when they exceed a memory limit (MemoryLimitError). */
  memoryLimit: boolean;
  /** `require()` reaches Node builtins. */
  builtins: boolean;
}

/** Where a body failed to compile, relative to the body (1-based). */
export interface SyntaxProblem {
  line: number;
  column?: number;
  message: string;
}

export interface SandboxAdapter {
  readonly name: string;
  readonly flags: AdapterFlags;
  /** (Re)load a workspace's code; idempotent by `version`. Runs load on demand, so this is optional to call. */
  load(workspace: CompiledWorkspace): Promise<void>;
  run(request: RunRequest, options: RunOptions): Promise<RunOutcome>;
  /** Forget a workspace: end its worker or runtime. */
  unload(workspaceId: string): Promise<void>;
  /** Idempotent; frees workers, wasm memory, sockets. Later calls to `run` throw `AdapterDisposedError`. */
  dispose(): Promise<void>;
}
