/**
 * Start-up: validate the configuration (a bad variable stops the process with its name; on an edge
 * runtime it fails the worker's start, and so its deploy), build the service, optionally refresh
 * generated scripts, and dispose of the sandboxes on close.
 */
import { createApp, defineEventHandler } from "h3";
import { defineNitroPlugin } from "nitropack/runtime";
import { createApiHandler } from "../api.ts";
import { appState } from "../utils/app-state.ts";
import { ConfigError, loadConfig, type ConfigTarget } from "../utils/config.ts";
import { logger } from "../utils/logger.ts";
// server/utils/service.ts, or server/utils/edge-service.ts in edge builds (nitro.config.ts).
import { createServiceFromConfig } from "#service-builder";

/** What this build runs on. Build-time constants: the bundler drops the branches not taken. */
const EDGE = import.meta.preset === "cloudflare-module";
const TARGET: ConfigTarget = EDGE ? "edge" : import.meta.preset === "deno-server" ? "deno" : "node";

export default defineNitroPlugin((nitroApp) => {
  let config;
  try {
    // On workerd, Nitro's process.env reads the worker's bindings: its vars and KV namespaces.
    config = loadConfig(process.env, TARGET);
  } catch (error) {
    if (error instanceof ConfigError && !EDGE) {
      process.stderr.write(`${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
  // The node-server entry reads PORT after plugins ran: this gives it the service's default (4000).
  if (!EDGE) process.env.PORT = String(config.port);
  const startedAt = new Date().toISOString();
  const sandbox = config.sandbox;
  appState.ready = (async () => {
    const service = await createServiceFromConfig(config);
    if (config.updateScriptsOnStartup) {
      const count = await service.refreshScripts();
      logger.info("Scripts updated on start-up", { updated: count });
    }
    appState.service = service;
    appState.handler = createApiHandler({ service, requestMaxBytes: config.requestMaxBytes, logger, health: () => ({ startedAt, sandbox }), apiKey: config.apiKey });
    logger.info("Functions service ready", { port: config.port, storage: config.storageType, sandbox });
  })().catch((error) => {
    logger.error("Start-up failed", { error: String(error?.stack ?? error) });
    // No process to end on the edge: the requests that wait for the service answer 500 instead.
    if (EDGE) throw error;
    process.exit(1);
  });
  appState.ready.catch(() => undefined);
  // Every request is an API call: it goes straight to the API's own h3 app, skipping Nitro's
  // per-request hooks and route rules, which cost more than a whole warm run (docs/performance.md).
  const api = createApp();
  api.use(
    defineEventHandler(async (event) => {
      if (!appState.handler) await appState.ready;
      return appState.handler!(event);
    }),
  );
  nitroApp.h3App.handler = api.handler;
  nitroApp.hooks.hook("close", async () => {
    await appState.service?.dispose();
  });
});
