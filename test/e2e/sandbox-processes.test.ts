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

function sandboxPids(): number[] {
  const out = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(server.process.pid)], { encoding: "utf8" });
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
