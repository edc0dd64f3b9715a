import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { defineNitroConfig } from "nitropack/config";
import { bundleSandboxChild } from "./runtime/adapters/sandbox-process/bundle-child.mjs";
import type { PluginContext } from "rollup";

/** The vm2 worker and the plain-JS modules it imports: shipped at their source paths, so its relative imports hold. */
const VM2_WORKER_FILES = ["runtime/adapters/vm2/worker.mjs", "runtime/adapters/vm2/builtins.mjs", "runtime/egress.mjs"];
/** The QuickJS worker and the engine it imports, shipped the same way. */
const QUICKJS_WORKER_FILES = ["runtime/adapters/quickjs/worker.mjs", "runtime/adapters/quickjs/engine.mjs", "runtime/egress.mjs"];
const CHILD_URL = /new URL\(\s*["']\.\/child\.js["']\s*,\s*import\.meta\.url\s*\)/;
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
  // Edge builds (docs/deployment.md, "Edge runtimes"): QuickJS's wasm is imported as a compiled
  // module (server/utils/edge-service.ts), and requests enter through our own worker entry.
  alias: { "#quickjs-wasm": dirname(createRequire(import.meta.url).resolve("@jitl/quickjs-wasmfile-release-sync/wasm")) },
  cloudflare: { nodeCompat: true },
  modules: [
    (nitro) => {
      // The service builder is chosen here, per preset, so an edge bundle never even loads the
      // node builder's modules (vm2, worker threads, fs, the Python process, npm installs).
      const edge = nitro.options.preset === "cloudflare-module";
      nitro.options.alias["#service-builder"] = fileURLToPath(new URL(edge ? "./server/utils/edge-service.ts" : "./server/utils/service.ts", import.meta.url));
      if (nitro.options.preset === "deno-server") {
        nitro.options.entry = fileURLToPath(new URL("./server/entries/deno-server.ts", import.meta.url));
        // After the preset's own: Deno's permissions for what the service does (serve, its storage,
        // its variables, starting the bundled Python API, the egress policy's look at the host's
        // network interfaces).
        nitro.hooks.hook("compiled", () => {
          const start = "deno run --allow-net --allow-read --allow-write --allow-env --allow-run --allow-sys --unstable-byonm ./server/index.mjs";
          writeFileSync(`${nitro.options.output.dir}/deno.json`, `${JSON.stringify({ tasks: { start } }, null, 2)}\n`);
        });
      }
      if (!edge) return;
      nitro.options.entry = fileURLToPath(new URL("./server/entries/cloudflare-module.ts", import.meta.url));
      nitro.options.experimental.wasm = true;
    },
  ],
  rollupConfig: {
    plugins: [
      {
        // The vm2 worker is a file of its own at run time: ship it beside the bundle (as
        // .output/server/runtime/...) and point the adapter at the copy.
        name: "vm2-worker-asset",
        transform(this: PluginContext, code: string, id: string) {
          if (!id.endsWith("/runtime/adapters/vm2/index.ts") || !WORKER_URL.test(code)) return null;
          for (const file of VM2_WORKER_FILES) {
            this.emitFile({ type: "asset", fileName: file, source: readFileSync(new URL(`./${file}`, import.meta.url), "utf8") });
          }
          // In the bundle, Nitro makes `import.meta.url` the entry's URL (.output/server/index.mjs).
          return { code: code.replace(WORKER_URL, 'new URL("./runtime/adapters/vm2/worker.mjs", import.meta.url)'), map: null };
        },
      },
      {
        // Sandbox processes run a bundle of runtime/adapters/sandbox-process/child.ts, shipped beside
        // the workers; the packages it imports resolve from .output/server/node_modules.
        name: "sandbox-process-child",
        transform(this: PluginContext, code: string, id: string) {
          if (!id.endsWith("/runtime/adapters/sandbox-process/index.ts") || !CHILD_URL.test(code)) return null;
          this.emitFile({ type: "asset", fileName: "runtime/adapters/sandbox-process/child.mjs", source: bundleSandboxChild() });
          return { code: code.replace(CHILD_URL, 'new URL("./runtime/adapters/sandbox-process/child.mjs", import.meta.url)'), map: null };
        },
      },
      {
        // The same for the QuickJS worker, which runtime/adapters/quickjs/workers.ts starts.
        name: "quickjs-worker-assets",
        transform(this: PluginContext, code: string, id: string) {
          if (!id.endsWith("/runtime/adapters/quickjs/workers.ts") || !WORKER_URL.test(code)) return null;
          for (const file of QUICKJS_WORKER_FILES) {
            this.emitFile({ type: "asset", fileName: file, source: readFileSync(new URL(`./${file}`, import.meta.url), "utf8") });
          }
          return { code: code.replace(WORKER_URL, `new URL("./${QUICKJS_WORKER_FILES[0]}", import.meta.url)`), map: null };
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
