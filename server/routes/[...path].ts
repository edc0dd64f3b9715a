/** Every request goes to the API handler (server/api.ts), the one place that defines the routes. */
import { defineEventHandler } from "h3";
import { appState } from "../utils/app-state.ts";

export default defineEventHandler(async (event) => {
  if (!appState.handler) await appState.ready;
  return appState.handler!(event);
});
