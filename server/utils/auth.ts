/**
 * Optional API key (`FUNCTIONS_API_KEY`): when set, every request but the health check carries
 * `Authorization: Bearer <key>`. Off by default, for the callers of the original service.
 */
import { createHash, timingSafeEqual } from "node:crypto";
import { getRequestHeader, setResponseHeader, type H3Event } from "h3";
import { ServiceError } from "../../runtime/errors.ts";

// Both sides are hashed first: equal lengths for timingSafeEqual, so neither the key's content nor
// its length shows in the time a wrong guess takes.
const digest = (text: string) => createHash("sha256").update(text).digest();

/** The platform's probes call the health check without credentials. */
function isHealthCheck(event: H3Event): boolean {
  return (event.method === "GET" || event.method === "HEAD") && event.path.split("?")[0] === "/sys/healthcheck";
}

/** A check that throws `UnauthorizedError` (401) unless the request may go ahead. */
export function createApiKeyCheck(apiKey: string): (event: H3Event) => void {
  const expected = digest(apiKey);
  return (event) => {
    if (isHealthCheck(event)) return;
    const header = getRequestHeader(event, "authorization");
    const token = /^Bearer +(\S+) *$/i.exec(header ?? "")?.[1];
    if (token !== undefined && timingSafeEqual(digest(token), expected)) return;
    setResponseHeader(event, "www-authenticate", 'Bearer realm="functions"');
    throw new ServiceError("UnauthorizedError", header ? "The API key is not valid" : "This service requires an API key: send Authorization: Bearer <key>");
  };
}
