/**
 * Runs the Python API's own tests (runtime/python/test_server.py, Python's unittest) as a child
 * process, so that `vitest run` — all CI runs — covers them too. Skipped only when python3 is absent.
 */
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { expect, it } from "vitest";
import { hasPython } from "./fixtures/python.ts";

const root = fileURLToPath(new URL("..", import.meta.url));


it("the Python API's self-test passes (python3 -m unittest runtime/python/test_server.py)", async (ctx) => {
  if (!hasPython) ctx.skip();
  const { code, output } = await new Promise<{ code: number | null; output: string }>((resolve) => {
    const child = execFile("python3", ["-m", "unittest", "runtime/python/test_server.py", "-v"], {
      cwd: root,
      // Only what Python needs: the child starts servers of its own, which must not inherit this process's settings.
      env: { PATH: process.env.PATH ?? "", LANG: process.env.LANG ?? "C.UTF-8", PYTHONDONTWRITEBYTECODE: "1" },
      timeout: 110_000,
      killSignal: "SIGKILL",
      maxBuffer: 16 * 1024 * 1024,
    }, (error, stdout, stderr) => resolve({ code: error ? ((error as { code?: unknown }).code as number | null) ?? null : 0, output: `${stdout}${stderr}` }));
    child.stdin?.end();
  });
  // The whole unittest report on failure: which Python test failed, and why.
  expect(code, output).toBe(0);
  expect(output).toMatch(/^OK/m);
}, 120_000);
