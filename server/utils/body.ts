/**
 * Reading JSON bodies with a size limit. h3 1 has none of its own: the limit is checked against
 * Content-Length before reading, and counted while reading chunked bodies, which stop being kept at
 * the first byte over it.
 */
import { getRequestHeader, type H3Event } from "h3";
import { ServiceError } from "../../runtime/errors.ts";

// Past the limit nothing more is kept: after the answer, Node's server discards what the client
// still sends (its request timeout bounds that), so the client reads the 413 instead of a reset.
function tooLarge(maxBytes: number): ServiceError {
  return new ServiceError("PayloadTooLargeError", `Request body exceeds the ${maxBytes} byte limit (REQUEST_MAX_SIZE)`);
}

/** Past the limit, discard what is still coming (up to a bound) before answering, like Node does. */
const DISCARD_LIMIT_BYTES = 16 * 1024 * 1024;

async function discardRest(reader: ReadableStreamDefaultReader<Uint8Array>): Promise<void> {
  // Cancelling a body the client is still sending resets the connection on some runtimes (workerd):
  // the client would see a reset instead of the 413.
  for (let discarded = 0; discarded < DISCARD_LIMIT_BYTES; ) {
    const { done, value } = await reader.read();
    if (done) return;
    discarded += value.byteLength;
  }
  await reader.cancel();
}

async function readLimited(event: H3Event, maxBytes: number): Promise<Uint8Array> {
  const chunks: Uint8Array[] = [];
  let total = 0;
  const req = event.node?.req;
  if (req && typeof req.on === "function" && !event.web?.request) {
    for await (const chunk of req as AsyncIterable<Uint8Array>) {
      total += chunk.byteLength;
      if (total > maxBytes) throw tooLarge(maxBytes);
      chunks.push(chunk);
    }
  } else {
    const body = event.web?.request?.body;
    if (!body) return new Uint8Array(0);
    const reader = body.getReader();
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.byteLength;
      if (total > maxBytes) {
        await discardRest(reader);
        throw tooLarge(maxBytes);
      }
      chunks.push(value);
    }
  }
  if (chunks.length === 1) return chunks[0];
  const all = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return all;
}

const JSON_TYPE = /^application\/(?:[\w.+-]+\+)?json\s*(?:;|$)/i;

/** The parsed JSON body, or `undefined` when there is none. */
export async function readJsonBody(event: H3Event, maxBytes: number): Promise<unknown> {
  const length = getRequestHeader(event, "content-length");
  if (length !== undefined && Number(length) > maxBytes) {
    // On web runtimes the body is read and dropped first (when not absurdly large): answering while
    // the client still sends can reset the connection there (workerd), and the client would not
    // read the 413. Node's server does this by itself.
    const webBody = event.node?.req && !event.web?.request ? undefined : event.web?.request?.body;
    if (webBody && Number(length) <= DISCARD_LIMIT_BYTES) await discardRest(webBody.getReader());
    throw tooLarge(maxBytes);
  }
  if (length === "0") return undefined;
  const bytes = await readLimited(event, maxBytes);
  if (bytes.byteLength === 0) return undefined;
  const type = getRequestHeader(event, "content-type") ?? "";
  if (!JSON_TYPE.test(type)) {
    throw new ServiceError("UnsupportedMediaTypeError", `Request body must be JSON with Content-Type: application/json (got ${type ? JSON.stringify(type.slice(0, 100)) : "none"})`);
  }
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ServiceError("RequestValidationError", "Request body is not valid UTF-8", [{ path: "body", message: "is not valid UTF-8" }]);
  }
  try {
    return JSON.parse(text);
  } catch (error) {
    const message = (error as Error).message;
    throw new ServiceError("RequestValidationError", `Request body is not valid JSON: ${message}`, [{ path: "body", message: `is not valid JSON: ${message}` }]);
  }
}
