/**
 * Configuration off Node (server/utils/config.ts, `loadConfig(env, target)`): on the edge target the
 * variables come from a worker's bindings, where vars may be numbers or booleans and KV namespaces
 * are objects; Deno and the edge have QuickJS only, and no sandbox processes.
 */
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../server/utils/config.ts";

/** Enough of a KV namespace binding for the check at start-up. */
const kv = { get() {}, put() {}, delete() {}, list() {} };

describe("loadConfig on the edge target (Cloudflare Workers)", () => {
  it("defaults to QuickJS and the FUNCTIONS_KV namespace, with no sandbox processes", () => {
    expect(loadConfig({ FUNCTIONS_KV: kv }, "edge")).toMatchObject({ sandbox: "quickjs", storageType: "cloudflare-kv", kvBinding: "FUNCTIONS_KV", sandboxProcesses: 0 });
  });

  it("reads vars given as numbers and booleans, and ignores bindings that are objects", () => {
    const config = loadConfig({ FUNCTIONS_KV: kv, FUNCTIONS_RUN_TIMEOUT: 1500, UPDATE_SCRIPTS_ON_STARTUP: true, REQUEST_MAX_SIZE: { not: "a string" } }, "edge");
    expect(config).toMatchObject({ runTimeoutMs: 1500, updateScriptsOnStartup: true, requestMaxBytes: 1024 * 1024 });
  });

  it("takes the KV namespace of another binding, or memory", () => {
    expect(loadConfig({ WORKSPACES: kv, FUNCTIONS_STORAGE_KV_BINDING: "WORKSPACES" }, "edge")).toMatchObject({ kvBinding: "WORKSPACES" });
    expect(loadConfig({ FUNCTIONS_STORAGE_TYPE: "memory" }, "edge")).toMatchObject({ storageType: "memory" });
  });

  it.each([
    ["a missing KV namespace binding", {}, "FUNCTIONS_STORAGE_KV_BINDING"],
    ["a binding that is no KV namespace", { FUNCTIONS_KV: "text" }, "FUNCTIONS_STORAGE_KV_BINDING"],
    ["vm2", { FUNCTIONS_KV: kv, FUNCTIONS_SANDBOX: "vm2" }, "FUNCTIONS_SANDBOX"],
    ["the filesystem storage", { FUNCTIONS_STORAGE_TYPE: "filesystem" }, "FUNCTIONS_STORAGE_TYPE"],
    ["sandbox processes", { FUNCTIONS_KV: kv, FUNCTIONS_SANDBOX_PROCESSES: 2 }, "FUNCTIONS_SANDBOX_PROCESSES"],
  ])("refuses %s, naming the variable", (_case, env, variable) => {
    expect(() => loadConfig(env, "edge")).toThrow(ConfigError);
    expect(() => loadConfig(env, "edge")).toThrow(variable);
  });
});

describe("loadConfig on the Deno target", () => {
  it("defaults to QuickJS and the filesystem storage, with no sandbox processes", () => {
    expect(loadConfig({}, "deno")).toMatchObject({ sandbox: "quickjs", storageType: "filesystem", sandboxProcesses: 0 });
  });

  it("refuses vm2 and sandbox processes", () => {
    expect(() => loadConfig({ FUNCTIONS_SANDBOX: "vm2" }, "deno")).toThrow("FUNCTIONS_SANDBOX");
    expect(() => loadConfig({ FUNCTIONS_SANDBOX_PROCESSES: "1" }, "deno")).toThrow("FUNCTIONS_SANDBOX_PROCESSES must be 0 on Deno");
  });
});

describe("loadConfig on Node", () => {
  it("has no cloudflare-kv storage", () => {
    expect(() => loadConfig({ FUNCTIONS_STORAGE_TYPE: "cloudflare-kv" })).toThrow("FUNCTIONS_STORAGE_TYPE");
  });
});
