/**
 * The original service's documented walkthrough, over real HTTP against the built server: what an
 * existing caller does must keep working unchanged.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startServer, type RunningServer } from "./harness.ts";

let server: RunningServer;
beforeAll(async () => {
  server = await startServer();
});
afterAll(async () => {
  await server?.stop();
});

describe("the seed walkthrough", () => {
  const body = { functions: { hello: { code: 'return "Hello " + name;', parameters: { name: { type: "string" } } } } };

  it("deploying a workspace answers the same body", async () => {
    const reply = await server.deploy("test", body);
    expect(reply.status).toBe(200);
    expect(reply.body).toEqual(body);
  });

  it("running hello answers result, logs and duration", async () => {
    const reply = await server.run("test", "hello", { name: "world" });
    expect(reply.status).toBe(200);
    expect(reply.body).toMatchObject({ result: "Hello world", logs: [] });
    expect(typeof reply.body.duration).toBe("number");
  });

  it("functions call each other through the shared execution context", async () => {
    await server.deploy("shared", { functions: { funcA: { code: 'return "world";' }, funcB: { code: 'return "hello " + (await funcA());' } } });
    expect((await server.run("shared", "funcB")).body.result).toBe("hello world");
  });

  it("cache is shared between functions and across runs", async () => {
    await server.deploy("memory", {
      functions: {
        funcA: { code: "let counter = cache['counter']\ncounter = (counter || 0) + 1\ncache['counter'] = counter;\nreturn counter;" },
        funcB: { code: "let counter = cache['counter'];\nreturn \"Counter : \" + counter;" },
      },
    });
    expect((await server.run("memory", "funcA")).body.result).toBe(1);
    expect((await server.run("memory", "funcA")).body.result).toBe(2);
    expect((await server.run("memory", "funcB")).body.result).toBe("Counter : 2");
  });
});
