/**
 * Starts the built server (see global-setup.ts) as a real process on a free port, with its own
 * storage directory, and talks to it over real HTTP.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { request as httpRequest } from "node:http";
import { createServer } from "node:net";
import { resolve } from "node:path";
import { inject } from "vitest";

export interface Reply<T = any> {
  status: number;
  body: T;
  headers: Headers;
}

export interface RunningServer {
  url: string;
  storageDir: string;
  process: ChildProcess;
  /** Everything the server printed so far. */
  output(): string;
  request<T = any>(method: string, path: string, body?: unknown, headers?: Record<string, string>): Promise<Reply<T>>;
  /** Like `request`, but the path goes out byte for byte (fetch would normalise `%2e%2e` and `..`). */
  rawRequest(method: string, path: string, body?: string): Promise<{ status: number; body: any }>;
  deploy(workspace: string, body: unknown): Promise<Reply>;
  run(workspace: string, fn: string, parameters?: Record<string, unknown>, headers?: Record<string, string>): Promise<Reply>;
  stop(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

/** What runs the server. @default this Node, on the build of global-setup.ts */
export interface ServerCommand {
  file: string;
  args: string[];
}

/** Starts the server; `env` adds or overrides variables (the storage dir defaults to a fresh temp dir). */
export async function startServer(env: Record<string, string> = {}, command?: ServerCommand): Promise<RunningServer> {
  const port = await freePort();
  const storageDir = env.FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH ?? mkdtempSync(resolve(".tmp/e2e-data-"));
  const ownsStorage = env.FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH === undefined;
  const modulesDir = env.NODE_MODULES_DIRECTORY ?? mkdtempSync(resolve(".tmp/e2e-modules-"));
  const { file, args } = command ?? { file: process.execPath, args: [inject("serverEntry")] };
  const child = spawn(file, args, {
    // npm installs go to a directory of this server's, from no registry unless a test names one.
    env: {
      PATH: process.env.PATH ?? "",
      PORT: String(port),
      FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH: storageDir,
      NODE_MODULES_DIRECTORY: modulesDir,
      NPM_CONFIG_REGISTRY: "http://127.0.0.1:9/",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let output = "";
  child.stdout!.on("data", (chunk) => (output += chunk));
  child.stderr!.on("data", (chunk) => (output += chunk));
  const url = `http://127.0.0.1:${port}`;

  async function request<T>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Reply<T>> {
    const init: RequestInit = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = typeof body === "string" ? body : JSON.stringify(body);
      (init.headers as Record<string, string>)["content-type"] ??= "application/json";
    }
    const response = await fetch(url + path, init);
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON: the raw text is the body.
    }
    return { status: response.status, body: parsed as T, headers: response.headers };
  }

  const exited = new Promise<void>((resolveExit) => child.once("exit", () => resolveExit()));
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited with ${child.exitCode}:\n${output}`);
    try {
      const health = await fetch(`${url}/sys/healthcheck`);
      if (health.ok) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) throw new Error(`server did not become healthy:\n${output}`);
    await new Promise((r) => setTimeout(r, 50));
  }

  return {
    url,
    storageDir,
    process: child,
    output: () => output,
    request,
    rawRequest(method, path, body) {
      return new Promise((resolveReply, reject) => {
        const req = httpRequest({ host: "127.0.0.1", port, method, path, headers: body ? { "content-type": "application/json" } : {} }, (res) => {
          let text = "";
          res.on("data", (chunk) => (text += chunk));
          res.on("end", () => resolveReply({ status: res.statusCode!, body: text ? JSON.parse(text) : undefined }));
        });
        req.on("error", reject);
        req.end(body);
      });
    },
    deploy: (workspace, body) => request("POST", `/v2/functions/${workspace}`, body),
    run: (workspace, fn, parameters, headers) => request("POST", `/v2/functions/${workspace}/run/${fn}`, parameters === undefined ? undefined : { parameters }, headers),
    async stop() {
      if (child.exitCode === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
        await exited;
        clearTimeout(timer);
      }
      if (ownsStorage) rmSync(storageDir, { recursive: true, force: true });
      if (env.NODE_MODULES_DIRECTORY === undefined) rmSync(modulesDir, { recursive: true, force: true });
    },
  };
}
