// Python functions (issue 4): warm runs through the service, and the same runs sent straight to the
// Python API, so that the service's forwarding overhead is the difference of the two.
//
// The bench starts runtime/python/server.py itself and points the service at it (PYTHON_API_URL), so
// both paths reach the very same kernels. Requests alternate (service, direct, service, ...) so that
// drift on the machine weighs on both alike. Targets: warm run under 5 ms end to end (service HTTP
// p50), forwarding overhead under 1 ms. BENCH_PYTHON_RUNS sets the runs per path (default 2000).
//
// Standalone: `node bench/python.mjs [server entry]` after `npm run build`; or `pythonSection(entry)`.
import { execFileSync, spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { fmt, send, startService, summarise } from "./lib.mjs";

const RUNS = Number(process.env.BENCH_PYTHON_RUNS ?? 2000);
const WARMUP = 200;
const POOL_SIZE = 2;
const hello = { functions: { hello: { code: 'return "Hello " + name', parameters: { name: { type: "string" } }, language: "python" } } };

function hasPython() {
  try {
    execFileSync("python3", ["--version"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}

/** runtime/python/server.py on a free port; resolves once it prints its `listening on` line. */
function startPythonApi() {
  const script = fileURLToPath(new URL("../runtime/python/server.py", import.meta.url));
  const child = spawn("python3", [script], { env: { PATH: process.env.PATH, PORT: "0", KERNEL_POOL_SIZE: String(POOL_SIZE) }, stdio: ["ignore", "pipe", "inherit"] });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the Python API did not start within 15 s")), 15_000);
    child.once("exit", (code) => reject(new Error(`the Python API exited before listening (code ${code})`)));
    createInterface({ input: child.stdout }).on("line", (line) => {
      const match = /python-api listening on (http:\/\/\S+)/.exec(line);
      if (!match) return;
      clearTimeout(timer);
      resolve({ url: match[1], stop: () => new Promise((r) => { if (child.exitCode !== null) r(); else { child.once("exit", r); child.kill("SIGTERM"); } }) });
    });
  });
}

export async function pythonSection(entry) {
  console.log(`\n## Python functions (warm runs, ${RUNS} sequential per path, KERNEL_POOL_SIZE=${POOL_SIZE})`);
  if (!hasPython()) {
    console.log("python3 not found: skipped");
    return undefined;
  }
  const api = await startPythonApi();
  const service = await startService(entry, { PYTHON_API_URL: api.url });
  try {
    const deploy = await send(service.url, "POST", "/v2/functions/bench-py", hello);
    if (deploy.status !== 200) throw new Error(`deploy failed: ${deploy.status} ${JSON.stringify(deploy.body)}`);
    const runPath = "/v2/functions/bench-py/run/hello";
    const runBody = { parameters: { name: "world" } };
    const first = await send(service.url, "POST", runPath, runBody); // sends the code to the API
    if (first.status !== 200 || first.body.result !== "Hello world") throw new Error(`first run failed: ${first.status} ${JSON.stringify(first.body)}`);
    // The same workspace, version and kernel as the service's runs: a warm run, with no code attached.
    const { version } = (await send(service.url, "GET", "/v2/functions/bench-py")).body;
    const directBody = { protocol: 1, workspace: "bench-py", version, function: "hello", parameters: { name: "world" }, timeoutMs: 20_000 };

    const viaService = { http: [], duration: [] };
    const direct = { http: [], duration: [] };
    let errors = 0;
    for (let i = 0; i < WARMUP + RUNS; i++) {
      const a = await send(service.url, "POST", runPath, runBody);
      const b = await send(api.url, "POST", "/v1/run", directBody);
      if (a.status !== 200 || a.body.result !== "Hello world" || b.status !== 200 || b.body.result !== "Hello world") errors++;
      if (i < WARMUP) continue;
      viaService.http.push(a.ms);
      viaService.duration.push(a.body.duration);
      direct.http.push(b.ms);
      direct.duration.push(b.body.durationMs);
    }
    const s = { http: summarise(viaService.http), duration: summarise(viaService.duration) };
    const d = { http: summarise(direct.http), duration: summarise(direct.duration) };
    const overhead = s.http.p50 - d.http.p50;
    console.log(`through the service   http p50 ${fmt(s.http.p50, 3)} ms  p99 ${fmt(s.http.p99, 3)} ms   duration p50 ${fmt(s.duration.p50, 3)} ms`);
    console.log(`Python API, direct    http p50 ${fmt(d.http.p50, 3)} ms  p99 ${fmt(d.http.p99, 3)} ms   durationMs p50 ${fmt(d.duration.p50, 3)} ms`);
    console.log(`warm Python run end to end (service http p50): ${fmt(s.http.p50, 3)} ms (target < 5 ms: ${s.http.p50 < 5 ? "met" : "MISSED"})`);
    console.log(`forwarding overhead (service p50 - direct p50): ${fmt(overhead, 3)} ms (target < 1 ms: ${overhead < 1 ? "met" : "MISSED"})`);
    if (errors) console.log(`  ERRORS ${errors}`);
    return { service: s, direct: d, overheadMs: overhead, errors };
  } finally {
    await service.stop();
    await api.stop();
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await pythonSection(process.argv[2] ?? fileURLToPath(new URL("../.output/server/index.mjs", import.meta.url)));
  process.exit(0);
}
