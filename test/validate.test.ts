/** What a deploy body may contain, and how each mistake is named. */
import { describe, expect, it } from "vitest";
import { ServiceError } from "../runtime/errors.ts";
import { identifierProblem, parseWorkspaceSpec, pythonIdentifierProblem } from "../runtime/validate.ts";

function issuesOf(body: unknown): Array<{ path: string; message: string }> {
  try {
    parseWorkspaceSpec(body);
  } catch (error) {
    expect(error).toBeInstanceOf(ServiceError);
    expect((error as ServiceError).code).toBe("RequestValidationError");
    return (error as ServiceError).details as Array<{ path: string; message: string }>;
  }
  throw new Error("expected a validation error");
}

describe("deploy body validation", () => {
  it("keeps a valid body exactly as sent", () => {
    const body = { functions: { hello: { code: "return 1", parameters: { name: { type: "string", description: "who", default: "x" } }, language: "nodejs", description: "greets" } }, disableNpmRegistry: false };
    expect(parseWorkspaceSpec(structuredClone(body))).toEqual(body);
  });

  it("accepts every parameter type, and defaults that do not match their type", () => {
    const types = ["string", "number", "integer", "boolean", "object", "array", "null"];
    const parameters = Object.fromEntries(types.map((type, i) => [`p${i}`, { type, default: "" }]));
    expect(() => parseWorkspaceSpec({ functions: { f: { code: "", parameters } } })).not.toThrow();
  });

  it("merges function-level dependencies (an older form) into the workspace's", () => {
    const spec = parseWorkspaceSpec({ functions: { f: { code: "", dependencies: { lodash: "^4" } } }, dependencies: { dayjs: "1" } });
    expect(spec.dependencies).toEqual({ dayjs: "1", lodash: "^4" });
    expect(spec.functions.f).toEqual({ code: "" });
  });

  it("names unknown keys at every level", () => {
    expect(issuesOf({ functions: {}, extra: 1 })).toEqual([expect.objectContaining({ path: "extra" })]);
    expect(issuesOf({ functions: { f: { code: "", runtime: "x" } } })[0].path).toBe("functions.f.runtime");
    expect(issuesOf({ functions: { f: { code: "", parameters: { a: { kind: "x" } } } } })[0].path).toBe("functions.f.parameters.a.kind");
  });

  it("requires functions and code, and checks types of known keys", () => {
    expect(issuesOf({})[0].path).toBe("functions");
    expect(issuesOf([])[0].path).toBe("body");
    expect(issuesOf({ functions: { f: {} } })[0].path).toBe("functions.f.code");
    expect(issuesOf({ functions: { f: { code: 1 } } })[0].path).toBe("functions.f.code");
    expect(issuesOf({ functions: { f: { code: "", language: "ruby" } } })[0].path).toBe("functions.f.language");
    expect(issuesOf({ functions: { f: { code: "", parameters: { a: { type: "date" } } } } })[0].path).toBe("functions.f.parameters.a.type");
    expect(issuesOf({ functions: {}, disableNpmRegistry: "yes" })[0].path).toBe("disableNpmRegistry");
    expect(issuesOf({ functions: {}, dependencies: { "Not A Name": "1" } })[0].path).toBe("dependencies.Not A Name");
  });

  it("reports every problem at once", () => {
    expect(issuesOf({ functions: { "1bad": { code: 1 }, good: { code: "", parameters: { "x-y": {} } } } })).toHaveLength(3);
  });

  it("rejects __proto__ and constructor keys instead of letting them touch prototypes", () => {
    const body = JSON.parse('{"functions": {"__proto__": {"code": "return 1"}}}');
    expect(issuesOf(body)[0].path).toBe("functions.__proto__");
    expect(issuesOf(JSON.parse('{"functions": {}, "__proto__": {"polluted": true}}'))[0].path).toBe("__proto__");
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

describe("function and parameter names", () => {
  it("accepts identifiers, including $, _ and unicode letters", () => {
    for (const name of ["hello", "_private", "$el", "camelCase2", "données", "processData"]) expect(identifierProblem(name)).toBeUndefined();
  });

  it("rejects what is not an identifier", () => {
    for (const name of ["", "1abc", "a-b", "a b", "a.b", "x".repeat(129)]) expect(identifierProblem(name)).toBeDefined();
  });

  it("rejects reserved words, sandbox globals and names that are dangerous in the generated module", () => {
    for (const name of ["return", "class", "await", "default", "eval", "arguments", "cache", "console", "require", "module", "fetch", "URL", "Buffer", "JSON", "constructor", "__proto__", "toString", "__fx_params"]) {
      expect(identifierProblem(name), name).toBeDefined();
    }
  });
});

describe("names of Python functions and their parameters", () => {
  const python = (name: string, parameters: Record<string, unknown> = {}) => ({ functions: { [name]: { code: "return 1", language: "python", parameters } } });

  it("accepts Python identifiers, soft keywords, and builtins as parameter names", () => {
    const parameters = Object.fromEntries(["name", "_x", "données", "名前", "match", "type", "id", "input", "filter", "format", "result"].map((p) => [p, {}]));
    expect(() => parseWorkspaceSpec(python("processData", parameters))).not.toThrow();
    for (const name of ["hello", "_private", "match", "données"]) expect(pythonIdentifierProblem(name, "function"), name).toBeUndefined();
  });

  it("rejects Python keywords that JavaScript allows, naming the offender", () => {
    for (const keyword of ["from", "lambda", "None", "True", "False", "and", "or", "not", "is", "def", "del", "nonlocal", "pass", "raise", "except", "elif", "assert", "async", "as"]) {
      const issues = issuesOf(python("f", { [keyword]: { type: "string" } }));
      expect(issues, keyword).toEqual([{ path: `functions.f.parameters.${keyword}`, message: `Python parameter name '${keyword}' is a Python keyword` }]);
      expect(issuesOf(python(keyword))[0], keyword).toEqual({ path: `functions.${keyword}`, message: `Python function name '${keyword}' is a Python keyword` });
    }
  });

  it("reports JavaScript reserved words once, with the existing message", () => {
    expect(issuesOf(python("f", { class: {} }))).toEqual([{ path: "functions.f.parameters.class", message: "parameter name 'class' is a reserved word" }]);
  });

  it("rejects what Python cannot parse as a name: $, ZWNJ, and names Python would read differently (NFKC)", () => {
    expect(issuesOf(python("f", { $el: {} }))[0].message).toMatch(/^Python parameter name must be a valid Python identifier/);
    expect(issuesOf(python("my$fn"))[0]).toMatchObject({ path: "functions.my$fn", message: expect.stringMatching(/valid Python identifier/) });
    expect(pythonIdentifierProblem("ab\u200C", "parameter")).toMatch(/valid Python identifier/);
    expect(issuesOf(python("f", { "\uFB01lter": {} }))[0].message).toBe("Python parameter name must be written in Unicode NFKC form (Python reads '\uFB01lter' as 'filter')");
  });

  it("rejects names that would shadow what the kernel provides, and dunders", () => {
    expect(issuesOf(python("f", { print: {} }))).toEqual([{ path: "functions.f.parameters.print", message: "Python parameter name 'print' would shadow a name the Python kernel provides" }]);
    expect(issuesOf(python("print"))[0].message).toBe("Python function name 'print' would shadow a name the Python kernel provides");
    expect(issuesOf(python("f", { NameError: {} }))[0].message).toMatch(/would shadow a name the Python kernel provides/);
    expect(issuesOf(python("f", { cache: {} }))[0].message).toBe("parameter name 'cache' would shadow a sandbox global"); // the JavaScript rule already says it
    expect(issuesOf(python("__builtins__"))[0].message).toBe("Python function name '__builtins__' is a Python special name (__...__)");
    expect(issuesOf(python("f", { __name__: {} }))[0].message).toMatch(/special name/);
  });

  it("rejects function names that would replace a builtin in every sibling function", () => {
    for (const name of ["sum", "len", "str", "open", "sorted", "ValueError"]) {
      expect(issuesOf(python(name))[0], name).toEqual({ path: `functions.${name}`, message: `Python function name '${name}' would shadow a Python builtin in every function of the workspace` });
    }
  });

  it("leaves Node functions, and Python names in Node functions, to the JavaScript rules", () => {
    expect(() => parseWorkspaceSpec({ functions: { lambda: { code: "return 1" }, sum: { code: "return from", parameters: { from: {}, None: {} } } } })).not.toThrow();
    expect(() => parseWorkspaceSpec({ functions: { sum: { code: "return 1", language: "nodejs" } } })).not.toThrow();
  });

  it("reports every Python problem of a body at once", () => {
    const issues = issuesOf({ functions: { lambda: { code: "", language: "python", parameters: { from: {}, print: {}, ok: {} } }, len: { code: "", language: "python" } } });
    expect(issues.map((issue) => issue.path)).toEqual(["functions.lambda", "functions.lambda.parameters.from", "functions.lambda.parameters.print", "functions.len"]);
  });
});
