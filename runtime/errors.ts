/**
 * Named host errors. A guest failure is a `RunOutcome` value; these are thrown when the host itself
 * cannot do what was asked. `server/` maps each `code` to an HTTP status.
 */

export type ServiceErrorCode =
  | "RequestValidationError"
  | "ObjectNotFoundError"
  | "PayloadTooLargeError"
  | "UnsupportedMediaTypeError"
  | "UnauthorizedError"
  | "DependencyError"
  | "PythonApiError"
  | "AdapterDisposedError"
  | "InternalError";

export interface ValidationIssue {
  /** Where in the request, e.g. `functions.hello.parameters.name`. */
  path: string;
  message: string;
}

export class ServiceError extends Error {
  constructor(
    readonly code: ServiceErrorCode,
    message: string,
    readonly details?: unknown,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = code;
  }
}

export function validationError(issues: ValidationIssue[]): ServiceError {
  const first = issues[0];
  const message = issues.length === 1 ? `${first.path}: ${first.message}` : `${issues.length} problems, first: ${first.path}: ${first.message}`;
  return new ServiceError("RequestValidationError", message, issues);
}

export function notFound(message: string): ServiceError {
  return new ServiceError("ObjectNotFoundError", message);
}

export function adapterDisposed(adapterName: string): ServiceError {
  return new ServiceError("AdapterDisposedError", `The ${adapterName} adapter was disposed`);
}
