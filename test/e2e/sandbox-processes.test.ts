/**
 * User code never runs in the HTTP process: the built server hosts its sandboxes in child
 * processes, each an empty-environment, permission-restricted crash domain.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "./harness.ts";

let server: RunningServer;
beforeAll(async () => {
  server = await startServer({ FUNCTIONS_SANDBOX_PROCESSES: "2", SECRET_CANARY: "canary-5e1f" });
});
afterAll(async () => {
  await server?.stop();
});

function sandboxPids(of: RunningServer = server): number[] {
  const out = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(of.process.pid)], { encoding: "utf8" });
  return out
    .split("\n")
    .filter((line) => line.includes("sandbox-process/child.mjs"))
    .map((line) => Number(line.trim().split(/\s+/)[0]));
}

const wait = { functions: { wait: { code: "await new Promise((r) => setTimeout(r, 400)); return process.pid;" }, pid: { code: "return process.pid;" } } };

describe("sandbox processes", () => {
  it("run function code outside the HTTP process, with no environment and under the permission model", async () => {
    await server.deploy("where", wait);
    const reply = await server.run("where", "pid");
    expect(reply.status).toBe(200);
    const pids = sandboxPids();
    expect(pids.length).toBeGreaterThan(0);
    for (const pid of pids) {
      expect(readFileSync(`/proc/${pid}/environ`, "utf8")).not.toContain("canary-5e1f");
      const args = readFileSync(`/proc/${pid}/cmdline`, "utf8").split("\0");
      expect(args.some((a) => a === "--permission" || a === "--experimental-permission")).toBe(true);
    }
  });

  it("a killed sandbox process fails only the runs on it; other workspaces answer; the next run works", async () => {
    const ids = Array.from({ length: 12 }, (_, i) => `crash-${i}`);
    for (const id of ids) await server.deploy(id, wait);
    await Promise.all(ids.map((id) => server.run(id, "pid")));
    const inFlight = ids.map((id) => server.run(id, "wait"));
    await new Promise((r) => setTimeout(r, 100));
    const [victim] = sandboxPids();
    process.kill(victim, "SIGKILL");
    const replies = await Promise.all(inFlight);
    const crashed = replies.filter((r) => r.status === 500);
    const answered = replies.filter((r) => r.status === 200);
    expect(crashed.length).toBeGreaterThan(0);
    expect(answered.length).toBeGreaterThan(0);
    for (const reply of crashed) expect(reply.body.details.name).toBe("SandboxProcessCrashedError");
    expect(answered.length + crashed.length).toBe(ids.length);
    for (const id of ids) expect((await server.run(id, "wait")).status).toBe(200);
    expect(sandboxPids()).not.toContain(victim);
  });
});

describe("native work", () => {
  it("a long native call is stopped at the deadline: the run answers 504 and its thread's process is replaced", async () => {
    const timed = await startServer({ FUNCTIONS_SANDBOX_PROCESSES: "1", FUNCTIONS_RUN_TIMEOUT: "1000" });
    try {
      await timed.deploy("kdf", { functions: { derive: { code: "return require('crypto').pbkdf2Sync('a', 'b', 2e8, 64, 'sha512').length;" }, ok: { code: "return 'ok'" } } });
      await timed.deploy("other", { functions: { ok: { code: "return 'ok'" } } });
      expect((await timed.run("other", "ok")).status).toBe(200);
      const [before] = sandboxPids(timed);
      const started = performance.now();
      const reply = await timed.run("kdf", "derive");
      expect(reply.status).toBe(504);
      expect(performance.now() - started).toBeLessThan(3000);
      // The process whose thread is stuck in pbkdf2 exits 2 s later; the next runs get a fresh one.
      await expect.poll(() => sandboxPids(timed).includes(before), { timeout: 15_000, interval: 200 }).toBe(false);
      expect((await timed.run("other", "ok")).status).toBe(200);
      expect((await timed.run("kdf", "ok")).body.result).toBe("ok");
    } finally {
      await timed.stop();
    }
  });
});
