/**
 * The bundled Python API as a child process (runtime/python-process.ts), and the python-api adapter
 * against it: the real thing, no mocks. Skipped on a machine without python3.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createPythonApiAdapter } from "../../runtime/adapters/python-api.ts";
import { PythonNotFoundError, startBundledPythonApi, type BundledPythonApi } from "../../runtime/python-process.ts";
import { runConformance } from "./conformance.ts";
import { hasPython } from "../fixtures/python.ts";

const env = { PATH: process.env.PATH, KERNEL_POOL_SIZE: "2" };

describe.runIf(hasPython)("bundled Python API process", () => {
  let api: BundledPythonApi;
  beforeAll(async () => {
    api = await startBundledPythonApi({ env });
  });
  afterAll(() => api?.stop());

  it("listens on a local port and answers its health check", async () => {
    expect(api.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const health = await (await fetch(`${api.url}/v1/health`)).json();
    expect(health).toMatchObject({ healthy: true, protocol: 1, kernels: 2 });
  });

  it("is restarted on the same URL when it dies", async () => {
    const firstPid = api.pid!;
    process.kill(firstPid, "SIGKILL");
    const deadline = Date.now() + 15_000;
    let healthy = false;
    while (!healthy && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      healthy = await fetch(`${api.url}/v1/health`).then((r) => r.ok, () => false);
    }
    expect(healthy).toBe(true);
    expect(api.pid).not.toBe(firstPid);
  }, 20_000);

  it("stops for good: nothing listens afterwards", async () => {
    const other = await startBundledPythonApi({ env });
    const pid = other.pid!;
    await other.stop();
    await other.stop();
    expect(() => process.kill(pid, 0)).toThrow(); // the process is gone
    await expect(fetch(`${other.url}/v1/health`)).rejects.toThrow();
  });
});

describe("bundled Python API start-up failures", () => {
  it("says the interpreter is missing", async () => {
    await expect(startBundledPythonApi({ python: "python3-does-not-exist", env })).rejects.toBeInstanceOf(PythonNotFoundError);
  });

  it.runIf(hasPython)("reports a child that exits before listening, with its error output", async () => {
    await expect(startBundledPythonApi({ env: { ...env, KERNEL_POOL_SIZE: "zero" } })).rejects.toThrow(/exited before listening \(exit code 2\).*KERNEL_POOL_SIZE/);
  });
});

if (hasPython) {
  runConformance({
    name: "python-api",
    // Each adapter owns its own Python API, like the service's bundled mode: disposing it stops the child.
    create: async () => {
      const api = await startBundledPythonApi({ env });
      const adapter = createPythonApiAdapter({ baseUrl: api.url });
      return {
        ...adapter,
        async dispose() {
          await adapter.dispose();
          await api.stop();
        },
      };
    },
  });
}
