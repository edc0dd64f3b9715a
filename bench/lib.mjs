// Helpers for the benchmarks: start processes, send load over keep-alive HTTP, summarise.
import { spawn } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { Agent, request } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

export async function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts a node script as a server and waits until `ready(url)` answers. */
export async function startProcess(script, env, ready) {
  const port = await freePort();
  const child = spawn(process.execPath, [script], { env: { PATH: process.env.PATH, ...env, PORT: String(port) }, stdio: ["ignore", "pipe", "inherit"] });
  child.stdout.resume();
  const url = `http://127.0.0.1:${port}`;
  for (let i = 0; i < 400; i++) {
    try {
      if (await ready(url)) break;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { url, pid: child.pid, stop: () => new Promise((r) => { child.once("exit", r); child.kill("SIGTERM"); }) };
}

export async function startService(entry, env = {}) {
  const storage = mkdtempSync(join(tmpdir(), "fx-bench-"));
  const service = await startProcess(entry, { FUNCTIONS_STORAGE_FILESYSTEM_DIRPATH: storage, ...env }, async (url) => (await fetch(`${url}/sys/healthcheck`)).ok);
  return { ...service, stop: async () => { await service.stop(); rmSync(storage, { recursive: true, force: true }); } };
}

const agent = new Agent({ keepAlive: true, maxSockets: 256 });

/** One HTTP request on the keep-alive agent: status, parsed body, milliseconds. */
export function send(url, method, path, body) {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  const started = performance.now();
  return new Promise((resolve, reject) => {
    const { hostname, port } = new URL(url);
    const req = request({ hostname, port, path, method, agent, headers: payload ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {} }, (res) => {
      let text = "";
      res.setEncoding("utf8");
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () => resolve({ status: res.statusCode, body: text ? JSON.parse(text) : undefined, ms: performance.now() - started }));
    });
    req.on("error", reject);
    req.end(payload);
  });
}

/** `connections` loops sending `make()` requests for `seconds`; latencies and throughput. */
export async function load(url, connections, seconds, make) {
  const latencies = [];
  const durations = [];
  let errors = 0;
  const end = performance.now() + seconds * 1000;
  await Promise.all(
    Array.from({ length: connections }, async () => {
      while (performance.now() < end) {
        const [method, path, body] = make();
        const reply = await send(url, method, path, body);
        if (reply.status !== 200) errors++;
        latencies.push(reply.ms);
        if (typeof reply.body?.duration === "number") durations.push(reply.body.duration);
      }
    }),
  );
  return { requests: latencies.length, perSecond: latencies.length / seconds, errors, latency: summarise(latencies), duration: summarise(durations) };
}

export function summarise(values) {
  if (values.length === 0) return { p50: NaN, p99: NaN };
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  return { p50: at(0.5), p99: at(0.99), n: sorted.length };
}

/** Resident memory of a process and all its descendants (sandbox processes, the Python API), MB. */
export function rssMb(pid) {
  const parents = new Map();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      parents.set(Number(entry), Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]));
    } catch {
      // gone meanwhile
    }
  }
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) for (const [child, parent] of parents) if (parent === tree[i]) tree.push(child);
  let kb = 0;
  for (const member of tree) {
    try {
      kb += Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${member}/status`, "utf8"))[1]);
    } catch {
      // gone meanwhile
    }
  }
  return kb / 1024;
}

export const fmt = (n, digits = 2) => (Number.isFinite(n) ? n.toFixed(digits) : "n/a");
