/**
 * npm dependencies of workspaces (runtime/dependencies.ts): what a workspace needs, the package
 * policy, and installs with the real npm client against a fixture registry on loopback. The last
 * part loads the installed packages in the vm2 sandbox.
 */
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync } from "node:fs";
import { join, resolve } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createVm2Adapter } from "../runtime/adapters/vm2/index.ts";
import { createDependencyManager, dependencySetKey, packageName, type DependencyManagerOptions } from "../runtime/dependencies.ts";
import { compileWorkspace } from "../runtime/script.ts";
import type { RunOutcome, WorkspaceSpec } from "../runtime/types.ts";
import { parseWorkspaceSpec } from "../runtime/validate.ts";
import { ConfigError, loadConfig } from "../server/utils/config.ts";
import { copyFixturePackage, startFixtureRegistry, type FixtureRegistry } from "./fixtures/registry/index.mjs";

let registry: FixtureRegistry;
let tmp: string;
let sharedDir: string;
beforeAll(async () => {
  registry = await startFixtureRegistry();
  mkdirSync(resolve(".tmp"), { recursive: true });
  tmp = mkdtempSync(resolve(".tmp/dependencies-"));
  sharedDir = join(tmp, "shared");
  copyFixturePackage("fx-shared", "1.0.0", join(sharedDir, "node_modules"));
  copyFixturePackage("fx-shared-banned", "1.0.0", join(sharedDir, "node_modules"));
});
afterAll(async () => {
  await registry?.close();
  rmSync(tmp, { recursive: true, force: true });
});

let rootCounter = 0;
const newRoot = () => join(tmp, `root-${++rootCounter}`);

function manager(options: Partial<DependencyManagerOptions> = {}) {
  const lines: string[] = [];
  const log = (level: string) => (message: string) => void lines.push(`${level}: ${message}`);
  const dependencies = createDependencyManager({
    installRootDir: newRoot(),
    registryUrl: registry.url,
    logger: { info: log("info"), warn: log("warn"), error: log("error") },
    ...options,
  });
  return Object.assign(dependencies, { lines });
}

const spec = (code: string, extra: Partial<WorkspaceSpec> = {}): WorkspaceSpec => ({ functions: { main: { code } }, ...extra });
const tarballRequests = (name: string) => registry.requests.filter((path) => path.startsWith(`/${name}/-/`)).length;

describe("which packages a workspace needs", () => {
  it("reduces specifiers to package names, and leaves out builtins and paths", () => {
    expect(packageName("lodash")).toBe("lodash");
    expect(packageName("lodash/fp")).toBe("lodash");
    expect(packageName("@scope/pkg/sub/file.js")).toBe("@scope/pkg");
    for (const notAPackage of ["fs", "node:fs", "fs/promises", "node:test", "./local", "../up", "/abs/path"]) expect(packageName(notAPackage)).toBeUndefined();
  });

  it("installs what the code requires or imports, at its pinned range or latest, except shared packages", () => {
    const dependencies = manager({ sharedModulesDir: sharedDir });
    const ws = spec("const a = require('fx-greet');\nimport { shout } from 'fx-util/extra';\nimport s from 'fx-shared';\nconst c = require('crypto');", {
      dependencies: { "fx-greet": "^1.0.0" },
    });
    expect(dependencies.status(ws).packages).toEqual({ "fx-greet": "^1.0.0", "fx-util": "latest" });
    expect(dependencies.modules(ws)?.names).toEqual(["fx-greet", "fx-shared", "fx-shared-banned", "fx-util"]);
  });

  it("a workspace without packages has nothing to install", () => {
    const dependencies = manager();
    expect(dependencies.status(spec("return require('crypto').randomUUID();"))).toEqual({ status: "none", packages: {} });
    expect(dependencies.modules(spec("return 1;"))).toBeUndefined();
  });

  it("pins are semver ranges or dist-tags: URLs, git and file specs are refused at deploy", () => {
    expect(parseWorkspaceSpec({ functions: {}, dependencies: { a: "^1.2.3 || >=2.0.0-rc.1 <3", b: "latest", c: "1.x", d: "*" } }).dependencies).toBeDefined();
    for (const range of ["file:../../etc", "git+ssh://git@host/repo.git", "https://host/x.tgz", "user/repo", "npm:other@1"]) {
      expect(() => parseWorkspaceSpec({ functions: {}, dependencies: { a: range } }), range).toThrow(/must be a semver range or a dist-tag/);
    }
  });

  it("the install key depends on the set only, not its order", () => {
    expect(dependencySetKey({ a: "1", b: "latest" })).toBe(dependencySetKey({ b: "latest", a: "1" }));
    expect(dependencySetKey({ a: "1" })).not.toBe(dependencySetKey({ a: "2" }));
  });
});

describe("the package policy", () => {
  it("a blocked package is refused at deploy, naming the package and the function", () => {
    const dependencies = manager({ blockedPackages: ["fx-greet"] });
    expect(dependencies.check(spec("const g = require('fx-greet/sub');"))).toEqual([
      { path: "functions.main.code", message: "package 'fx-greet' is blocked on this service (function 'main')" },
    ]);
    expect(dependencies.check(spec("return 1;", { dependencies: { "fx-greet": "1" } }))[0].path).toBe("dependencies.fx-greet");
  });

  it("with an allow-list, only listed packages pass, and the block list still wins", () => {
    const dependencies = manager({ allowedPackages: ["fx-greet", "fx-util"], blockedPackages: ["fx-util"] });
    expect(dependencies.check(spec("require('fx-greet');"))).toEqual([]);
    expect(dependencies.check(spec("require('fx-other');"))[0].message).toBe("package 'fx-other' is not among the packages this service allows (function 'main')");
    expect(dependencies.check(spec("require('fx-util');"))[0].message).toContain("is blocked");
  });

  it("blocked shared packages are not offered to the sandbox", () => {
    const dependencies = manager({ sharedModulesDir: sharedDir, blockedPackages: ["fx-shared-banned"] });
    expect(dependencies.modules(spec("return 1;"))).toMatchObject({ names: ["fx-shared"], installDir: undefined, sharedDir: join(sharedDir, "node_modules") });
  });

  it("disableNpmRegistry installs nothing: only shared packages are offered", () => {
    const dependencies = manager({ sharedModulesDir: sharedDir });
    const ws = spec("require('fx-greet'); require('fx-shared');", { disableNpmRegistry: true, dependencies: { "fx-util": "1" } });
    expect(dependencies.status(ws)).toEqual({ status: "none", packages: {} });
    expect(dependencies.modules(ws)?.names).toEqual(["fx-shared", "fx-shared-banned"]);
  });
});

describe("configuration", () => {
  it("reads the package lists as comma lists, unset whitelist meaning every package", () => {
    const config = loadConfig({ NODEJS_PACKAGES_WHITELIST_IMPORT: "dayjs, @scope/pkg,lodash", NODEJS_PACKAGES_BLACKLIST_IMPORT: "evil" });
    expect(config).toMatchObject({ packagesWhitelist: ["dayjs", "@scope/pkg", "lodash"], packagesBlacklist: ["evil"], nodeModulesDir: "data/node_modules/" });
    expect(loadConfig({})).toMatchObject({ packagesWhitelist: undefined, packagesBlacklist: [], sharedNodeModulesDir: undefined });
    expect(() => loadConfig({ NODEJS_PACKAGES_BLACKLIST_IMPORT: "ok, not a name" })).toThrow(ConfigError);
    expect(() => loadConfig({ NODEJS_PACKAGES_BLACKLIST_IMPORT: "ok, not a name" })).toThrow(/NODEJS_PACKAGES_BLACKLIST_IMPORT/);
  });

  it("a shared directory that does not exist stops start-up", () => {
    expect(() => manager({ sharedModulesDir: join(tmp, "nope") })).toThrow(/does not exist/);
  });
});

describe("installing with npm", () => {
  it("installs in the background; a run waits for it; the tree appears complete or not at all", async () => {
    const dependencies = manager();
    const ws = spec("return require('fx-greet')('you');");
    dependencies.prepare(ws);
    expect(dependencies.status(ws).status).toBe("installing");
    expect(await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    expect(dependencies.status(ws)).toEqual({ status: "ready", packages: { "fx-greet": "latest" } });
    const installDir = dependencies.modules(ws)!.installDir!;
    expect(JSON.parse(readFileSync(join(installDir, "fx-greet", "package.json"), "utf8")).version).toBe("2.0.0");
    expect(readdirSync(join(installDir, "..", "..")).filter((name) => !name.startsWith(".npm-cache")).sort()).toEqual([dependencySetKey({ "fx-greet": "latest" })]);
    expect(dependencies.lines).toContain("info: Installing 1 modules...");
  });

  it("installs the pinned version, and a package's own dependencies with it", async () => {
    const dependencies = manager();
    const ws = spec("require('fx-greet'); require('fx-util');", { dependencies: { "fx-greet": "1.0.0" } });
    dependencies.prepare(ws);
    expect(await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    const installDir = dependencies.modules(ws)!.installDir!;
    expect(JSON.parse(readFileSync(join(installDir, "fx-greet", "package.json"), "utf8")).version).toBe("1.0.0");
    expect(existsSync(join(installDir, "fx-dep", "package.json"))).toBe(true);
  });

  it("workspaces needing the same set share one install, even when deployed at once", async () => {
    const dependencies = manager();
    const before = tarballRequests("fx-util");
    const first = spec("return require('fx-util').shout('a');");
    const second = { functions: { other: { code: "import { shout } from 'fx-util';\nreturn shout('b');" } } };
    dependencies.prepare(first);
    dependencies.prepare(second);
    await Promise.all([dependencies.waitUntilReady(first, { timeoutMs: 60_000 }), dependencies.waitUntilReady(second, { timeoutMs: 60_000 })]);
    expect(dependencies.modules(first)!.installDir).toBe(dependencies.modules(second)!.installDir);
    expect(tarballRequests("fx-util") - before).toBe(1);
  });

  it("two processes needing the same set run npm once (a lock on disk)", async () => {
    const root = newRoot();
    const [a, b] = [manager({ installRootDir: root }), manager({ installRootDir: root })];
    const before = tarballRequests("@fx/scoped");
    const ws = spec("return require('@fx/scoped/sub').name;");
    a.prepare(ws);
    b.prepare(ws);
    expect(await a.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    expect(await b.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    expect(tarballRequests("@fx/scoped") - before).toBe(1);
    expect(existsSync(join(root, `${dependencySetKey({ "@fx/scoped": "latest" })}.lock`))).toBe(false);
  });

  it("a lock left by a process that died is taken over once stale", async () => {
    const root = newRoot();
    const lock = join(root, `${dependencySetKey({ "fx-dep": "latest" })}.lock`);
    mkdirSync(lock, { recursive: true });
    const old = new Date(Date.now() - 60_000);
    utimesSync(lock, old, old);
    const dependencies = manager({ installRootDir: root, lockStaleMs: 30_000 });
    const ws = spec("require('fx-dep');");
    dependencies.prepare(ws);
    expect(await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
  });

  it("an install already on disk is used after a restart, without npm", async () => {
    const root = newRoot();
    const ws = spec("require('fx-greet');", { dependencies: { "fx-greet": "^2" } });
    const first = manager({ installRootDir: root });
    first.prepare(ws);
    await first.waitUntilReady(ws, { timeoutMs: 60_000 });
    const requests = registry.requests.length;
    const restarted = manager({ installRootDir: root });
    expect(restarted.status(ws).status).toBe("ready");
    expect(await restarted.waitUntilReady(ws, { timeoutMs: 1000 })).toBeUndefined();
    expect(registry.requests.length).toBe(requests);
    expect(restarted.lines).toEqual([]);
  });

  it("a run finding its set missing (a new disk, another instance's deploy) installs it and waits", async () => {
    const dependencies = manager();
    const ws = spec("require('fx-dep');");
    expect(await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    expect(dependencies.lines.slice(0, 2)).toEqual(["warn: Some dependencies are missing", "info: Installing 1 modules..."]);
  });

  it("a tree with packages deleted by hand is installed again", async () => {
    const root = newRoot();
    const ws = spec("require('fx-dep');");
    const first = manager({ installRootDir: root });
    await first.waitUntilReady(ws, { timeoutMs: 60_000 });
    rmSync(join(first.modules(ws)!.installDir!, "fx-dep"), { recursive: true });
    const restarted = manager({ installRootDir: root });
    expect(await restarted.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    expect(existsSync(join(restarted.modules(ws)!.installDir!, "fx-dep", "package.json"))).toBe(true);
  });

  it("a run past its timeout while npm works answers DependencyInstalling; later runs get the packages", async () => {
    const dependencies = manager();
    const ws = spec("require('fx-slow');");
    registry.delay("fx-slow", 1500);
    try {
      dependencies.prepare(ws);
      expect(await dependencies.waitUntilReady(ws, { timeoutMs: 100 })).toEqual({ kind: "dependency", name: "DependencyInstalling", message: "Dependencies are still being installed" });
      expect(dependencies.lines).toContain("warn: Dependencies are still being installed");
      expect(await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 })).toBeUndefined();
    } finally {
      registry.delay("fx-slow", 0);
    }
  });

  it("a failed install answers DependencyInstallFailed with npm's reason; the next deploy retries", async () => {
    const dependencies = manager();
    const ws = spec("require('fx-missing');");
    dependencies.prepare(ws);
    const error = await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 });
    expect(error).toMatchObject({ kind: "dependency", name: "DependencyInstallFailed" });
    expect(error!.message).toMatch(/^Failed to install dependencies: .*404.*fx-missing/);
    expect(error!.message).not.toContain(tmp);
    expect(dependencies.status(ws)).toMatchObject({ status: "failed", error: expect.stringContaining("404") });
    expect(dependencies.lines).toContain("error: Failed npm install");
    const requests = registry.requests.filter((path) => path === "/fx-missing").length;
    await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 }); // a run does not retry
    expect(registry.requests.filter((path) => path === "/fx-missing").length).toBe(requests);
    dependencies.prepare(ws);
    expect(dependencies.status(ws).status).toBe("installing");
    await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 });
    expect(registry.requests.filter((path) => path === "/fx-missing").length).toBeGreaterThan(requests);
    expect(readdirSync(join(dependencies.modules(ws)!.installDir!, "..", "..")).filter((name) => name.startsWith(".tmp-") || name.endsWith(".lock"))).toEqual([]);
  });
});

describe("packages in the vm2 sandbox", () => {
  const adapter = createVm2Adapter({ maxWorkers: 8 });
  let dependencies: ReturnType<typeof manager>;
  let counter = 0;
  beforeAll(() => {
    dependencies = manager({ sharedModulesDir: sharedDir, blockedPackages: ["fx-shared-banned"] });
  });
  afterAll(() => adapter.dispose());

  async function run(code: string, extra: Partial<WorkspaceSpec> = {}): Promise<RunOutcome> {
    const ws = spec(code, extra);
    const error = await dependencies.waitUntilReady(ws, { timeoutMs: 60_000 });
    if (error) throw new Error(error.message);
    const compiled = { ...compileWorkspace(`deps-${++counter}`, "v1", ws), modules: dependencies.modules(ws) };
    return adapter.run({ workspace: compiled, functionName: "main", parameters: {} }, { timeoutMs: 10_000 });
  }
  const resultOf = async (code: string, extra?: Partial<WorkspaceSpec>) => {
    const outcome = await run(code, extra);
    if (!outcome.ok) throw new Error(`${outcome.error.name}: ${outcome.error.message}`);
    return outcome.result;
  };
  const errorOf = async (code: string, extra?: Partial<WorkspaceSpec>) => {
    const outcome = await run(code, extra);
    if (outcome.ok) throw new Error(`expected a failure, got ${JSON.stringify(outcome.result)}`);
    return outcome.error;
  };

  it("requires installed packages, their subpaths and their own dependencies; import syntax works", async () => {
    expect(await resultOf("const greet = require('fx-greet');\nreturn greet('you');", { dependencies: { "fx-greet": "1.0.0" } })).toBe("hello you");
    expect(await resultOf("import { shout } from 'fx-util';\nimport { whisper } from 'fx-util/extra';\nreturn [shout('a'), whisper('B')];")).toEqual(["A!", "b..."]);
    expect(await resultOf("import scoped from '@fx/scoped/sub';\nreturn scoped.name;")).toBe("scoped/sub");
  });

  it("requires shared packages without an install", async () => {
    expect(await resultOf("import { twice } from 'fx-shared';\nreturn twice('ab');")).toBe("abab");
  });

  it("a blocked shared package fails at require, even when the name is computed", async () => {
    expect((await errorOf("return require(['fx', 'shared', 'banned'].join('-'));")).message).toContain("Cannot find module 'fx-shared-banned'");
  });

  it("a package the workspace did not declare is not found, even one installed for another workspace", async () => {
    await resultOf("return require('fx-dep').upper('x');");
    expect((await errorOf("return require(['fx', 'dep'].join('-'));")).message).toContain("Cannot find module 'fx-dep'");
  });

  it("no path leads out of the workspace's packages: not to the host, nor to another workspace's install", async () => {
    const otherInstall = dependencies.modules(spec("require('fx-util');"))!.installDir!;
    await resultOf("return require('fx-util').shout('x');");
    const ownInstall = dependencies.modules(spec("require('fx-greet');"))!.installDir!;
    const targets = ["../../..", "./package.json", resolve("package.json"), "fx-greet/../fx-util", join(otherInstall, "fx-util", "index.js"), join(ownInstall, "..", "package.json")];
    for (const target of targets) {
      const error = await errorOf(`require('fx-greet');\nreturn require(${JSON.stringify(target)});`);
      expect(error.message).toMatch(/Cannot find module|not allowed/);
    }
  });

  it("installed packages run inside the sandbox: they cannot reach the host", async () => {
    expect((await errorOf("return require('fx-peeker');")).message).toContain("Cannot find module 'child_process'");
  });

  it("an ES-module-only package fails with an error that names it and says what to do, without host paths", async () => {
    const error = await errorOf("import esm from 'fx-esm';\nreturn esm();");
    expect(error.message).toContain("Package 'fx-esm' cannot be loaded in the sandbox");
    expect(error.message).toContain("pin a version that ships CommonJS");
    expect(`${error.message}\n${error.stack}`).not.toContain(tmp);
  });
});
