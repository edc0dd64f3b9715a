/**
 * The HTTP face of errors: each named error and each failed run outcome becomes a status and the
 * original service's body shape `{ error, message, details }`. Nothing else in the code base knows
 * about status codes.
 */
import { ServiceError, type ServiceErrorCode } from "../../runtime/errors.ts";
import type { RunOutcome } from "../../runtime/types.ts";

export interface ErrorBody {
  error: string;
  message: string;
  details?: unknown;
  logs?: RunOutcome["logs"];
  duration?: number;
}

const SERVICE_ERROR_STATUS: Record<ServiceErrorCode, number> = {
  RequestValidationError: 400,
  UnauthorizedError: 401,
  ObjectNotFoundError: 404,
  PayloadTooLargeError: 413,
  UnsupportedMediaTypeError: 415,
  DependencyError: 503,
  PythonApiError: 502,
  AdapterDisposedError: 503,
  InternalError: 500,
};

/** Status and body for anything thrown while handling a request. */
export function errorResponse(error: unknown): { status: number; body: ErrorBody } {
  if (error instanceof ServiceError) {
    const status = SERVICE_ERROR_STATUS[error.code];
    return { status, body: { error: error.code, message: error.message, ...(error.details === undefined ? {} : { details: error.details }) } };
  }
  const h3Status = (error as { statusCode?: number }).statusCode;
  if (h3Status === 404) return { status: 404, body: { error: "ObjectNotFoundError", message: "No such route" } };
  if (h3Status === 405) return { status: 405, body: { error: "MethodNotAllowedError", message: "Method not allowed on this route" } };
  return { status: 500, body: { error: "InternalError", message: "The service failed to handle the request" } };
}

/** Status and body for a run that did not succeed. */
export function runFailureResponse(outcome: Extract<RunOutcome, { ok: false }>): { status: number; body: ErrorBody } {
  const { error, logs, durationMs } = outcome;
  const common = { logs, duration: durationMs };
  switch (error.kind) {
    case "function":
      return {
        status: 500,
        body: { error: "FunctionError", message: `${error.name}: ${error.message}`, details: { name: error.name, message: error.message, stack: error.stack ?? `${error.name}: ${error.message}` }, ...common },
      };
    case "timeout":
      return { status: 504, body: { error: "TimeoutError", message: error.message, ...common } };
    case "memory":
      return { status: 500, body: { error: "MemoryLimitError", message: error.message, ...common } };
    case "dependency":
      return { status: error.name === "DependencyInstalling" ? 503 : 424, body: { error: "DependencyError", message: error.message, ...common } };
    case "upstream":
      return { status: 502, body: { error: "PythonApiError", message: error.message, ...common } };
  }
}
