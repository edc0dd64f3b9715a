/**
 * Validation of deploy bodies: shape, unknown keys, and names that become JavaScript identifiers in
 * the generated module. Every problem is reported with the path that names it; nothing is stored
 * unless the whole body is valid.
 */
import { validationError, type ValidationIssue } from "./errors.ts";
import type { FunctionSpec, Language, ParameterType, WorkspaceSpec } from "./types.ts";

const PARAMETER_TYPES: ReadonlySet<string> = new Set<ParameterType>(["string", "number", "integer", "boolean", "object", "array", "null"]);
const LANGUAGES: ReadonlySet<string> = new Set<Language>(["nodejs", "python"]);

const RESERVED_WORDS = `break case catch class const continue debugger default delete do else enum export extends false
  finally for function if import in instanceof new null return super switch this throw true try typeof var void while
  with yield let static implements interface package private protected public await arguments eval`;

/** Names the sandbox provides (or JavaScript does) that a function or parameter must not shadow. */
const SANDBOX_GLOBALS = `cache console require module exports process global globalThis Buffer fetch URL URLSearchParams
  TextEncoder TextDecoder AbortController AbortSignal setTimeout clearTimeout setInterval clearInterval setImmediate
  clearImmediate queueMicrotask structuredClone Headers Request Response FormData Blob atob btoa undefined NaN Infinity
  Object Function Array Number String Boolean Symbol BigInt Date Promise RegExp Error AggregateError EvalError RangeError
  ReferenceError SyntaxError TypeError URIError JSON Math Intl Reflect Proxy Map Set WeakMap WeakSet WeakRef
  FinalizationRegistry ArrayBuffer SharedArrayBuffer DataView Atomics Int8Array Uint8Array Uint8ClampedArray Int16Array
  Uint16Array Int32Array Uint32Array Float32Array Float64Array BigInt64Array BigUint64Array parseInt parseFloat isNaN
  isFinite encodeURI decodeURI encodeURIComponent decodeURIComponent escape unescape WebAssembly`;

/** Identifiers that are legal but dangerous as property keys of the generated module's exports. */
const OBJECT_KEYS = "constructor prototype __proto__ toString valueOf hasOwnProperty isPrototypeOf propertyIsEnumerable toLocaleString";

const FORBIDDEN_NAMES: ReadonlyMap<string, string> = new Map([
  ...words(RESERVED_WORDS).map((w) => [w, "is a reserved word"] as const),
  ...words(SANDBOX_GLOBALS).map((w) => [w, "would shadow a sandbox global"] as const),
  ...words(OBJECT_KEYS).map((w) => [w, "is an Object.prototype member"] as const),
]);

const IDENTIFIER = /^[\p{ID_Start}$_][\p{ID_Continue}$\u200C\u200D]*$/u;
const MAX_NAME_LENGTH = 128;

function words(list: string): string[] {
  return list.split(/\s+/).filter(Boolean);
}

/** Why `name` cannot be a function or parameter name, or undefined when it can. */
export function identifierProblem(name: string): string | undefined {
  if (name.length === 0) return "must not be empty";
  if (name.length > MAX_NAME_LENGTH) return `must be at most ${MAX_NAME_LENGTH} characters`;
  if (!IDENTIFIER.test(name)) return "must be a valid JavaScript identifier (letters, digits, _ and $, not starting with a digit)";
  if (name.startsWith("__fx_")) return "must not start with __fx_ (reserved for the generated code)";
  const forbidden = FORBIDDEN_NAMES.get(name);
  return forbidden && `'${name}' ${forbidden}`;
}

/** Python keywords: none of them can name a parameter or a function (soft keywords like `match` can). */
const PYTHON_KEYWORDS: ReadonlySet<string> = new Set(
  words(`False None True and as assert async await break class continue def del elif else except finally for from global
  if import in is lambda nonlocal not or pass raise return try while with yield`),
);

/**
 * Python's builtins (3.10 to 3.13). The functions of a workspace are bound by name in one namespace,
 * so a function named `sum` would replace the builtin in every sibling; a parameter only shadows it
 * inside its own function, as Python itself allows (real workspaces name parameters `id`, `type`,
 * `input`, `filter`), so parameters are not checked against this list.
 */
const PYTHON_BUILTINS: ReadonlySet<string> = new Set(
  words(`abs aiter all anext any ascii bin bool breakpoint bytearray bytes callable chr classmethod compile complex
  copyright credits delattr dict dir divmod enumerate eval exec exit filter float format frozenset getattr globals hasattr
  hash help hex id input int isinstance issubclass iter len license list locals map max memoryview min next object oct
  open ord pow print property quit range repr reversed round set setattr slice sorted staticmethod str sum super tuple
  type vars zip Ellipsis NotImplemented ArithmeticError AssertionError AttributeError BaseException BaseExceptionGroup
  BlockingIOError BrokenPipeError BufferError BytesWarning ChildProcessError ConnectionAbortedError ConnectionError
  ConnectionRefusedError ConnectionResetError DeprecationWarning EOFError EncodingWarning EnvironmentError Exception
  ExceptionGroup FileExistsError FileNotFoundError FloatingPointError FutureWarning GeneratorExit IOError ImportError
  ImportWarning IndentationError IndexError InterruptedError IsADirectoryError KeyError KeyboardInterrupt LookupError
  MemoryError ModuleNotFoundError NameError NotADirectoryError NotImplementedError OSError OverflowError
  PendingDeprecationWarning PermissionError ProcessLookupError PythonFinalizationError RecursionError ReferenceError
  ResourceWarning RuntimeError RuntimeWarning StopAsyncIteration StopIteration SyntaxError SyntaxWarning SystemError
  SystemExit TabError TimeoutError TypeError UnboundLocalError UnicodeDecodeError UnicodeEncodeError UnicodeError
  UnicodeTranslateError UnicodeWarning UserWarning ValueError Warning ZeroDivisionError`),
);

/**
 * Names the Python kernel (runtime/python/kernel.py) gives every function, or that its generated
 * code uses inside the function: the shared `cache`, the capturing `print`, and `NameError` (caught
 * by the tail that returns a `result` variable).
 */
const PYTHON_KERNEL_NAMES: ReadonlySet<string> = new Set(["cache", "print", "NameError"]);

/** Python's identifier syntax (PEP 3131); ZWNJ/ZWJ are ID_Continue in JavaScript's Unicode, not in Python's. */
const PYTHON_IDENTIFIER = /^[\p{XID_Start}_](?:(?![\u200C\u200D])\p{XID_Continue})*$/u;

/**
 * Why `name` cannot name a function or a parameter of a `language: python` function, on top of
 * `identifierProblem` (which every function's names pass too), or undefined when it can.
 */
export function pythonIdentifierProblem(name: string, kind: "function" | "parameter"): string | undefined {
  if (!PYTHON_IDENTIFIER.test(name)) return "must be a valid Python identifier (letters, digits and _, not starting with a digit)";
  const normalized = name.normalize("NFKC");
  if (normalized !== name) return `must be written in Unicode NFKC form (Python reads '${name}' as '${normalized}')`;
  if (PYTHON_KEYWORDS.has(name)) return `'${name}' is a Python keyword`;
  if (/^__.*__$/.test(name)) return `'${name}' is a Python special name (__...__)`;
  if (PYTHON_KERNEL_NAMES.has(name)) return `'${name}' would shadow a name the Python kernel provides`;
  if (kind === "function" && PYTHON_BUILTINS.has(name)) return `'${name}' would shadow a Python builtin in every function of the workspace`;
  return undefined;
}

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function checkKeys(value: Json, allowed: readonly string[], path: string, issues: ValidationIssue[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) issues.push({ path: path ? `${path}.${key}` : key, message: `unknown key '${key}' (allowed: ${allowed.join(", ")})` });
  }
}

/** An npm package name, scoped or not, as `dependencies` keys and the package allow-lists use them. */
export function isPackageName(name: string): boolean {
  return /^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*$/i.test(name) && name.length <= 214;
}

function checkDependencies(value: unknown, path: string, issues: ValidationIssue[]): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) {
    issues.push({ path, message: "must be an object mapping package names to semver ranges" });
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const [name, range] of Object.entries(value)) {
    if (!isPackageName(name)) issues.push({ path: `${path}.${name}`, message: "is not a valid npm package name" });
    else if (typeof range !== "string" || range.length === 0 || range.length > 256) issues.push({ path: `${path}.${name}`, message: "must be a non-empty semver range string" });
    // npm would also take URLs, git specs and file paths here: those reach past the registry and the host's disk.
    else if (!/^[\w.+\-^~<>=|* ]+$/.test(range)) issues.push({ path: `${path}.${name}`, message: "must be a semver range or a dist-tag (URLs, git and file specs are not accepted)" });
    else Object.defineProperty(out, name, { value: range, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function checkParameter(value: unknown, path: string, issues: ValidationIssue[]): void {
  if (!isObject(value)) {
    issues.push({ path, message: "must be an object like { \"type\": \"string\" }" });
    return;
  }
  checkKeys(value, ["type", "description", "default"], path, issues);
  if (value.type !== undefined && (typeof value.type !== "string" || !PARAMETER_TYPES.has(value.type))) {
    issues.push({ path: `${path}.type`, message: `must be one of ${[...PARAMETER_TYPES].join(", ")}` });
  }
  if (value.description !== undefined && typeof value.description !== "string") issues.push({ path: `${path}.description`, message: "must be a string" });
}

function checkFunction(name: string, value: unknown, issues: ValidationIssue[]): void {
  const path = `functions.${name}`;
  const nameProblem = identifierProblem(name);
  if (nameProblem) issues.push({ path, message: `function name ${nameProblem}` });
  if (!isObject(value)) {
    issues.push({ path, message: "must be an object with a 'code' string" });
    return;
  }
  // Python functions are bound by name in one Python namespace and their parameters become Python locals.
  const python = value.language === "python";
  const pythonNameProblem = python && !nameProblem ? pythonIdentifierProblem(name, "function") : undefined;
  if (pythonNameProblem) issues.push({ path, message: `Python function name ${pythonNameProblem}` });
  checkKeys(value, ["code", "parameters", "language", "description", "dependencies"], path, issues);
  if (typeof value.code !== "string") issues.push({ path: `${path}.code`, message: "is required and must be a string (the body of an async function)" });
  if (value.language !== undefined && (typeof value.language !== "string" || !LANGUAGES.has(value.language))) {
    issues.push({ path: `${path}.language`, message: "must be 'nodejs' or 'python'" });
  }
  if (value.description !== undefined && typeof value.description !== "string") issues.push({ path: `${path}.description`, message: "must be a string" });
  checkDependencies(value.dependencies, `${path}.dependencies`, issues);
  if (value.parameters === undefined) return;
  if (!isObject(value.parameters)) {
    issues.push({ path: `${path}.parameters`, message: "must be an object mapping parameter names to { type, description, default }" });
    return;
  }
  for (const [param, spec] of Object.entries(value.parameters)) {
    const paramPath = `${path}.parameters.${param}`;
    const paramProblem = identifierProblem(param);
    if (paramProblem) issues.push({ path: paramPath, message: `parameter name ${paramProblem}` });
    const pythonParamProblem = python && !paramProblem ? pythonIdentifierProblem(param, "parameter") : undefined;
    if (pythonParamProblem) issues.push({ path: paramPath, message: `Python parameter name ${pythonParamProblem}` });
    checkParameter(spec, paramPath, issues);
  }
}

/**
 * Checks a deploy body and returns it as a `WorkspaceSpec`, or throws a `RequestValidationError`
 * listing every problem. Function-level `dependencies` (an older form) are merged into the
 * workspace-level map; everything else is kept exactly as sent.
 */
export function parseWorkspaceSpec(body: unknown): WorkspaceSpec {
  const issues: ValidationIssue[] = [];
  if (!isObject(body)) throw validationError([{ path: "body", message: "must be a JSON object with a 'functions' map" }]);
  checkKeys(body, ["functions", "disableNpmRegistry", "dependencies"], "", issues);
  if (body.disableNpmRegistry !== undefined && typeof body.disableNpmRegistry !== "boolean") issues.push({ path: "disableNpmRegistry", message: "must be a boolean" });
  const dependencies = checkDependencies(body.dependencies, "dependencies", issues);
  if (!isObject(body.functions)) {
    issues.push({ path: "functions", message: "is required and must be an object mapping function names to { code, parameters, language }" });
  } else {
    for (const [name, fn] of Object.entries(body.functions)) checkFunction(name, fn, issues);
  }
  if (issues.length > 0) throw validationError(issues);

  const functions = body.functions as Record<string, FunctionSpec & { dependencies?: Record<string, string> }>;
  const merged = { ...dependencies };
  let hasFunctionDependencies = false;
  const cleanFunctions: Record<string, FunctionSpec> = {};
  for (const [name, fn] of Object.entries(functions)) {
    const { dependencies: fnDependencies, ...rest } = fn;
    if (fnDependencies) {
      hasFunctionDependencies = true;
      for (const [pkg, range] of Object.entries(fnDependencies)) if (!Object.hasOwn(merged, pkg)) merged[pkg] = range;
    }
    cleanFunctions[name] = rest as FunctionSpec;
  }
  const spec: WorkspaceSpec = { ...(body as unknown as WorkspaceSpec), functions: cleanFunctions };
  if (hasFunctionDependencies || dependencies) spec.dependencies = merged;
  return spec;
}

