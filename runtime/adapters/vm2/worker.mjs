// The vm2 worker: one per workspace, in a worker thread. It holds the workspace's generated module
// in a vm2 NodeVM and runs its functions on request from the host (runtime/adapters/vm2/index.ts).
//
// Plain JavaScript on purpose: Node loads it as it is, from the sources (tests, embedders) and
// from the Nitro build alike, with nothing to compile.
//
// Messages in:  {t:"load", version, script, modules?} | {t:"run", id, version, fn, params} | {t:"cancel", id}
// Messages out: {t:"ready"} | {t:"result", id, ok, json?, error?, logs, durationMs} | {t:"uncaught", error}
import { AsyncLocalStorage } from "node:async_hooks";
import dns from "node:dns";
import { existsSync } from "node:fs";
import { join, sep } from "node:path";
import { format } from "node:util";
import { parentPort, workerData } from "node:worker_threads";
import { NodeVM } from "vm2";
import { explainEgressDenials, installEgressGuard } from "../../egress.mjs";
import { hardenBuiltins } from "./builtins.mjs";

const { builtinModules, bufferAllocLimitBytes, heartbeat, beatMs, maxLogEntries, maxLogBytes } = workerData;

// Before any code is loaded: every connection of this thread meets the egress policy, and the
// builtins lose what would reach past a run (runtime/egress.mjs, ./builtins.mjs).
installEgressGuard(workerData.egress);
hardenBuiltins({ maxDecompressedBytes: bufferAllocLimitBytes });

// The host reads this to tell a busy worker (an event loop that still turns) from a stuck one.
const beat = new Float64Array(heartbeat);
beat[0] = Date.now();
setInterval(() => {
  beat[0] = Date.now();
}, beatMs);

/** The run whose code is executing: console calls and errors are attributed through it. */
const currentRun = new AsyncLocalStorage();

/** @type {{version: string, modules?: object, call?: Function, loadError?: object} | undefined} */
let loaded;
/** Runs in progress by id; a run the host cancelled (deadline passed) is gone from here. */
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
  fetch: explainEgressDenials(fetch),
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
// serialised there: only strings cross vm2's bridge, its cheapest path. The outcome comes back
// through one host callback, `settle(id, ok, value)`, instead of a sandbox promise the host would
// have to await through the bridge.
// vm2 prints every frame as "CallSite {}"; its call sites still answer the getters, so the sandbox
// formats frames itself (the host maps them to the user's lines and drops what is not theirs).
const INVOKER = `Error.prepareStackTrace = function (error, sites) {
  var out;
  try { out = String(error); } catch (e) { out = "Error"; }
  for (var i = 0; i < sites.length; i++) {
    var s = sites[i], fn = s.getFunctionName(), file = s.getFileName();
    // Frames of the host (the worker, absolute paths of packages) would tell function code where it runs.
    if (!file || /^(\\/|file:|node:)/.test(file)) continue;
    out += "\\n    at " + (fn ? fn + " (" : "") + file + ":" + s.getLineNumber() + ":" + s.getColumnNumber() + (fn ? ")" : "");
  }
  return out;
};
// A run ends when it answers: timers it set and did not wait for are cleared then. They are
// tracked here, in the sandbox, by the run that created them (the host says which one is current).
module.exports = function (currentRunId) {
  var byRun = new Map();
  function tracked(set, clear) {
    return function () {
      var handle = set.apply(this, arguments);
      var id = currentRunId();
      if (id !== undefined) {
        var handles = byRun.get(id);
        if (!handles) byRun.set(id, (handles = []));
        handles.push([clear, handle]);
      }
      return handle;
    };
  }
  globalThis.setTimeout = tracked(setTimeout, clearTimeout);
  globalThis.setInterval = tracked(setInterval, clearInterval);
  globalThis.setImmediate = tracked(setImmediate, clearImmediate);
  function endRun(id) {
    var handles = byRun.get(id);
    if (!handles) return;
    byRun.delete(id);
    for (var i = 0; i < handles.length; i++) handles[i][0](handles[i][1]);
  }
  function invoke(fns, id, name, paramsJson, settle) {
    function fulfilled(value) {
      var json;
      try { json = JSON.stringify(value); } catch (error) {
        settle(id, false, new TypeError("The function's result is not JSON-serialisable: " + (error && error.message)));
        return;
      }
      settle(id, true, json === undefined ? "null" : json);
    }
    try {
      fns[name](JSON.parse(paramsJson)).then(fulfilled, function (error) { settle(id, false, error); });
    } catch (error) {
      settle(id, false, error);
    }
  }
  return { invoke: invoke, endRun: endRun };
};`;

// Builtins without I/O or host state that npm packages commonly load: allowed once packages are.
const PACKAGE_BUILTINS = ["path", "events", "string_decoder", "querystring", "punycode", "assert"];

/** `lodash` for `lodash/fp`, `@scope/pkg` for `@scope/pkg/sub`. */
const packageDir = (specifier) => specifier.split("/").slice(0, specifier.startsWith("@") ? 2 : 1).join("/");

/**
 * Package loading for a workspace (see `WorkspaceModules` in runtime/types.ts): bare names in
 * `names` only, found only in the install and shared folders; `root` also bounds every file a
 * package loads, so no relative or absolute path leads out of them.
 */
function packageOptions({ names, installDir, sharedDir }) {
  const dirs = [installDir, sharedDir].filter(Boolean);
  return {
    external: { modules: names, transitive: true },
    root: dirs,
    resolve: (specifier) => {
      const dir = dirs.find((d) => existsSync(join(d, packageDir(specifier), "package.json")));
      return dir && { module: specifier, path: dir };
    },
    // Registry packages are anyone's code: they run inside the sandbox, under its rules. Shared
    // packages are the operator's, trusted like builtins: they load natively, behind vm2's proxies.
    context: (filename) => (sharedDir && filename.startsWith(sharedDir + sep) ? "host" : "sandbox"),
  };
}

function createVm(modules) {
  const builtin = builtinModules.filter((name) => name !== "dns");
  return new NodeVM({
    console: "off",
    sandbox: SANDBOX_GLOBALS,
    eval: false,
    wasm: false,
    bufferAllocLimit: bufferAllocLimitBytes,
    require: {
      builtin: modules ? [...builtin, ...PACKAGE_BUILTINS] : builtin,
      external: false,
      ...(modules && packageOptions(modules)),
      mock: builtinModules.includes("dns") ? { dns: narrowDns, "dns/promises": narrowDns.promises } : {},
    },
    wrapper: "commonjs",
  });
}

function load({ version, script, modules }) {
  try {
    const vm = createVm(modules);
    const factory = vm.run(script, "workspace.js");
    const fns = factory();
    const { invoke, endRun } = vm.run(INVOKER, "invoker.js")(() => currentRun.getStore()?.id);
    loaded = { version, modules, endRun, call: (id, fn, params) => invoke(fns, id, fn, params, settle) };
  } catch (error) {
    loaded = { version, modules, loadError: describeError(error) };
  }
}

/**
 * A package that fails to compile (mostly an ES module: vm2 loads packages with `require`) gets an
 * error that names it and says what to do, and no host path (a SyntaxError's stack starts with one).
 */
function explainPackageError(error) {
  const file = /^(\/[^\n]*?):\d+\n/.exec(error.stack ?? "")?.[1];
  const dirs = [loaded?.modules?.installDir, loaded?.modules?.sharedDir].filter(Boolean);
  if (error.name !== "SyntaxError" || !file || !dirs.some((dir) => file.startsWith(dir + sep))) return error;
  const inPackage = /.*\/node_modules\/((?:@[^/]+\/)?[^/]+)\/(.*)$/.exec(file);
  const message =
    `Package '${inPackage?.[1] ?? "?"}' cannot be loaded in the sandbox: ${error.message} (in ${inPackage?.[2] ?? "its code"}). ` +
    "Packages are loaded with require(), so an ES-module-only package fails: pin a version that ships CommonJS in the deploy body's dependencies.";
  return { name: error.name, message, stack: `${error.name}: ${message}` };
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

function run({ id, version, fn, params }) {
  const context = { id, logs: [], logBytes: 0, started: performance.now(), end: loaded?.endRun };
  active.set(id, context);
  if (!loaded || loaded.version !== version) return settle(id, false, new Error(`workspace version ${version} is not loaded`));
  if (loaded.loadError) return settle(id, false, Object.assign(new Error(loaded.loadError.message), loaded.loadError));
  currentRun.run(context, () => loaded.call(id, fn, params));
}

/** A run is over: forget it and clear the timers it left. */
function end(context) {
  active.delete(context.id);
  context.end?.(context.id);
}

/** Called once per run, from inside the sandbox or by `run` itself, with the JSON result or the error. */
function settle(id, ok, value) {
  const context = active.get(id);
  if (!context) return;
  end(context);
  const reply = ok ? { t: "result", id, ok: true, json: value } : { t: "result", id, ok: false, error: explainPackageError(describeError(value)) };
  reply.logs = context.logs;
  reply.durationMs = performance.now() - context.started;
  reply_(reply);
}

/** Replies settled during one turn of the event loop go to the host in one message. */
let replies = [];
function reply_(message) {
  replies.push(message);
  if (replies.length === 1) setImmediate(flushReplies);
}
function flushReplies() {
  const batch = replies;
  replies = [];
  parentPort.postMessage(batch.length === 1 ? batch[0] : batch);
}

parentPort.on("message", (message) => {
  if (Array.isArray(message)) message.forEach(dispatch);
  else dispatch(message);
});

function dispatch(message) {
  switch (message.t) {
    case "load":
      return load(message);
    case "run":
      return run(message);
    case "cancel":
      // Past its deadline: the run is over, nothing of it answers or keeps running.
      if (active.has(message.id)) end(active.get(message.id));
      return;
  }
}

// A timer or emitter of a finished run threw: report it, so the host retires this worker once its
// runs are done, instead of letting the thread die under runs that did nothing wrong.
process.on("uncaughtException", (error) => parentPort.postMessage({ t: "uncaught", error: describeError(error) }));
process.on("unhandledRejection", () => undefined);

parentPort.postMessage({ t: "ready" });
