/**
 * The server's entry in `deno-server` builds, in place of Nitro's own (nitro.config.ts sets it):
 * `Deno.serve` hands requests to the API as web `Request`s, so a body is read as a stream under the
 * body limit (server/utils/body.ts). Nitro's entry would buffer every body whole first, into a
 * request its body reader cannot iterate. Listens on PORT (the service's default, 4000) and HOST;
 * ends on SIGTERM and SIGINT after the service is closed.
 */
import "#nitro-internal-pollyfills";
import { toWebHandler } from "h3";
import { useNitroApp } from "nitropack/runtime";

declare const Deno: {
  env: { get(name: string): string | undefined };
  serve(options: { port: number; hostname?: string; onListen?(): void }, handler: (request: Request) => Promise<Response>): unknown;
  addSignalListener(signal: "SIGTERM" | "SIGINT", handler: () => void): void;
  exit(code: number): never;
};

const nitroApp = useNitroApp();
const handle = toWebHandler(nitroApp.h3App);

// The service plugin has run by now: it sets PORT to the service's default when none was given.
Deno.serve(
  {
    port: Number(Deno.env.get("PORT")),
    hostname: Deno.env.get("HOST"),
    // The service logs its own "ready" line, as JSON.
    onListen: () => undefined,
  },
  (request) => handle(request),
);

// As Nitro's node-server entry does: the `close` hook disposes of the sandboxes and stops the
// bundled Python API, which would outlive this process otherwise.
for (const signal of ["SIGTERM", "SIGINT"] as const) {
  Deno.addSignalListener(signal, () => {
    void nitroApp.hooks.callHook("close").finally(() => Deno.exit(0));
  });
}
