/**
 * The worker's entry in `cloudflare-module` builds, in place of Nitro's own (nitro.config.ts sets
 * it): requests reach the API as web `Request`s, so a body is read as a stream and the body limit
 * stops reading at its first byte over (server/utils/body.ts). Nitro's entry would buffer every
 * body whole first, into a request its body reader cannot iterate.
 */
import "#nitro-internal-pollyfills";
import { toWebHandler } from "h3";
import { useNitroApp } from "nitropack/runtime";

interface WorkerContext {
  waitUntil(promise: Promise<unknown>): void;
}

const handle = toWebHandler(useNitroApp().h3App);

export default {
  fetch(request: Request, env: Record<string, unknown>, context: WorkerContext): Promise<Response> {
    // Where unstorage's cloudflare drivers look bindings up by name (Nitro's entry does the same).
    (globalThis as { __env__?: unknown }).__env__ = env;
    return handle(request, { cloudflare: { env, context }, waitUntil: (promise: Promise<unknown>) => context.waitUntil(promise) });
  },
};
