// The vm2 worker: one per workspace, in a worker thread. It holds the workspace's generated module
// in a vm2 NodeVM and runs its functions on request from the host (runtime/adapters/vm2/index.ts).
//
// Plain JavaScript on purpose: Node loads it as it is, from the sources (tests, embedders) and
// from the Nitro build alike, with nothing to compile.
//
// Messages in:  {t:"load", version, script} | {t:"run", id, version, fn, params} | {t:"cancel", id}
// Messages out: {t:"ready"} | {t:"result", id, ok, json?, error?, logs, durationMs} | {t:"uncaught", error}
import { AsyncLocalStorage } from "node:async_hooks";
import dns from "node:dns";
import { format } from "node:util";
import { parentPort, workerData } from "node:worker_threads";
import { NodeVM } from "vm2";

const { builtinModules, bufferAllocLimitBytes, heartbeat, beatMs, maxLogEntries, maxLogBytes } = workerData;

// The host reads this to tell a busy worker (an event loop that still turns) from a stuck one.
const beat = new Float64Array(heartbeat);
beat[0] = Date.now();
setInterval(() => {
  beat[0] = Date.now();
}, beatMs);

/** The run whose code is executing: console calls and errors are attributed through it. */
const currentRun = new AsyncLocalStorage();

/** @type {{version: string, call?: Function, loadError?: object} | undefined} */
let loaded;
/** Runs in progress by id; a run the host cancelled (deadline passed) answers nothing. */
const active = new Map();

function record(level, args) {
  const run = currentRun.getStore();
  if (!run || run.logBytes > maxLogBytes) return;
  if (run.logs.length >= maxLogEntries) {
    run.logBytes = Infinity;
    run.logs.push({ level: "warn", message: `[logs truncated after ${maxLogEntries} entries]`, timestamp: new Date().toISOString() });
    return;
  }
  let message;
  try {
    message = format(...args);
  } catch (error) {
    message = `[unprintable value: ${describeError(error).message}]`;
  }
  run.logBytes += message.length;
  if (run.logBytes > maxLogBytes) message = `${message.slice(0, 1024)}… [logs truncated after ${maxLogBytes} bytes]`;
  run.logs.push({ level, message, timestamp: new Date().toISOString() });
}

const sandboxConsole = {
  log: (...args) => record("log", args),
  info: (...args) => record("info", args),
  warn: (...args) => record("warn", args),
  error: (...args) => record("error", args),
  debug: (...args) => record("debug", args),
  trace: (...args) => record("debug", args),
  dir: (value) => record("log", [value]),
};

// `dns` is a process-wide resolver: functions get lookups and queries, never setServers or
// setDefaultResultOrder (vm2 refuses the real module for that reason).
const DNS_QUERIES = ["lookup", "lookupService", "resolve", "resolve4", "resolve6", "resolveAny", "resolveCname", "resolveMx", "resolveNs", "resolveSrv", "resolveTxt", "reverse"];
const narrowDns = {
  ...Object.fromEntries(DNS_QUERIES.map((name) => [name, dns[name].bind(dns)])),
  promises: Object.fromEntries(DNS_QUERIES.map((name) => [name, dns.promises[name].bind(dns.promises)])),
};

const SANDBOX_GLOBALS = {
  console: sandboxConsole,
  fetch,
  URL,
  URLSearchParams,
  TextEncoder,
  TextDecoder,
  AbortController,
  AbortSignal,
  structuredClone,
  Headers,
  Request,
  Response,
  FormData,
  Blob,
  atob,
  btoa,
  queueMicrotask,
};

// Runs inside the sandbox, so parameters are parsed into sandbox objects and the result is
// serialised there: only strings cross vm2's bridge, which is its cheapest path.
// vm2 prints every frame as "CallSite {}"; its call sites still answer the getters, so the sandbox
// formats frames itself (the host maps them to the user's lines and drops what is not theirs).
const INVOKER = `Error.prepareStackTrace = function (error, sites) {
  var out;
  try { out = String(error); } catch (e) { out = "Error"; }
  for (var i = 0; i < sites.length; i++) {
    var s = sites[i], fn = s.getFunctionName();
    out += "\\n    at " + (fn ? fn + " (" : "") + s.getFileName() + ":" + s.getLineNumber() + ":" + s.getColumnNumber() + (fn ? ")" : "");
  }
  return out;
};
module.exports = function (fns, name, paramsJson) {
  return fns[name](JSON.parse(paramsJson)).then(function (value) {
    var json;
    try { json = JSON.stringify(value); } catch (error) {
      throw new TypeError("The function's result is not JSON-serialisable: " + (error && error.message));
    }
    return json === undefined ? "null" : json;
  });
};`;

function createVm() {
  const builtin = builtinModules.filter((name) => name !== "dns");
  return new NodeVM({
    console: "off",
    sandbox: SANDBOX_GLOBALS,
    eval: false,
    wasm: false,
    bufferAllocLimit: bufferAllocLimitBytes,
    require: {
      builtin,
      external: false,
      mock: builtinModules.includes("dns") ? { dns: narrowDns, "dns/promises": narrowDns.promises } : {},
    },
    wrapper: "commonjs",
  });
}

function load({ version, script }) {
  try {
    const vm = createVm();
    const factory = vm.run(script, "workspace.js");
    const fns = factory();
    const invoke = vm.run(INVOKER, "invoker.js");
    loaded = { version, call: (fn, params) => invoke(fns, fn, params) };
  } catch (error) {
    loaded = { version, loadError: describeError(error) };
  }
}

/** Name, message and stack of anything thrown, read defensively: user errors can be hostile. */
function describeError(error) {
  const read = (get, fallback) => {
    try {
      const value = get();
      return typeof value === "string" ? value : fallback;
    } catch {
      return fallback;
    }
  };
  if (error === null || (typeof error !== "object" && typeof error !== "function")) {
    return { name: "Error", message: `Uncaught ${read(() => String(error), "value")}` };
  }
  return {
    name: read(() => error.name, "Error"),
    message: read(() => error.message, read(() => String(error), "")),
    stack: read(() => error.stack, undefined),
  };
}

async function run({ id, version, fn, params }) {
  const context = { logs: [], logBytes: 0, cancelled: false };
  active.set(id, context);
  const started = performance.now();
  let reply;
  try {
    if (!loaded || loaded.version !== version) throw new Error(`workspace version ${version} is not loaded`);
    if (loaded.loadError) throw Object.assign(new Error(loaded.loadError.message), loaded.loadError);
    const json = await currentRun.run(context, () => loaded.call(fn, params));
    reply = { t: "result", id, ok: true, json };
  } catch (error) {
    reply = { t: "result", id, ok: false, error: describeError(error) };
  }
  active.delete(id);
  if (context.cancelled) return;
  reply.logs = context.logs;
  reply.durationMs = performance.now() - started;
  parentPort.postMessage(reply);
}

parentPort.on("message", (message) => {
  switch (message.t) {
    case "load":
      return load(message);
    case "run":
      return void run(message);
    case "cancel":
      if (active.has(message.id)) active.get(message.id).cancelled = true;
      return;
  }
});

// A timer or emitter of a finished run threw: report it, so the host retires this worker once its
// runs are done, instead of letting the thread die under runs that did nothing wrong.
process.on("uncaughtException", (error) => parentPort.postMessage({ t: "uncaught", error: describeError(error) }));
process.on("unhandledRejection", () => undefined);

parentPort.postMessage({ t: "ready" });
