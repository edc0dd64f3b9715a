/**
 * Start-up: validate the configuration (a bad variable stops the process with its name), build the
 * service, optionally refresh generated scripts, and dispose of the sandboxes on close.
 */
import { createApp, defineEventHandler } from "h3";
import { defineNitroPlugin } from "nitropack/runtime";
import { createApiHandler } from "../api.ts";
import { appState } from "../utils/app-state.ts";
import { ConfigError, loadConfig } from "../utils/config.ts";
import { logger } from "../utils/logger.ts";
import { createServiceFromConfig } from "../utils/service.ts";

export default defineNitroPlugin((nitroApp) => {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      process.stderr.write(`${error.message}\n`);
      process.exit(1);
    }
    throw error;
  }
  // The node-server entry reads PORT after plugins ran: this gives it the service's default (4000).
  process.env.PORT = String(config.port);
  const startedAt = new Date().toISOString();
  const sandbox = config.sandbox;
  appState.ready = (async () => {
    const service = await createServiceFromConfig(config);
    if (config.updateScriptsOnStartup) {
      const count = await service.refreshScripts();
      logger.info("Scripts updated on start-up", { updated: count });
    }
    appState.service = service;
    appState.handler = createApiHandler({ service, requestMaxBytes: config.requestMaxBytes, logger, health: () => ({ startedAt, sandbox }) });
    logger.info("Functions service ready", { port: config.port, storage: config.storageType, sandbox });
  })().catch((error) => {
    logger.error("Start-up failed", { error: String(error?.stack ?? error) });
    process.exit(1);
  });
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
