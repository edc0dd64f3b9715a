// The vm2 worker: one per workspace, in a worker thread. It holds the workspace's generated module
// in a vm2 NodeVM and runs its functions on request from the host (runtime/adapters/vm2/index.ts).
//
// Plain JavaScript on purpose: Node loads it as it is, from the sources (tests, embedders) and
// from the Nitro build alike, with nothing to compile.
//
// Messages in:  {t:"load", version, script, modules?} | {t:"run", id, version, fn, params} | {t:"cancel", id}
// Messages out: {t:"ready"} | {t:"result", id, ok, json?, error?, logs, durationMs} | {t:"uncaught", error}
//               | {t:"memory", externalBytes}
import { AsyncLocalStorage } from "node:async_hooks";
import { Buffer } from "node:buffer";
import diagnosticsChannel from "node:diagnostics_channel";
import dns from "node:dns";
import { existsSync } from "node:fs";
import { join, sep } from "node:path";
import { format } from "node:util";
import v8 from "node:v8";
import { runInNewContext } from "node:vm";
import { createRequire } from "node:module";
import { parentPort, workerData } from "node:worker_threads";
import { explainEgressDenials, installEgressGuard } from "../../egress.mjs";
import { hardenBuiltins } from "./builtins.mjs";

/**
 * vm2, with one change to its sandbox-side bridge: a host object entering the sandbox has each of
 * its own properties checked for a host `Function` constructor, and for a typed array that means
 * every index. A 1 MiB Buffer took 0.6 s to cross, and one of 4 MiB made V8 abort the whole
 * process (a 4M-key array past the heap limit). A typed array's elements are numbers, so views
 * skip that check (the bridge's property reads still filter what they return). `isView` is
 * captured when the bridge is set up, before any function code runs. If this vm2 version lacks
 * the line, vm2 is used as it is, and the operator is told.
 */
function loadVm2() {
  const require = createRequire(import.meta.url);
  const sourcesPath = require.resolve("vm2/lib/sources.js");
  const sources = require(sourcesPath);
  const check = "const dangerous = !isHost && containsDangerousConstructor(other);";
  if (sources["bridge.js"].includes(check)) {
    const bridge = "const fxIsView = ArrayBuffer.isView;\n" + sources["bridge.js"].replace(check, "const dangerous = !isHost && !fxIsView(other) && containsDangerousConstructor(other);");
    require.cache[sourcesPath].exports = Object.freeze({ ...sources, "bridge.js": bridge });
  } else {
    process.emitWarning("vm2's bridge differs from the version this service patches: typed arrays crossing into the sandbox stay slow (see runtime/adapters/vm2/worker.mjs)");
  }
  return require("vm2");
}
const { NodeVM } = loadVm2();

const { builtinModules, bufferAllocLimitBytes, maxExternalBytes, heartbeat, beatMs, maxLogEntries, maxLogBytes } = workerData;

/** The run whose code is executing: console calls, errors and the resources it opens are attributed through it. */
const currentRun = new AsyncLocalStorage();

// ---------------------------------------------------------------------------------------------
// A run ends when it answers: what it opened is closed then (`end`). Timers are tracked inside the
// sandbox (INVOKER); sockets, HTTP requests and fetches here. What module-level code opens while
// loading belongs to no run and stays with the workspace's module.

/** Records a resource of the current run, with how to close it; it forgets it once it closes by itself. */
function own(resource, close) {
  const run = currentRun.getStore();
  if (!run) return;
  if (!active.has(run.id)) {
    // Code of a run that has already answered (a late continuation): it opens nothing that lasts.
    process.nextTick(close, resource);
    return;
  }
  const owned = (run.owned ??= new Map());
  owned.set(resource, close);
  resource.once("close", () => owned.delete(resource));
}

const ignore = () => undefined;

/** A socket the run connected itself. One an `http.Agent` pools is left to its request (below). */
function closeSocket(socket) {
  if (socket.destroyed || socket.listenerCount("agentRemove") > 0) return;
  socket.on("error", ignore);
  socket.destroy();
}

/** An HTTP request still in flight: it and its response end (with no 'error' left unheard). */
function closeRequest(request) {
  if (request.destroyed) return;
  request.on("error", ignore);
  request.res?.on("error", ignore);
  request.destroy();
}

// Before any code is loaded: every connection of this thread meets the egress policy, and the
// builtins lose what would reach past a run (runtime/egress.mjs, ./builtins.mjs).
installEgressGuard(workerData.egress, { onConnect: (socket) => own(socket, closeSocket) });
hardenBuiltins({ maxDecompressedBytes: bufferAllocLimitBytes });
diagnosticsChannel.subscribe("http.client.request.start", ({ request }) => own(request, closeRequest));

/**
 * `fetch` for function code: the run's fetches share one AbortController, aborted when the run
 * ends (a response body still streaming included). undici's pooled sockets serve every run, so
 * its connections are made outside the run's context and never closed as the run's own.
 */
const guardedFetch = explainEgressDenials(fetch);
function runFetch(input, init) {
  const run = currentRun.getStore();
  if (!run) return guardedFetch(input, init);
  if (!active.has(run.id)) return Promise.reject(new Error("fetch refused: this run has already answered"));
  const ended = (run.fetches ??= new AbortController()).signal;
  const signals = [ended, init?.signal, input instanceof Request ? input.signal : undefined].filter(Boolean);
  const signal = signals.length === 1 ? ended : AbortSignal.any(signals);
  return currentRun.exit(() => guardedFetch(input, { ...init, signal }));
}

// ---------------------------------------------------------------------------------------------
// Memory outside the V8 heap (ArrayBuffers, Buffers): the heap limit does not count it, so the
// worker caps its sum, `maxExternalBytes`: synchronously at each allocation of 1 MiB or more
// (`reserve`: Buffer.alloc*, and the sandbox's typed array constructors, see INVOKER), and at every
// heartbeat for whatever got past those (the host ends the worker then). Garbage is collected
// before a verdict, so buffers already dropped do not count. The sum is this thread's own: each
// worker has its own ArrayBuffer allocator, which `process.memoryUsage().arrayBuffers` reads.
const RESERVE_FROM_BYTES = 1024 * 1024;
const collectGarbage = exposeGc();

/**
 * `gc` for this thread: the flag is process-wide, so it is on only while a context picks the
 * function up (contexts made later, the sandbox's, get none). Another worker starting at the same
 * moment may turn it off in between: then try again.
 */
function exposeGc() {
  for (let attempt = 0; attempt < 1000; attempt++) {
    v8.setFlagsFromString("--expose-gc");
    const gc = runInNewContext("typeof gc === 'function' ? gc : undefined");
    v8.setFlagsFromString("--no-expose-gc");
    if (gc) return gc;
  }
  return () => undefined; // a runtime without the flag: dead buffers count until V8 collects them
}

function externalBytes() {
  return process.memoryUsage().arrayBuffers;
}

const pause = new Int32Array(new SharedArrayBuffer(4));

function exceedsExternal(extra) {
  if (externalBytes() + extra <= maxExternalBytes) return false;
  collectGarbage();
  // V8 frees dead ArrayBuffers on a background thread after the collection: give it 10 ms at most.
  for (let waited = 0; externalBytes() + extra > maxExternalBytes; waited++) {
    if (waited === 10) return true;
    Atomics.wait(pause, 0, 0, 1);
  }
  return false;
}

function reserve(bytes) {
  if (typeof bytes !== "number" || !(bytes >= RESERVE_FROM_BYTES) || !exceedsExternal(bytes)) return;
  throw Object.assign(new RangeError(`Cannot allocate ${bytes} bytes: the workspace's memory outside the heap would pass its limit of ${maxExternalBytes} bytes`), { code: "ERR_MEMORY_LIMIT" });
}

for (const name of ["alloc", "allocUnsafe", "allocUnsafeSlow"]) {
  const original = Buffer[name];
  Buffer[name] = function (size) {
    reserve(size);
    return original.apply(this, arguments);
  };
}

// The host reads this to tell a busy worker (an event loop that still turns) from a stuck one.
const beat = new Float64Array(heartbeat);
beat[0] = Date.now();
// Over the limit at two heartbeats in a row: dead buffers have had a collection and a beat to go.
// Function code runs only within runs (what a run left is closed with it), so an idle worker whose
// last look was under the limit is not looked at again: 500 idle workers cost no reads.
let beatsOver = 0;
let memoryReported = false;
let ranSinceBeat = false;
setInterval(() => {
  beat[0] = Date.now();
  if (memoryReported || (active.size === 0 && !ranSinceBeat && beatsOver === 0)) return;
  ranSinceBeat = false;
  beatsOver = exceedsExternal(0) ? beatsOver + 1 : 0;
  if (beatsOver < 2) return;
  memoryReported = true; // once: the host ends this worker
  parentPort.postMessage({ t: "memory", externalBytes: externalBytes() });
}, beatMs);

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
  fetch: runFetch,
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
// Exit listeners are accepted and never called: a run ends when it answers, not with the worker.
// Typed arrays and ArrayBuffers of 1 MiB or more are charged against the workspace's memory
// outside the heap before they are allocated (\`reserve\`, a host function that throws past it).
module.exports = function (currentRunId, reserve) {
  process.on = process.addListener = process.once = function () { return this; };
  // The guarded class shares the original's prototype, so instanceof and subclasses work as before.
  function sized(Ctor, bytes) {
    function Guarded() {
      if (!new.target) throw new TypeError("Constructor " + Ctor.name + " requires 'new'");
      var args = Array.prototype.slice.call(arguments);
      reserve(bytes(args));
      return Reflect.construct(Ctor, args, new.target === Guarded ? Ctor : new.target);
    }
    Reflect.ownKeys(Ctor).forEach(function (key) {
      if (key !== "prototype") Object.defineProperty(Guarded, key, Object.getOwnPropertyDescriptor(Ctor, key));
    });
    Object.setPrototypeOf(Guarded, Object.getPrototypeOf(Ctor));
    Guarded.prototype = Ctor.prototype;
    // \`constructor\` is how species-creating methods (map, slice, ...) find the class.
    Object.defineProperty(Ctor.prototype, "constructor", { value: Guarded, writable: true, configurable: true });
    globalThis[Ctor.name] = Guarded;
  }
  function lengthOf(value) {
    if (typeof value === "number") return value;
    if (value !== null && typeof value === "object" && !(value instanceof ArrayBuffer) && !(typeof SharedArrayBuffer === "function" && value instanceof SharedArrayBuffer)) return Number(value.length) || 0;
    return 0;
  }
  function bufferBytes(args) { return Math.max(Number(args[0]) || 0, Number(args[1] && args[1].maxByteLength) || 0); }
  sized(ArrayBuffer, bufferBytes);
  if (typeof SharedArrayBuffer === "function") sized(SharedArrayBuffer, bufferBytes);
  [Int8Array, Uint8Array, Uint8ClampedArray, Int16Array, Uint16Array, Int32Array, Uint32Array, Float32Array, Float64Array, BigInt64Array, BigUint64Array].forEach(function (Ctor) {
    sized(Ctor, function (args) { return lengthOf(args[0]) * Ctor.BYTES_PER_ELEMENT; });
  });
  var byRun = new Map();
  function tracked(set, clear) {
    return function () {
      var handle = set.apply(this, arguments);
      var id = currentRunId();
      if (id === null) clear(handle); // set by a run that has already answered: never fires
      else if (id !== undefined) {
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
    // First, so that module-level code already meets the tracked timers and guarded constructors.
    const { invoke, endRun } = vm.run(INVOKER, "invoker.js")(runIdForTimers, reserve);
    const factory = vm.run(script, "workspace.js");
    const fns = factory();
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

/** The current run's id for the sandbox's timers: undefined while loading, null once the run has answered. */
function runIdForTimers() {
  const run = currentRun.getStore();
  if (run === undefined) return undefined;
  return active.has(run.id) ? run.id : null;
}

/** A run is over: forget it, clear the timers it left and close what it opened. */
function end(context) {
  active.delete(context.id);
  ranSinceBeat = true;
  context.end?.(context.id);
  context.fetches?.abort(new Error("The run has ended"));
  if (context.owned) for (const [resource, close] of context.owned) close(resource);
  context.owned = undefined;
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
