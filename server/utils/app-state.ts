/** The service of this Nitro app, created once at start-up by the `service` plugin. */
import type { EventHandler } from "h3";
import type { FunctionsService } from "../../runtime/service.ts";

export const appState: { service?: FunctionsService; handler?: EventHandler; ready?: Promise<void> } = {};
