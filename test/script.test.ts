/** The generated module: one per workspace, each function a body wrapped with its parameters. */
import { describe, expect, it } from "vitest";
import { checkNodeSyntax } from "../runtime/adapters/vm2/index.ts";
import { compileWorkspace, locate, mapStack, requiredModules, transformImports } from "../runtime/script.ts";

describe("script generation", () => {
  const ws = compileWorkspace("test", "v1", {
    functions: {
      hello: { code: "const x = 1;\nreturn 'Hello ' + name;", parameters: { name: { type: "string", default: "you" }, other: {} } },
      py: { code: "return 1", language: "python" },
      last: { code: "return await hello({});" },
    },
  });

  it("gathers the Node functions of a workspace in one module, Python ones excluded", () => {
    expect(ws.script).toContain("const hello = async function hello(");
    expect(ws.script).toContain("const last = async function last(");
    expect(ws.script).not.toContain("function py(");
    expect(ws.script).toMatch(/return \{ hello, last \};/);
  });

  it("declares parameters as locals with their defaults", () => {
    expect(ws.script).toContain('let { name = "you", other } = __fx_params ?? {};');
  });

  it("keeps a line map from script lines back to each body's own lines", () => {
    const lines = ws.script.split("\n");
    const entry = ws.lineMap.find((e) => e.name === "hello")!;
    expect(lines[entry.firstLine - 1]).toBe("const x = 1;");
    expect(lines[entry.lastLine - 1]).toBe("return 'Hello ' + name;");
    expect(locate(entry.firstLine + 1, ws.lineMap)).toEqual({ name: "hello", line: 2 });
    expect(locate(1, ws.lineMap)).toBeUndefined();
  });

  it("the module runs as CommonJS: functions see each other and share one cache", async () => {
    const module = { exports: undefined as unknown as () => Record<string, (p?: object) => Promise<unknown>> };
    new Function("module", "require", ws.script)(module, () => ({}));
    const fns = module.exports();
    expect(await fns.hello({ name: "a" })).toBe("Hello a");
    expect(await fns.last()).toBe("Hello you");
  });
});

describe("import statements", () => {
  it("become require calls scoped to the function, keeping line numbers", () => {
    const code = "import a from 'x';\nimport * as ns from \"y\";\nimport { b, c as d } from 'z';\nimport e, { f } from 'w';\nimport 'side';\nimport {\n  g,\n  h\n} from 'multi';\nreturn 1;";
    const out = transformImports(code);
    expect(out.split("\n")).toHaveLength(code.split("\n").length);
    expect(out).toContain('const a = __fx_default(require("x"));');
    expect(out).toContain('const ns = require("y");');
    expect(out).toContain('const { b, c: d } = require("z");');
    expect(out).toContain('const e = __fx_default(require("w")), { f } = require("w");');
    expect(out).toContain('require("side");');
    expect(out).toContain('const { g, h } = require("multi");');
    expect(out.split("\n")[9]).toBe("return 1;");
  });

  it("leaves dynamic import() and import.meta alone", () => {
    expect(transformImports("const m = await import('x');")).toBe("const m = await import('x');");
  });

  it("finds the modules a body requires or imports", () => {
    expect(requiredModules("import _ from 'lodash/fp';\nconst x = require(\"@scope/pkg\");\nrequire('node:crypto')").sort()).toEqual(["@scope/pkg", "lodash/fp", "node:crypto"]);
  });
});

describe("stack traces", () => {
  it("name the user's function and body line, and drop frames that are not theirs", () => {
    const ws = compileWorkspace("t", "v", { functions: { boom: { code: "\n\nthrow new Error('x')" } } });
    const line = ws.lineMap[0].firstLine + 2;
    const stack = `Error: x\n    at workspace.js:${line}:7\n    at boom (workspace.js:${line}:7)\n    at Object.run (/srv/node_modules/vm2/lib/nodevm.js:1:1)\n    at node:internal/process/task_queues:95:5`;
    expect(mapStack(stack, ws.lineMap)).toBe("Error: x\n    at boom (boom:3:7)");
  });
});

describe("syntax check at deploy", () => {
  it("accepts bodies with await, return and imports", () => {
    expect(checkNodeSyntax("import x from 'y';\nconst a = await Promise.resolve(1);\nreturn a;")).toBeUndefined();
  });

  it("names the line of a syntax error, counted from the body's first line", () => {
    expect(checkNodeSyntax("const a = 1;\nconst b = ;\nreturn a;")).toMatchObject({ line: 2 });
  });

  it("refuses a body that closes its wrapper to inject module-level code", () => {
    expect(checkNodeSyntax("return 1; })(); globalThis.pwned = 1; (async () => {")).toBeDefined();
    expect(checkNodeSyntax("}; evil(); const x = function () {")).toBeDefined();
  });
});
