/**
 * The HTTP API, defined once: Nitro serves it (server/routes/[...path].ts) and other h3 apps can
 * mount it as it is.
 *
 * @example
 *   const app = createApp()
 *   app.use("/functions-service", createApiHandler({ service, requestMaxBytes: 1 << 20 }))
 */
import { createRouter, defineEventHandler, getRequestHeader, setResponseHeader, setResponseStatus, type EventHandler, type H3Event } from "h3";
import { ServiceError } from "../runtime/errors.ts";
import type { FunctionsService, ServiceLogger } from "../runtime/service.ts";
import { createApiKeyCheck } from "./utils/auth.ts";
import { readJsonBody } from "./utils/body.ts";
import { errorResponse, runFailureResponse } from "./utils/errors.ts";

export interface ApiOptions {
  service: FunctionsService;
  /** `REQUEST_MAX_SIZE` in bytes. */
  requestMaxBytes: number;
  logger?: ServiceLogger;
  /** Extra fields for the health check answer. */
  health?: () => Record<string, unknown>;
  /** `FUNCTIONS_API_KEY`: when set, every request but the health check needs `Authorization: Bearer <key>`. */
  apiKey?: string;
}

/** A route parameter, percent-decoded; a malformed encoding is a 400, never a 500. */
function param(event: H3Event, name: string): string {
  const raw = event.context.params?.[name] ?? "";
  try {
    return decodeURIComponent(raw);
  } catch {
    throw new ServiceError("RequestValidationError", `The ${name} in the URL is not valid percent-encoded UTF-8`, [{ path: name, message: "is not valid percent-encoded UTF-8" }]);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function createApiHandler(options: ApiOptions): EventHandler {
  const { service, requestMaxBytes, logger } = options;
  const router = createRouter({ preemptive: true });
  const checkApiKey = options.apiKey ? createApiKeyCheck(options.apiKey) : undefined;

  router.get("/sys/healthcheck", defineEventHandler(() => ({ healthy: true, ...options.health?.() })));

  router.get("/v2/functions", defineEventHandler(async () => service.list()));

  router.post(
    "/v2/functions/:workspace",
    defineEventHandler(async (event) => service.deploy(param(event, "workspace"), await readJsonBody(event, requestMaxBytes))),
  );

  router.get(
    "/v2/functions/:workspace",
    defineEventHandler(async (event) => {
      const { spec, version, dependencies } = await service.get(param(event, "workspace"));
      // The stored body as it was deployed (`dependencies` stays the pins), plus what is derived.
      return { ...spec, version, ...(dependencies && { dependencyStatus: dependencies }) };
    }),
  );

  router.delete(
    "/v2/functions/:workspace",
    defineEventHandler(async (event) => {
      await service.delete(param(event, "workspace"));
      setResponseStatus(event, 204);
      return null;
    }),
  );

  router.post(
    "/v2/functions/:workspace/run/:function",
    defineEventHandler(async (event) => {
      const workspace = param(event, "workspace");
      const functionName = param(event, "function");
      const body = await readJsonBody(event, requestMaxBytes);
      if (body !== undefined && !isObject(body)) throw new ServiceError("RequestValidationError", "Run body must be a JSON object like { \"parameters\": { ... } }", [{ path: "body", message: "must be an object" }]);
      const parameters = body?.parameters ?? {};
      if (!isObject(parameters)) throw new ServiceError("RequestValidationError", "parameters must be a JSON object", [{ path: "parameters", message: "must be an object" }]);
      const controller = new AbortController();
      // A caller that hangs up before the answer cancels its run.
      const res = event.node?.res;
      res?.once("close", () => {
        if (!res.writableFinished) controller.abort();
      });
      const outcome = await service.run(workspace, functionName, parameters, {
        signal: controller.signal,
        correlationId: getRequestHeader(event, "x-correlation-id"),
      });
      if (outcome.ok) return { result: outcome.result, logs: outcome.logs, duration: outcome.durationMs };
      const { status, body: errorBody } = runFailureResponse(outcome);
      setResponseStatus(event, status);
      return errorBody;
    }),
  );

  return defineEventHandler(async (event) => {
    try {
      checkApiKey?.(event);
      return await router.handler(event);
    } catch (error) {
      const { status, body } = errorResponse(error);
      if (status === 500) logger?.error("Request failed", { path: event.path, error: String((error as Error)?.stack ?? error) });
      setResponseStatus(event, status);
      setResponseHeader(event, "content-type", "application/json");
      return body;
    }
  });
}
