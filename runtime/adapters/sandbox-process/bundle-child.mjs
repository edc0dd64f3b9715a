// Bundles child.ts into one ES module that Node runs as it is: used by the Nitro build (which
// ships it as runtime/adapters/sandbox-process/child.mjs) and by the tests (which run from the
// TypeScript sources). Packages stay external and resolve from node_modules at run time.
import { buildSync } from "esbuild";

export function bundleSandboxChild() {
  const result = buildSync({
    entryPoints: [new URL("./child.ts", import.meta.url).pathname],
    bundle: true,
    platform: "node",
    format: "esm",
    target: "node20",
    write: false,
    packages: "external",
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}
