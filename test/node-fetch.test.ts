/** The keep-alive fetch the service uses for its own upstreams (the Python API). */
import { createServer, type Server } from "node:http";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { createNodeFetch } from "../runtime/node-fetch.ts";

let server: Server;
let base: string;
beforeAll(async () => {
  server = createServer((req, res) => {
    let body = "";
    req.on("data", (chunk) => (body += chunk));
    req.on("end", () => {
      if (req.url === "/slow") return void setTimeout(() => res.end("late"), 2000);
      res.writeHead(req.url === "/missing" ? 404 : 200, { "content-type": "application/json", "x-echo": req.headers["x-test"] ?? "" });
      res.end(JSON.stringify({ method: req.method, body }));
    });
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
});
afterAll(() => new Promise<void>((r) => server.close(() => r())));

describe("node fetch", () => {
  const fetch = createNodeFetch();

  it("posts a body and answers status, headers and the whole body", async () => {
    const response = await fetch(`${base}/x`, { method: "POST", headers: { "x-test": "yes" }, body: '{"a":1}' });
    expect(response.status).toBe(200);
    expect(response.headers.get("x-echo")).toBe("yes");
    expect(await response.json()).toEqual({ method: "POST", body: '{"a":1}' });
    expect((await fetch(`${base}/missing`)).status).toBe(404);
  });

  it("fails like undici: a TypeError whose cause names the socket error", async () => {
    const closed = createServer();
    await new Promise<void>((r) => closed.listen(0, "127.0.0.1", r));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((r) => closed.close(() => r()));
    const error = await fetch(`http://127.0.0.1:${port}/`).catch((e) => e);
    expect(error).toBeInstanceOf(TypeError);
    expect(error.cause.code).toBe("ECONNREFUSED");
  });

  it("stops at an abort signal", async () => {
    const started = performance.now();
    await expect(fetch(`${base}/slow`, { signal: AbortSignal.timeout(100) })).rejects.toMatchObject({ name: "TimeoutError" });
    expect(performance.now() - started).toBeLessThan(1000);
  });
});
