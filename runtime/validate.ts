/**
 * Validation of deploy bodies: shape, unknown keys, and names that become JavaScript identifiers in
 * the generated module. Every problem is reported with the path that names it; nothing is stored
 * unless the whole body is valid.
 */
import { validationError, type ValidationIssue } from "./errors.ts";
import type { FunctionSpec, Language, ParameterSpec, ParameterType, WorkspaceSpec } from "./types.ts";

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

type Json = Record<string, unknown>;

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function checkKeys(value: Json, allowed: readonly string[], path: string, issues: ValidationIssue[]): void {
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) issues.push({ path: path ? `${path}.${key}` : key, message: `unknown key '${key}' (allowed: ${allowed.join(", ")})` });
  }
}

function checkDependencies(value: unknown, path: string, issues: ValidationIssue[]): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value)) {
    issues.push({ path, message: "must be an object mapping package names to semver ranges" });
    return undefined;
  }
  const out: Record<string, string> = {};
  for (const [name, range] of Object.entries(value)) {
    if (!/^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*$/i.test(name) || name.length > 214) issues.push({ path: `${path}.${name}`, message: "is not a valid npm package name" });
    else if (typeof range !== "string" || range.length === 0 || range.length > 256) issues.push({ path: `${path}.${name}`, message: "must be a non-empty semver range string" });
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

export type { ParameterSpec };
