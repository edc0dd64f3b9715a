import { readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { fileURLToPath } from "node:url";
import { defineNitroConfig } from "nitropack/config";
import type { PluginContext } from "rollup";

const vm2WorkerPath = fileURLToPath(new URL("./runtime/adapters/vm2/worker.mjs", import.meta.url));
const WORKER_URL = /new URL\(\s*["']\.\/worker\.mjs["']\s*,\s*import\.meta\.url\s*\)/;
const pythonApiDir = fileURLToPath(new URL("./runtime/python/", import.meta.url));

export default defineNitroConfig({
  compatibilityDate: "2026-11-01",
  srcDir: "server",
  // Tests build into a directory of their own (FX_BUILD_DIR) so parallel builds never collide.
  ...(process.env.FX_BUILD_DIR ? { buildDir: `${process.env.FX_BUILD_DIR}/.nitro`, output: { dir: process.env.FX_BUILD_DIR } } : {}),
  imports: false,
  // No static files: every request is an API call, so skip the public-asset lookup on each GET.
  serveStatic: false,
  // vm2 is loaded only by the worker script, which the bundler does not see: trace it explicitly.
  externals: { traceInclude: [createRequire(import.meta.url).resolve("vm2")] },
  rollupConfig: {
    plugins: [
      {
        // The vm2 worker is a file of its own at run time: ship it beside the bundle and point the
        // adapter at the copy.
        name: "vm2-worker-asset",
        transform(this: PluginContext, code: string, id: string) {
          if (!id.endsWith("/runtime/adapters/vm2/index.ts") || !WORKER_URL.test(code)) return null;
          this.emitFile({ type: "asset", fileName: "vm2-worker.mjs", source: readFileSync(vm2WorkerPath, "utf8") });
          // In the bundle, Nitro makes `import.meta.url` the entry's URL (.output/server/index.mjs).
          return { code: code.replace(WORKER_URL, 'new URL("./vm2-worker.mjs", import.meta.url)'), map: null };
        },
      },
      {
        // The bundled Python API is run by python3 from files: ship runtime/python/*.py (not its
        // tests) as .output/server/python/, where `new URL("./python/", import.meta.url)` finds them.
        name: "python-api-assets",
        transform(this: PluginContext, _code: string, id: string) {
          if (!id.endsWith("/runtime/python-process.ts")) return null;
          for (const file of readdirSync(pythonApiDir).filter((name) => name.endsWith(".py") && !name.startsWith("test_"))) {
            this.emitFile({ type: "asset", fileName: `python/${file}`, source: readFileSync(`${pythonApiDir}${file}`, "utf8") });
          }
          return null;
        },
      },
    ],
  },
});
