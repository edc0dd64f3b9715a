/**
 * Turns a workspace's Node functions into one CommonJS module (the "generated script"), and maps
 * stack traces of that module back to the user's own functions and lines.
 *
 * The module exports a factory `() => ({ hello, other, ... })` that creates the shared `cache`. Each function is
 *
 *     const hello = async function hello(__fx_params) {
 *       let { name = "default" } = __fx_params ?? {};
 *       return await (async () => {
 *     <the user's body, line for line>
 *       })();
 *     };
 *
 * Parameters are `let` locals of the outer function and the body runs in an inner arrow, so a body
 * may redeclare a parameter or a sibling's name and its own declaration wins. Siblings are consts
 * of the factory scope, so `await other({ x: 1 })` works from any body.
 */
import type { CompiledWorkspace, FunctionSpec, ScriptLineMap, WorkspaceSpec } from "./types.ts";

/** The filename the sandboxes give the generated module; stack frames in it are the user's. */
export const SCRIPT_FILENAME = "workspace.js";

const PREAMBLE = [
  "// Generated from workspace.yaml by functions-service. Do not edit: it is rewritten on deploy.",
  "const __fx_default = (m) => (m && m.__esModule && \"default\" in m ? m.default : m);",
  "module.exports = function () {",
  "const cache = {};",
];

export interface GeneratedScript {
  script: string;
  lineMap: ScriptLineMap;
}

/** The Node functions of a spec (those without `language` or with `language: nodejs`). */
export function nodeFunctions(spec: WorkspaceSpec): Array<[string, FunctionSpec]> {
  return Object.entries(spec.functions).filter(([, fn]) => (fn.language ?? "nodejs") === "nodejs");
}

export function generateScript(spec: WorkspaceSpec, header: { id: string; version: string }): GeneratedScript {
  const lines = [...PREAMBLE];
  lines.splice(1, 0, `// workspace: ${JSON.stringify(header.id)} version: ${header.version}`);
  const lineMap: ScriptLineMap = [];
  const names: string[] = [];
  for (const [name, fn] of nodeFunctions(spec)) {
    names.push(name);
    lines.push(`const ${name} = async function ${name}(__fx_params) {`);
    const locals = Object.entries(fn.parameters ?? {}).map(([param, p]) =>
      p.default === undefined ? param : `${param} = ${JSON.stringify(p.default)}`,
    );
    if (locals.length > 0) lines.push(`  let { ${locals.join(", ")} } = __fx_params ?? {};`);
    lines.push("  return await (async () => {");
    const body = transformImports(fn.code).split(/\r\n|\r|\n/);
    lineMap.push({ name, firstLine: lines.length + 1, lastLine: lines.length + body.length });
    lines.push(...body);
    lines.push("  })();", "};");
  }
  lines.push(`return { ${names.join(", ")} };`, "};", "");
  return { script: lines.join("\n"), lineMap };
}

export function compileWorkspace(id: string, version: string, spec: WorkspaceSpec): CompiledWorkspace {
  return { id, version, spec, ...generateScript(spec, { id, version }) };
}

const IMPORT_FROM =
  /^([ \t]*)import[ \t]+(?:([A-Za-z_$][\w$]*)[ \t]*(?:,[ \t]*)?)?(?:\*[ \t]*as[ \t]+([A-Za-z_$][\w$]*)|\{([^}]*)\})?\s*from\s*(["'])([^"'\n]+)\5[ \t]*;?/gm;
const IMPORT_BARE = /^([ \t]*)import[ \t]*(["'])([^"'\n]+)\2[ \t]*;?/gm;

/**
 * Rewrites static `import` statements into `require` calls in place, keeping the line count, so
 * imports are scoped to the function that declares them and line numbers stay the user's.
 *
 * @example transformImports("import { a as b } from 'x'") // "const { a: b } = require(\"x\");"
 */
export function transformImports(code: string): string {
  return code
    .replace(IMPORT_FROM, (match, indent: string, def?: string, ns?: string, named?: string, _q?: string, from?: string) => {
      const mod = `require(${JSON.stringify(from)})`;
      const parts: string[] = [];
      if (def) parts.push(`${def} = __fx_default(${mod})`);
      if (ns) parts.push(`${ns} = ${mod}`);
      if (named !== undefined) {
        const bindings = named
          .split(",")
          .map((s) => s.trim())
          .filter(Boolean)
          .map((s) => s.replace(/^([\w$]+)\s+as\s+([\w$]+)$/, "$1: $2"));
        parts.push(`{ ${bindings.join(", ")} } = ${mod}`);
      }
      if (parts.length === 0) return match;
      return `${indent}const ${parts.join(", ")};` + "\n".repeat(countNewlines(match));
    })
    .replace(IMPORT_BARE, (match, indent: string, _q: string, from: string) => `${indent}require(${JSON.stringify(from)});` + "\n".repeat(countNewlines(match)));
}

function countNewlines(text: string): number {
  let n = 0;
  for (const ch of text) if (ch === "\n") n++;
  return n;
}

/**
 * Module specifiers a body loads with `require('x')` or `import ... from 'x'`, as written.
 * @example requiredModules("const _ = require('lodash/fp')") // ["lodash/fp"]
 */
export function requiredModules(code: string): string[] {
  const found = new Set<string>();
  for (const m of transformImports(code).matchAll(/\brequire\s*\(\s*(["'])([^"'\n]+)\1\s*\)/g)) found.add(m[2]);
  return [...found];
}

const FRAME = /^\s*at (?:(.*?) \()?(.*?):(\d+):(\d+)\)?$/;

/**
 * Rewrites a stack trace of the generated module so it names the user's functions and the lines
 * of their bodies; frames outside the module (sandbox and host internals) are dropped.
 *
 * @example "at hello (workspace.js:12:9)" -> "at hello (hello:2:9)"
 */
export function mapStack(stack: string, lineMap: ScriptLineMap): string {
  const out: string[] = [];
  for (const line of stack.split("\n")) {
    const frame = FRAME.exec(line);
    if (!frame) {
      if (!/^\s*at /.test(line)) out.push(line);
      continue;
    }
    const [, , file, lineText, column] = frame;
    if (!file.endsWith(SCRIPT_FILENAME)) continue;
    const location = locate(Number(lineText), lineMap);
    if (!location) continue;
    const text = `    at ${location.name} (${location.name}:${location.line}:${column})`;
    if (out[out.length - 1] !== text) out.push(text);
  }
  return out.join("\n");
}

/** The user's function and body line for a line of the generated script. */
export function locate(scriptLine: number, lineMap: ScriptLineMap): { name: string; line: number } | undefined {
  const entry = lineMap.find((e) => scriptLine >= e.firstLine && scriptLine <= e.lastLine);
  return entry && { name: entry.name, line: scriptLine - entry.firstLine + 1 };
}
