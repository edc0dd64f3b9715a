/** What a deploy body may contain, and how each mistake is named. */
import { describe, expect, it } from "vitest";
import { ServiceError } from "../runtime/errors.ts";
import { identifierProblem, parseWorkspaceSpec } from "../runtime/validate.ts";

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
