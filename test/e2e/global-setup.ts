/**
 * Builds the real server once per test run, into a directory of its own, and hands its entry to
 * the end-to-end tests (`inject("serverEntry")`).
 */
import { execFile } from "node:child_process";
import { rm } from "node:fs/promises";
import { resolve } from "node:path";
import { promisify } from "node:util";
import type { TestProject } from "vitest/node";

const run = promisify(execFile);

export default async function setup(project: TestProject) {
  const buildDir = resolve(`.tmp/e2e-build-${process.pid}`);
  await run(process.execPath, [resolve("node_modules/nitropack/dist/cli/index.mjs"), "build"], {
    env: { ...process.env, FX_BUILD_DIR: buildDir, NITRO_PRESET: "node-server" },
    maxBuffer: 64 * 1024 * 1024,
  });
  project.provide("serverEntry", `${buildDir}/server/index.mjs`);
  return async () => {
    await rm(buildDir, { recursive: true, force: true });
  };
}

declare module "vitest" {
  export interface ProvidedContext {
    serverEntry: string;
  }
}
