// The QuickJS engine: one QuickJS runtime + context per workspace (a "sandbox"), holding the
// workspace's generated module, its `cache`, and the globals below. It runs functions, enforces the
// per-run deadline and the memory limit, and answers plain-data outcomes.
//
// Plain JavaScript with no imports on purpose: the same file runs inside a Node worker thread
// (./worker.mjs, loaded by Node as it is) and in-process on runtimes without threads (workerd),
// where the caller brings the QuickJS WebAssembly module.
//
// Runs of one workspace share its sandbox and may overlap (a run awaiting `fetch` does not hold up
// the next). Guest code only ever runs inside an "entry" that belongs to one run: the start of the
// run, one of its timers firing, or one of its fetches settling, each followed by draining the
// promise jobs. Logs written during an entry are that run's, and the entry is interrupted at that
// run's deadline. When a run ends, its pending timers are cleared and its fetches aborted, so no
// guest code runs on behalf of a finished run (a promise they would have settled stays pending).
//
// Limits: a sync loop is interrupted at the deadline (interrupt handler; where the clock stands
// still, after a count of polls: STILL_CLOCK_POLLS_PER_MS); a run that is still
// pending at its deadline is answered by a wall-clock timer; the stack is capped. Memory: built for
// WebAssembly, QuickJS counts 8 bytes per allocation whatever its size (`malloc_usable_size` is
// compiled out), so `setMemoryLimit` only stops single allocations over the limit. The real bound
// is the WebAssembly memory the sandboxes of a module share: each sandbox is charged for the growth
// of that memory its guest code causes, growth past `memoryLimitMb` is refused, and so is growth of
// the whole memory past `sharedMemoryLimitMb`; QuickJS reports a refusal as "out of memory".
// Memory a sandbox frees is reused by any sandbox without a charge (so a workspace can get more
// than its limit when others freed memory), and never returned to the host: the WebAssembly memory
// stays at its high-water mark, at most `sharedMemoryLimitMb`.
// After an interrupt, an out-of-memory error or an engine error the sandbox's state is not trusted:
// it is disposed, its other in-flight runs fail, and the next run gets a fresh one. A long native
// builtin (`new Array(1e8).join("x")`) does not poll the interrupt handler: only the thread that
// hosts the engine can be stopped (see ./workers.ts).

/**
 * @typedef {import("quickjs-emscripten-core").QuickJSWASMModule} QuickJSWASMModule
 * @typedef {import("quickjs-emscripten-core").QuickJSContext} QuickJSContext
 * @typedef {import("quickjs-emscripten-core").QuickJSHandle} QuickJSHandle
 * @typedef {{ level: "log" | "info" | "warn" | "error" | "debug", message: string, timestamp: string }} LogEntry
 * @typedef {{ kind: "function" | "timeout" | "memory", name: string, message: string, stack?: string }} EngineError
 * @typedef {{ ok: true, json: string } | { ok: false, error: EngineError }} EngineResult
 * @typedef {EngineResult & { logs: LogEntry[], durationMs: number }} EngineOutcome
 *
 * @typedef {object} EngineOptions
 * @property {number} memoryLimitMb How much each workspace may grow the WebAssembly memory.
 * @property {number} sharedMemoryLimitMb The most the module's WebAssembly memory may grow to.
 * @property {number} maxStackSizeBytes Stack limit of each runtime (256 KiB or less).
 * @property {string} scriptFilename The filename stack frames of the generated module carry.
 * @property {typeof fetch} [fetch] The host `fetch` the guest's `fetch` calls. @default globalThis.fetch
 * @property {(deadline: number) => void} [onGuestCode] Told the deadline (epoch ms) when guest code
 *   starts running and 0 when it stops, so a watcher on another thread can tell a stuck engine.
 *
 * @typedef {object} EngineRunRequest
 * @property {string} workspaceId
 * @property {string} fn
 * @property {string} paramsJson The parameters, as JSON (parsed inside the guest).
 * @property {number} timeoutMs
 * @property {number} [deadline] Epoch ms; defaults to now + timeoutMs.
 */

const MAX_LOG_ENTRIES = 1000;
const MAX_LOG_BYTES = 1024 * 1024;
/** Pending timers a sandbox may hold: each one is host state the memory limit does not see. */
const MAX_TIMERS = 10_000;
/**
 * Deployed Cloudflare Workers advance `Date.now()` only between I/O, so there a sync loop never sees
 * its deadline pass. While the clock stands still the interrupt handler counts its polls instead: a
 * tight loop polls about 10 times a millisecond (release build, x86-64, Node and workerd alike), so
 * `timeoutMs` times this many polls stand for the timeout; loop bodies that spend longer between
 * polls run longer (a soft bound: there the platform's CPU limit is the hard one). Where the clock
 * moves, the count starts over at every tick and never gets near it.
 */
const STILL_CLOCK_POLLS_PER_MS = 10;
const STILL_CLOCK_MIN_POLLS = 1000;
/** The sandbox whose guest code runs now in this thread: it pays for growing the WebAssembly memory. */
let charged;
const guardedMemories = new WeakSet();

/** Makes growing `memory` count against the running sandbox's limit (once per memory). */
function guardMemoryGrowth(/** @type {WebAssembly.Memory} */ memory) {
  if (guardedMemories.has(memory)) return;
  guardedMemories.add(memory);
  const grow = memory.grow;
  // Emscripten's allocator grows the memory through this method; when it throws, malloc fails.
  memory.grow = (pages) => {
    const sandbox = charged;
    const bytes = pages * 65536;
    if (sandbox && (sandbox.grownBytes + bytes > sandbox.limits.ownBytes || memory.buffer.byteLength + bytes > sandbox.limits.sharedBytes)) {
      sandbox.outOfMemory = true;
      throw new RangeError("the memory limit is reached");
    }
    const previousPages = grow.call(memory, pages);
    if (sandbox) sandbox.grownBytes += bytes;
    return previousPages;
  };
}

const URL_PARTS = ["href", "origin", "protocol", "username", "password", "host", "hostname", "port", "pathname", "search", "hash"];
const SETTABLE_URL_PARTS = new Set(URL_PARTS.filter((part) => part !== "origin"));

/**
 * Guest-side set-up, evaluated once per sandbox: the globals, then `{ load, run }` for the host.
 * `host` holds the host functions; only this closure can reach it. Strings cross the boundary, not
 * objects: parameters and results as JSON, log lines already formatted.
 */
const PRELUDE = String.raw`(function (host) {
"use strict";
const hasOwn = (object, key) => Object.prototype.hasOwnProperty.call(object, key);
const IDENTIFIER = /^[A-Za-z_$][\w$]*$/;

function describe(error) {
  const read = (get, fallback) => { try { const value = get(); return typeof value === "string" ? value : fallback; } catch (e) { return fallback; } };
  if (error === null || (typeof error !== "object" && typeof error !== "function")) return ["Error", "Uncaught " + read(() => String(error), "value"), ""];
  return [read(() => error.name, "Error"), read(() => error.message, read(() => String(error), "")), read(() => error.stack, "")];
}

// Like Node's util.inspect, on one line: strings quoted when nested, depth 2, 100 items.
function inspect(value, depth, seen) {
  if (typeof value === "string") return depth === 0 ? value : "'" + value.replace(/\\/g, "\\\\").replace(/'/g, "\\'").replace(/\n/g, "\\n") + "'";
  if (typeof value === "function") return (/^class\b/.test(Function.prototype.toString.call(value)) ? "[class " : "[Function: ") + (value.name || "(anonymous)") + "]";
  if (typeof value === "bigint") return value + "n";
  if (typeof value === "symbol") return value.toString();
  if (typeof value !== "object") return Object.is(value, -0) ? "-0" : String(value);
  if (value === null) return "null";
  if (value instanceof Error) return depth === 0 && value.stack ? String(value) + "\n" + value.stack.replace(/\n$/, "") : "[" + String(value) + "]";
  if (value instanceof Date) return isNaN(value) ? "Invalid Date" : value.toISOString();
  if (value instanceof RegExp) return String(value);
  if (seen.includes(value)) return "[Circular]";
  if (depth > 2) return Array.isArray(value) ? "[Array]" : "[Object]";
  seen.push(value);
  let parts, prefix = "", open = "{", close = "}";
  const nested = (item) => inspect(item, depth + 1, seen);
  if (Array.isArray(value)) {
    parts = value.slice(0, 100).map(nested);
    if (value.length > 100) parts.push("... " + (value.length - 100) + " more items");
    open = "[";
    close = "]";
  } else if (value instanceof Map) {
    prefix = "Map(" + value.size + ") ";
    parts = [...value].map(([key, item]) => nested(key) + " => " + nested(item));
  } else if (value instanceof Set) {
    prefix = "Set(" + value.size + ") ";
    parts = [...value].map(nested);
  } else {
    const name = Object.getPrototypeOf(value) === null ? "[Object: null prototype]" : value.constructor && value.constructor.name;
    if (name && name !== "Object") prefix = name + " ";
    parts = Object.keys(value).map((key) => (IDENTIFIER.test(key) ? key : nested(key)) + ": " + nested(value[key]));
  }
  seen.pop();
  return prefix + (parts.length === 0 ? open + close : open + " " + parts.join(", ") + " " + close);
}

// console.log's formatting: printf-style placeholders in a first string argument, then the rest.
function format(args) {
  let next = 0;
  const parts = [];
  if (typeof args[0] === "string" && args.length > 1) {
    next = 1;
    parts.push(args[0].replace(/%[sdifjoOc%]/g, (token) => {
      if (token === "%%") return "%";
      if (next >= args.length) return token;
      const arg = args[next++];
      switch (token) {
        case "%s": return typeof arg === "string" ? arg : inspect(arg, 1, []);
        case "%d": return typeof arg === "bigint" ? arg + "n" : String(Number(arg));
        case "%i": return String(parseInt(arg));
        case "%f": return String(parseFloat(arg));
        case "%j": try { return JSON.stringify(arg); } catch (e) { return "[Circular]"; }
        case "%c": return "";
        default: return inspect(arg, 1, []);
      }
    }));
  }
  for (; next < args.length; next++) parts.push(inspect(args[next], 0, []));
  return parts.join(" ");
}

const write = (level) => (...args) => {
  let message;
  try { message = format(args); } catch (error) { message = "[unprintable value: " + describe(error)[1] + "]"; }
  host.log(level, message);
};
globalThis.console = { log: write("log"), info: write("info"), warn: write("warn"), error: write("error"), debug: write("debug"), trace: write("debug"), dir: write("log") };

globalThis.require = function require(name) {
  throw new Error("require('" + String(name) + "') is not available: the quickjs sandbox has no Node builtins or packages");
};

const reportUncaught = (error) => host.uncaught(...describe(error));
globalThis.setTimeout = function setTimeout(callback, delay, ...args) {
  if (typeof callback !== "function") throw new TypeError("The \"callback\" argument must be of type function");
  return host.setTimeout(() => { try { callback(...args); } catch (error) { reportUncaught(error); } }, Number(delay) || 0);
};
globalThis.clearTimeout = function clearTimeout(id) { if (typeof id === "number") host.clearTimeout(id); };
globalThis.queueMicrotask = function queueMicrotask(callback) { Promise.resolve().then(() => callback()).catch(reportUncaught); };
globalThis.structuredClone = function structuredClone(value) { return value === undefined ? undefined : JSON.parse(JSON.stringify(value)); };
globalThis.atob = function atob(data) { return host.atob(String(data)); };
globalThis.btoa = function btoa(data) { return host.btoa(String(data)); };

globalThis.TextEncoder = class TextEncoder {
  get encoding() { return "utf-8"; }
  encode(input = "") {
    const binary = unescape(encodeURIComponent(String(input).toWellFormed()));
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return bytes;
  }
};
globalThis.TextDecoder = class TextDecoder {
  constructor(label = "utf-8") {
    if (!/^utf-?8$/i.test(String(label).trim())) throw new RangeError("The \"" + label + "\" encoding is not supported");
  }
  get encoding() { return "utf-8"; }
  decode(input) {
    if (input === undefined) return "";
    const bytes = ArrayBuffer.isView(input) ? new Uint8Array(input.buffer, input.byteOffset, input.byteLength) : new Uint8Array(input);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 8192) binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 8192));
    return host.utf8Decode(binary);
  }
};

// URL parsing and query encoding are the host's (WHATWG-exact); the guest keeps the state.
const queries = new WeakMap();
const urls = new WeakMap();
const parseQuery = (text) => JSON.parse(host.parseQuery(text));
function parseUrl(href, base, part, value) {
  const json = host.url(href, base, part, value);
  if (!json) throw new TypeError("Invalid URL");
  return JSON.parse(json);
}
function queryPairs(init) {
  if (init instanceof URLSearchParams) return queries.get(init).list.map(([key, value]) => [key, value]);
  if (typeof init !== "object" || init === null) return parseQuery(String(init));
  if (typeof init[Symbol.iterator] !== "function") return Object.keys(init).map((key) => [key, String(init[key])]);
  return [...init].map((pair) => {
    const items = [...pair];
    if (items.length !== 2) throw new TypeError("Each query pair must be an iterable [name, value] tuple");
    return [String(items[0]), String(items[1])];
  });
}
class URLSearchParams {
  constructor(init = "") { queries.set(this, { list: queryPairs(init), url: undefined }); }
  get size() { return queries.get(this).list.length; }
  append(name, value) { queries.get(this).list.push([String(name), String(value)]); this.#changed(); }
  delete(name, value) {
    const state = queries.get(this);
    state.list = state.list.filter(([key, item]) => key !== String(name) || (value !== undefined && item !== String(value)));
    this.#changed();
  }
  get(name) { const pair = queries.get(this).list.find(([key]) => key === String(name)); return pair ? pair[1] : null; }
  getAll(name) { return queries.get(this).list.filter(([key]) => key === String(name)).map((pair) => pair[1]); }
  has(name, value) { return queries.get(this).list.some(([key, item]) => key === String(name) && (value === undefined || item === String(value))); }
  set(name, value) {
    const state = queries.get(this);
    const first = state.list.findIndex(([key]) => key === String(name));
    if (first < 0) state.list.push([String(name), String(value)]);
    else state.list = state.list.filter(([key], i) => key !== String(name) || i === first).map((pair, i) => (i === first ? [pair[0], String(value)] : pair));
    this.#changed();
  }
  sort() { queries.get(this).list.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)); this.#changed(); }
  forEach(callback, thisArg) { for (const [key, value] of queries.get(this).list) callback.call(thisArg, value, key, this); }
  keys() { return queries.get(this).list.map((pair) => pair[0])[Symbol.iterator](); }
  values() { return queries.get(this).list.map((pair) => pair[1])[Symbol.iterator](); }
  entries() { return queries.get(this).list.map(([key, value]) => [key, value])[Symbol.iterator](); }
  [Symbol.iterator]() { return this.entries(); }
  toString() { return host.formatQuery(JSON.stringify(queries.get(this).list)); }
  #changed() {
    const { url } = queries.get(this);
    if (url) urls.get(url).parts = parseUrl(url.href, undefined, "search", this.toString());
  }
}
class URL {
  constructor(url, base) { urls.set(this, { parts: parseUrl(String(url), base === undefined ? undefined : String(base)), params: undefined }); }
  static canParse(url, base) { try { new URL(url, base); return true; } catch (e) { return false; } }
  get searchParams() {
    const state = urls.get(this);
    if (!state.params) {
      state.params = new URLSearchParams(state.parts.search);
      queries.get(state.params).url = this;
    }
    return state.params;
  }
  toString() { return this.href; }
  toJSON() { return this.href; }
}
for (const part of ${JSON.stringify(URL_PARTS)}) {
  Object.defineProperty(URL.prototype, part, {
    get() { return urls.get(this).parts[part]; },
    set: part === "origin" ? undefined : function (value) {
      const state = urls.get(this);
      state.parts = parseUrl(state.parts.href, undefined, part, String(value));
      if (state.params) queries.get(state.params).list = parseQuery(state.parts.search);
    },
    enumerable: true,
    configurable: true,
  });
}
globalThis.URL = URL;
globalThis.URLSearchParams = URLSearchParams;

function headerPairs(headers) {
  if (!headers) return [];
  if (Array.isArray(headers)) return headers.map(([name, value]) => [String(name), String(value)]);
  if (typeof headers.forEach === "function") { const pairs = []; headers.forEach((value, name) => pairs.push([String(name), String(value)])); return pairs; }
  return Object.keys(headers).map((name) => [name, String(headers[name])]);
}
// The response's headers: a plain object of lower-case names, plus Headers' reading methods.
function responseHeaders(pairs) {
  const headers = {};
  for (const [name, value] of pairs) headers[name] = value;
  const entries = () => Object.keys(headers).map((name) => [name, headers[name]])[Symbol.iterator]();
  Object.defineProperties(headers, {
    get: { value: (name) => (hasOwn(headers, String(name).toLowerCase()) ? headers[String(name).toLowerCase()] : null) },
    has: { value: (name) => hasOwn(headers, String(name).toLowerCase()) },
    forEach: { value: (callback, thisArg) => { for (const [name, value] of entries()) callback.call(thisArg, value, name, headers); } },
    entries: { value: entries },
    [Symbol.iterator]: { value: entries },
  });
  return headers;
}
globalThis.fetch = function fetch(input, init = {}) {
  try {
    const url = typeof input === "object" && input !== null && typeof input.url === "string" ? input.url : String(input);
    const headers = headerPairs(init.headers);
    let body = init.body;
    if (body instanceof URLSearchParams) {
      if (!headers.some(([name]) => name.toLowerCase() === "content-type")) headers.push(["content-type", "application/x-www-form-urlencoded;charset=UTF-8"]);
      body = body.toString();
    } else if (body !== undefined && body !== null) {
      body = String(body);
    }
    const request = JSON.stringify({ method: init.method === undefined ? undefined : String(init.method), headers, body });
    return host.fetch(url, request).then((json) => {
      const answer = JSON.parse(json);
      if (answer.error !== undefined) throw new TypeError("fetch failed: " + answer.error);
      let bodyUsed = false;
      const take = () => {
        if (bodyUsed) throw new TypeError("Body is unusable: Body has already been read");
        bodyUsed = true;
        return answer.body;
      };
      return {
        status: answer.status,
        statusText: answer.statusText,
        ok: answer.status >= 200 && answer.status <= 299,
        url: answer.url,
        redirected: answer.redirected,
        headers: responseHeaders(answer.headers),
        get bodyUsed() { return bodyUsed; },
        text: async () => take(),
        json: async () => JSON.parse(take()),
      };
    });
  } catch (error) {
    return Promise.reject(error);
  }
};

let functions;
return {
  load(define) {
    const module = { exports: {} };
    define(module, module.exports, globalThis.require);
    functions = module.exports();
  },
  run(id, name, paramsJson) {
    const report = (error) => host.fail(id, ...describe(error));
    try {
      const fn = hasOwn(functions, name) ? functions[name] : undefined;
      if (typeof fn !== "function") throw new Error("Function '" + name + "' is not defined in this workspace");
      fn(JSON.parse(paramsJson)).then((value) => {
        let json;
        try {
          json = JSON.stringify(value);
        } catch (error) {
          // An engine error (out of memory) is not the result's fault: keep it as it is.
          throw error && error.name === "InternalError" ? error : new TypeError("The function's result is not JSON-serialisable: " + (error && error.message));
        }
        host.done(id, json === undefined ? "null" : json);
      }).catch(report);
    } catch (error) {
      report(error);
    }
  },
};
})`;

/**
 * Checks a function body without running it. Two compilations: the body inside an async arrow
 * function, as the generated module wraps it (for the line of a syntax error); then inside a block
 * labelled with a random name, ending with `break <label>`: that only compiles when the body
 * leaves the parser inside that block of that function, so a body that closes its wrapper
 * (`}); evil(); (async () => {`) is refused. QuickJS's `Function` constructor is no help here: it
 * evaluates the concatenated source, running whatever follows an escape.
 *
 * @param {QuickJSWASMModule} module
 * @param {{ memoryLimitMb: number, maxStackSizeBytes: number }} options
 */
export function createSyntaxChecker(module, { memoryLimitMb, maxStackSizeBytes }) {
  const context = module.newContext();
  context.runtime.setMemoryLimit(memoryLimitMb * 1024 * 1024);
  context.runtime.setMaxStackSize(maxStackSizeBytes);

  /** @param {string} source */
  function compile(source) {
    const result = context.evalCode(source, "body", { type: "global", compileOnly: true });
    if (!result.error) {
      result.value.dispose();
      return undefined;
    }
    const error = context.dump(result.error);
    result.error.dispose();
    return { lineNumber: Number(error?.lineNumber) || 2, message: String(error?.message ?? error) };
  }

  return {
    /**
     * @param {string} body
     * @returns {{ line: number, message: string } | undefined} the body's line (1-based) and the problem
     */
    check(body) {
      const lines = body.split(/\r\n|\r|\n/).length;
      const line = (/** @type {{lineNumber: number}} */ error) => Math.min(Math.max(1, error.lineNumber - 1), lines);
      const syntax = compile("(async () => {\n" + body + "\n})");
      if (syntax) return { line: line(syntax), message: syntax.message };
      const label = "__fx_body_" + Math.random().toString(36).slice(2);
      const escape = compile("(async () => { " + label + ": {\n" + body + "\n;break " + label + "; } })");
      if (escape) return { line: line(escape), message: `${escape.message} (the code must be a function body: it cannot close its wrapper)` };
      return undefined;
    },
    dispose() {
      context.dispose();
    },
  };
}

/**
 * @param {QuickJSWASMModule} module
 * @param {EngineOptions} options
 */
export function createQuickJsEngine(module, options) {
  const { memoryLimitMb, sharedMemoryLimitMb, maxStackSizeBytes, scriptFilename, onGuestCode = () => {} } = options;
  const hostFetch = options.fetch ?? globalThis.fetch;
  const memoryLimitBytes = memoryLimitMb * 1024 * 1024;
  const limits = { ownBytes: memoryLimitBytes, sharedBytes: sharedMemoryLimitMb * 1024 * 1024 };
  guardMemoryGrowth(module.getWasmMemory());

  /** Loaded workspaces: their script (kept to rebuild a sandbox after a reset) and live sandbox. */
  const workspaces = new Map();
  /** Runs in flight, by the caller's id. */
  const runs = new Map();
  let nextTimerId = 1;

  const timeoutError = (run) => ({ kind: "timeout", name: "TimeoutError", message: `Function exceeded its ${run.timeoutMs} ms timeout` });
  const memoryError = () => ({
    kind: "memory",
    name: "MemoryLimitError",
    message: `The function ran out of memory (limit ${memoryLimitMb} MB, ${sharedMemoryLimitMb} MB shared with other workspaces)`,
  });
  const resetError = () => ({
    kind: "function",
    name: "SandboxResetError",
    message: "The workspace's sandbox was reset while this function ran, because another run of it hit a limit; run it again",
  });
  /** @returns {EngineResult} */
  const failure = (error) => ({ ok: false, error });
  /** QuickJS stacks have no `Name: message` line: add it, as V8 does, so stacks read the same in every sandbox. */
  const functionError = (name, message, stack) => ({
    kind: "function",
    name,
    message,
    stack: stack ? `${message ? `${name}: ${message}` : name}\n${stack.trimEnd()}` : undefined,
  });

  function createSandbox(workspaceId, entry) {
    const runtime = module.newRuntime();
    runtime.setMemoryLimit(memoryLimitBytes);
    runtime.setMaxStackSize(maxStackSizeBytes);
    const context = runtime.newContext();
    const sandbox = {
      workspaceId,
      entry,
      runtime,
      context,
      limits,
      /** WebAssembly memory growth charged to this sandbox. */
      grownBytes: 0,
      /** The run whose entry is executing guest code now. */
      owner: undefined,
      runs: new Set(),
      /** @type {Map<number, {run: object, callback: QuickJSHandle, handle: ReturnType<typeof setTimeout>}>} */
      timers: new Map(),
      /** @type {Set<{run: object, deferred: import("quickjs-emscripten-core").QuickJSDeferredPromise, controller: AbortController}>} */
      fetches: new Set(),
      /** The prelude's `{ load, run }`, once installed. */
      api: undefined,
      loaded: false,
      interrupted: false,
      outOfMemory: false,
      retiring: false,
      dead: false,
      /** The clock at the interrupt handler's last poll, and the polls since it last moved (see STILL_CLOCK_POLLS_PER_MS). */
      clockMs: 0,
      stillPolls: 0,
    };
    runtime.setInterruptHandler(() => {
      const run = sandbox.owner;
      if (run === undefined || sandbox.interrupted) return sandbox.interrupted;
      const now = Date.now();
      if (now === sandbox.clockMs) sandbox.stillPolls++;
      else [sandbox.clockMs, sandbox.stillPolls] = [now, 0];
      return (sandbox.interrupted = now > run.deadline || sandbox.stillPolls > Math.max(STILL_CLOCK_MIN_POLLS, run.timeoutMs * STILL_CLOCK_POLLS_PER_MS));
    });
    return sandbox;
  }

  /** Evaluates the prelude with the host functions; answers the failed call's result, if one fails. */
  function installPrelude(sandbox) {
    const { context } = sandbox;
    const host = context.newObject();
    try {
      for (const [name, implementation] of Object.entries(hostFunctions(sandbox))) {
        const fn = context.newFunction(name, implementation);
        try {
          context.setProp(host, name, fn);
        } finally {
          fn.dispose();
        }
      }
      const prelude = context.evalCode(PRELUDE, "prelude.js", { type: "global", strict: true });
      if (prelude.error) return prelude;
      const api = context.callFunction(prelude.value, context.undefined, host);
      prelude.value.dispose();
      if (api.error) return api;
      sandbox.api = { load: context.getProp(api.value, "load"), run: context.getProp(api.value, "run") };
      api.value.dispose();
      return undefined;
    } finally {
      host.dispose();
    }
  }

  /** The functions the prelude calls on the host; each runs inside an entry of `sandbox.owner`. */
  function hostFunctions(sandbox) {
    const { context } = sandbox;
    const text = (handle) => (context.typeof(handle) === "string" ? context.getString(handle) : undefined);
    const ownRun = (idHandle) => {
      const run = runs.get(context.getNumber(idHandle));
      return run?.sandbox === sandbox && !sandbox.interrupted ? run : undefined;
    };
    return {
      log(level, message) {
        const run = sandbox.owner;
        if (run && runs.has(run.id)) record(run, context.getString(level), context.getString(message));
      },
      done(id, json) {
        const run = ownRun(id);
        if (run) finish(run, { ok: true, json: context.getString(json) });
      },
      fail(id, name, message, stack) {
        const run = ownRun(id);
        if (!run) return;
        const [errorName, errorMessage] = [context.getString(name), context.getString(message)];
        if (errorName === "InternalError" && errorMessage === "out of memory") {
          sandbox.outOfMemory = true;
          finish(run, failure(memoryError()));
        } else {
          finish(run, failure(functionError(errorName, errorMessage, context.getString(stack))));
        }
      },
      uncaught(name, message, stack) {
        const run = sandbox.owner;
        if (run && !sandbox.interrupted) finish(run, failure(functionError(context.getString(name), context.getString(message), context.getString(stack))));
      },
      setTimeout(callback, delay) {
        const run = sandbox.owner;
        if (sandbox.timers.size >= MAX_TIMERS) throw new Error(`Too many pending timers (at most ${MAX_TIMERS})`);
        const id = nextTimerId++;
        const timer = { run, callback: callback.dup(), handle: undefined };
        timer.handle = setTimeout(() => {
          enter(run, () => {
            sandbox.timers.delete(id);
            try {
              return context.callFunction(timer.callback, context.undefined);
            } finally {
              timer.callback.dispose();
            }
          });
        }, Math.max(0, context.getNumber(delay)));
        sandbox.timers.set(id, timer);
        return context.newNumber(id);
      },
      clearTimeout(id) {
        const timerId = context.getNumber(id);
        const timer = sandbox.timers.get(timerId);
        if (!timer) return;
        sandbox.timers.delete(timerId);
        clearTimeout(timer.handle);
        timer.callback.dispose();
      },
      fetch(url, request) {
        const run = sandbox.owner;
        const pending = { run, deferred: context.newPromise(), controller: new AbortController() };
        sandbox.fetches.add(pending);
        void fetchAsJson(context.getString(url), JSON.parse(context.getString(request)), pending.controller.signal).then((json) => {
          if (!sandbox.fetches.has(pending)) return;
          enter(run, () => {
            sandbox.fetches.delete(pending);
            try {
              const answer = guestString(sandbox, json);
              pending.deferred.resolve(answer);
              answer.dispose();
            } finally {
              pending.deferred.dispose();
            }
          });
        });
        return pending.deferred.handle;
      },
      url(href, base, part, value) {
        try {
          const url = new URL(context.getString(href), text(base));
          const partName = text(part);
          if (partName !== undefined && SETTABLE_URL_PARTS.has(partName)) url[partName] = context.getString(value);
          return context.newString(JSON.stringify(Object.fromEntries(URL_PARTS.map((name) => [name, url[name]]))));
        } catch {
          return context.newString("");
        }
      },
      parseQuery: (query) => context.newString(JSON.stringify([...new URLSearchParams(context.getString(query))])),
      formatQuery: (pairs) => context.newString(new URLSearchParams(JSON.parse(context.getString(pairs))).toString()),
      atob: (data) => context.newString(atob(context.getString(data))),
      btoa: (data) => context.newString(btoa(context.getString(data))),
      utf8Decode: (binary) => context.newString(new TextDecoder().decode(Uint8Array.from(context.getString(binary), (c) => c.charCodeAt(0)))),
    };
  }

  /** A guest string the host creates; at the memory limit QuickJS hands back an exception instead. */
  function guestString(sandbox, value) {
    const handle = sandbox.context.newString(value);
    if (sandbox.context.typeof(handle) === "string") return handle;
    handle.dispose();
    sandbox.outOfMemory = true;
    throw new Error("out of memory");
  }

  /** The guest's answer to a fetch: the response with its whole body as text, or the failure. */
  async function fetchAsJson(url, request, signal) {
    try {
      const response = await hostFetch(url, { method: request.method, headers: request.headers, body: request.body, signal });
      const body = await readText(response);
      return JSON.stringify({
        status: response.status,
        statusText: response.statusText,
        url: response.url,
        redirected: response.redirected,
        headers: [...response.headers],
        body,
      });
    } catch (error) {
      return JSON.stringify({ error: String(error?.cause?.message ?? error?.message ?? error) });
    }
  }

  /** A body larger than the sandbox's memory could never reach it: stop reading there. */
  async function readText(response) {
    if (!response.body) return "";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let text = "";
    let bytes = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) return text + decoder.decode();
      bytes += value.byteLength;
      if (bytes > memoryLimitBytes) {
        await reader.cancel();
        throw new Error(`the response body exceeds the sandbox's ${memoryLimitMb} MB memory limit`);
      }
      text += decoder.decode(value, { stream: true });
    }
  }

  function record(run, level, message) {
    if (run.logBytes > MAX_LOG_BYTES) return;
    if (run.logs.length >= MAX_LOG_ENTRIES) {
      run.logBytes = Infinity;
      run.logs.push({ level: "warn", message: `[logs truncated after ${MAX_LOG_ENTRIES} entries]`, timestamp: new Date().toISOString() });
      return;
    }
    run.logBytes += message.length;
    const text = run.logBytes > MAX_LOG_BYTES ? `${message.slice(0, 1024)}… [logs truncated after ${MAX_LOG_BYTES} bytes]` : message;
    run.logs.push({ level, message: text, timestamp: new Date().toISOString() });
  }

  /**
   * Runs guest code on behalf of `run`: `call` enters the context, then the promise jobs it queued
   * are drained. Returns nothing: what happened reaches the runs through `finish`.
   * @param {() => import("quickjs-emscripten-core").QuickJSContextResult<QuickJSHandle> | void} call
   */
  function enter(run, call) {
    const { sandbox } = run;
    if (!runs.has(run.id)) return;
    if (Date.now() >= run.deadline) return finish(run, failure(timeoutError(run)));
    sandbox.owner = run;
    sandbox.stillPolls = 0;
    charged = sandbox;
    onGuestCode(run.deadline);
    let escaped;
    try {
      escaped = takeError(sandbox, call()) ?? takeError(sandbox, sandbox.runtime.executePendingJobs());
    } catch (error) {
      // The host side failed while the context was in use (at the memory limit, most often).
      escaped = { name: "InternalError", message: String(error?.message ?? error) };
    } finally {
      sandbox.owner = undefined;
      charged = undefined;
      onGuestCode(0);
    }
    if (sandbox.interrupted) reset(sandbox, run, timeoutError(run));
    else if (sandbox.outOfMemory || escaped?.message === "out of memory") reset(sandbox, run, memoryError());
    // Guest-side code catches what functions throw: what escapes it is the engine's own failure.
    else if (escaped) reset(sandbox, run, functionError(escaped.name, escaped.message));
    else if (sandbox.retiring && sandbox.runs.size === 0) destroy(sandbox);
  }

  /** Disposes a call's result; answers the name and message of the error it carries, if any. */
  function takeError(sandbox, result) {
    if (!result) return undefined;
    if (!result.error) {
      if (typeof result.value === "object") result.value.dispose();
      return undefined;
    }
    const { context } = sandbox;
    const read = (key) => {
      const handle = context.getProp(result.error, key);
      const value = context.typeof(handle) === "string" ? context.getString(handle) : "";
      handle.dispose();
      return value;
    };
    const error = { name: read("name") || "Error", message: read("message") };
    result.error.dispose();
    return error;
  }

  /** Starts a run: sets up a new sandbox first (prelude, then module), then calls the function. */
  function start(run, fn, paramsJson) {
    const { sandbox } = run;
    const { context } = sandbox;
    if (!sandbox.api) {
      const failed = installPrelude(sandbox);
      if (failed) return failed;
    }
    const { api } = sandbox;
    if (!sandbox.loaded) {
      // On the script's first line, so the module's line numbers stay the generated script's.
      const define = context.evalCode(`(function (module, exports, require) {${sandbox.entry.script}\n})`, scriptFilename, { type: "global" });
      if (define.error) return define;
      const loaded = context.callFunction(api.load, context.undefined, define.value);
      define.value.dispose();
      if (loaded.error) return loaded;
      loaded.value.dispose();
      sandbox.loaded = true;
    }
    const args = [context.newNumber(run.id), guestString(sandbox, fn), guestString(sandbox, paramsJson)];
    try {
      return context.callFunction(api.run, context.undefined, args);
    } finally {
      for (const arg of args) arg.dispose();
    }
  }

  /** Ends a run (once): clears what it left pending in its sandbox and answers its caller. */
  function finish(run, result) {
    if (!runs.delete(run.id)) return;
    clearTimeout(run.deadlineTimer);
    const { sandbox } = run;
    sandbox.runs.delete(run);
    for (const [id, timer] of sandbox.timers) {
      if (timer.run !== run) continue;
      sandbox.timers.delete(id);
      clearTimeout(timer.handle);
      timer.callback.dispose();
    }
    for (const pending of sandbox.fetches) {
      if (pending.run !== run) continue;
      sandbox.fetches.delete(pending);
      pending.controller.abort();
      pending.deferred.dispose();
    }
    // Inside an entry the context is in use: the entry disposes the sandbox when it is done.
    if (sandbox.owner === undefined && sandbox.retiring && sandbox.runs.size === 0) destroy(sandbox);
    run.resolve({ ...result, logs: run.logs, durationMs: performance.now() - run.started });
  }

  /** A limit was hit: `run` fails with `error`, the sandbox is disposed, its other runs fail. */
  function reset(sandbox, run, error) {
    finish(run, failure(error));
    destroy(sandbox, resetError());
  }

  function destroy(sandbox, error) {
    if (sandbox.dead) return;
    sandbox.dead = true;
    for (const run of [...sandbox.runs]) finish(run, failure(error));
    if (sandbox.entry.sandbox === sandbox) sandbox.entry.sandbox = undefined;
    sandbox.api?.load.dispose();
    sandbox.api?.run.dispose();
    sandbox.context.dispose();
    sandbox.runtime.dispose();
  }

  /** No new runs: the sandbox is disposed once its runs are done. */
  function retire(sandbox) {
    sandbox.retiring = true;
    if (sandbox.runs.size === 0) destroy(sandbox);
  }

  return {
    /** Loads (or replaces) a workspace's generated module; idempotent by version. */
    load(/** @type {string} */ workspaceId, /** @type {string} */ version, /** @type {string} */ script) {
      const entry = workspaces.get(workspaceId);
      if (entry?.version === version) return;
      if (entry?.sandbox) retire(entry.sandbox);
      workspaces.set(workspaceId, { version, script, sandbox: undefined });
    },

    /**
     * Runs one function of a loaded workspace. Failures of the function are outcomes; a workspace
     * that was never loaded is the caller's error and throws.
     * @param {number} id unique among the runs in flight; `cancel` takes it
     * @param {EngineRunRequest} request
     * @returns {Promise<EngineOutcome>}
     */
    run(id, { workspaceId, fn, paramsJson, timeoutMs, deadline = Date.now() + timeoutMs }) {
      const entry = workspaces.get(workspaceId);
      if (!entry) return Promise.reject(new Error(`Workspace '${workspaceId}' is not loaded`));
      return new Promise((resolve) => {
        const sandbox = (entry.sandbox ??= createSandbox(workspaceId, entry));
        const run = { id, sandbox, deadline, timeoutMs, started: performance.now(), logs: [], logBytes: 0, resolve, deadlineTimer: undefined };
        runs.set(id, run);
        sandbox.runs.add(run);
        run.deadlineTimer = setTimeout(() => finish(run, failure(timeoutError(run))), Math.max(0, deadline - Date.now()));
        enter(run, () => start(run, fn, paramsJson));
      });
    },

    /** Answers a run as timed out now (its caller gave up); its sandbox lives on. */
    cancel(/** @type {number} */ id) {
      const run = runs.get(id);
      if (run) finish(run, failure(timeoutError(run)));
    },

    unload(/** @type {string} */ workspaceId) {
      const entry = workspaces.get(workspaceId);
      if (!entry) return;
      workspaces.delete(workspaceId);
      if (entry.sandbox) retire(entry.sandbox);
    },

    dispose() {
      for (const entry of workspaces.values()) {
        if (entry.sandbox) destroy(entry.sandbox, { kind: "function", name: "AdapterDisposedError", message: "The sandbox was shut down" });
      }
      workspaces.clear();
    },

    stats() {
      let sandboxes = 0;
      for (const entry of workspaces.values()) if (entry.sandbox) sandboxes++;
      return { workspaces: workspaces.size, sandboxes, runs: runs.size };
    },
  };
}
