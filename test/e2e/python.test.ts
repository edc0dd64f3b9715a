/**
 * Python functions end to end: the built service over real HTTP, with the real bundled Python API it
 * starts itself (no PYTHON_API_URL), no mocks. Covers SPEC §5 and issue 4's "what must work": mixed
 * Node/Python workspaces, Python calling Python, parameters, cache, logs, blocked imports, user
 * tracebacks, timeouts while other runs go on, killed kernels replaced, one kernel process per
 * workspace (a workspace cannot reach another's `cache`), and the Python API down.
 *
 * Processes are found by parentage only (the service's child `server.py`, then its `kernel.py`
 * children): other servers run on the same machine, so nothing here ever signals by name.
 */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { crc32 } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, startServer, type RunningServer } from "./harness.ts";
import { hasPython } from "../fixtures/python.ts";


const POOL_SIZE = 2;
const PYTHON_TIMEOUT_MS = 1500;

/**
 * The kernel a workspace was pinned to before each workspace got a kernel process of its own
 * (`crc32(workspace) % KERNEL_POOL_SIZE`). The tests pick ids that shared one then: a Python API
 * that put them in one process again fails them.
 */
const oldKernelOf = (workspace: string) => crc32(Buffer.from(workspace, "utf8")) % POOL_SIZE;

/** `base-N`: the first such id that would have shared `other`'s kernel under the old pinning. */
function idSharingOldKernel(base: string, other: string): string {
  for (let i = 1; ; i++) {
    const id = `${base}-${i}`;
    if (oldKernelOf(id) === oldKernelOf(other)) return id;
  }
}

/** A function that returns the pid of the kernel process it runs in. */
const PID = "import tempfile\nreturn tempfile._os.getpid()";

/** Direct children of `pid` whose command line contains `marker`. */
function childrenOf(pid: number, marker: string): number[] {
  let out = "";
  try {
    out = execFileSync("ps", ["-o", "pid=,args=", "--ppid", String(pid)], { encoding: "utf8" });
  } catch {
    return []; // ps exits 1 when there is none
  }
  return out
    .split("\n")
    .map((line) => /^\s*(\d+)\s+(.*)$/.exec(line))
    .filter((m): m is RegExpExecArray => m !== null && m[2].includes(marker))
    .map((m) => Number(m[1]));
}

/** Whether `pid` still runs: neither gone nor a zombie (a killed process is a zombie until reaped). */
function isRunning(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3) !== "Z";
  } catch {
    return false;
  }
}

async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await condition()) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
}

const py = (code: string, parameters?: Record<string, unknown>) => ({ code, language: "python", ...(parameters && { parameters }) });

describe.runIf(hasPython)("Python functions with the bundled Python API", () => {
  let server: RunningServer;
  /** The bundled Python API's process (the service's child), and where it listens. */
  let apiPid: number;
  let apiUrl: string;
  const kernels = () => childrenOf(apiPid, "kernel.py");
  const health = async () =>
    (await fetch(`${apiUrl}/v1/health`)).json() as Promise<{ kernels: number; poolSize: number; workspaceKernels: number; spare: number; busy: number; restarts: number }>;

  beforeAll(async () => {
    server = await startServer({ PYTHON_FUNCTIONS_RUN_TIMEOUT: String(PYTHON_TIMEOUT_MS), KERNEL_POOL_SIZE: String(POOL_SIZE), FUNCTIONS_RUN_TIMEOUT: "5000" });
    const apis = childrenOf(server.process.pid!, "server.py");
    expect(apis, server.output()).toHaveLength(1);
    apiPid = apis[0];
    apiUrl = /"msg":"Python API started","url":"(http:[^"]+)"/.exec(server.output())![1];
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("starts the bundled Python API with one spare kernel and KERNEL_POOL_SIZE run slots", async () => {
    expect(await health()).toMatchObject({ healthy: true, protocol: 1, kernels: POOL_SIZE, poolSize: POOL_SIZE, kernelsMax: 64, workspaceKernels: 0, spare: 1 });
    expect(kernels()).toHaveLength(1); // the spare: a kernel per workspace comes with its first run
  });

  it("gives each workspace a kernel process of its own, the spare first", async () => {
    const first = "py-own";
    const second = idSharingOldKernel("py-own", first);
    const spare = kernels();
    expect(spare).toHaveLength(1);
    for (const id of [first, second]) await server.deploy(id, { functions: { pid: py(PID) } });
    const pidFirst = (await server.run(first, "pid")).body.result;
    expect(pidFirst).toBe(spare[0]); // the spare, taken: no process start on the first run
    const pidSecond = (await server.run(second, "pid")).body.result;
    expect(pidSecond).not.toBe(pidFirst);
    expect(kernels()).toEqual(expect.arrayContaining([pidFirst, pidSecond]));
    expect((await server.run(first, "pid")).body.result).toBe(pidFirst);
    expect((await health()).workspaceKernels).toBe(2);
  });

  it("a workspace's function cannot read or change another workspace's `cache`, by any route", async () => {
    const victim = "py-vault";
    const attacker = idSharingOldKernel("py-thief", victim); // once on the victim's kernel
    const secret = `s3cret-${process.pid}-${Date.now()}`;
    await server.deploy(victim, {
      functions: {
        keep: py("import tempfile, pathlib\ncache['secret'] = secret\npathlib.Path(tempfile.gettempdir(), 'secret.txt').write_text(secret)\nreturn 'kept'", { secret: {} }),
        read: py("import tempfile\nreturn {'cache': dict(cache), 'pid': tempfile._os.getpid()}"),
      },
    });
    expect((await server.run(victim, "keep", { secret })).body.result).toBe("kept");
    const before = (await server.run(victim, "read")).body.result;
    expect(before.cache).toEqual({ secret });

    const attack = [
      "import json, pathlib, tempfile, glob",
      "sys = pathlib.sys",
      "os = tempfile._os",
      "out = {}",
      "def attempt(name, fn):",
      "    try:",
      "        out[name] = 'ok: ' + repr(fn())",
      "    except BaseException as e:",
      "        out[name] = type(e).__name__ + ': ' + str(e)",
      // The kernel's own objects, up the stack: its workspaces, their namespaces and caches.
      "def frames():",
      "    found = {}",
      "    f = sys._getframe()",
      "    while f is not None:",
      "        for value in list(f.f_locals.values()) + list(f.f_globals.values()):",
      "            spaces = getattr(value, 'workspaces', None)",
      "            if isinstance(spaces, dict):",
      "                for ws_id, ws in spaces.items():",
      "                    found.setdefault(ws_id, dict(ws.globals.get('cache', {})))",
      "                    ws.globals.get('cache', {})['secret'] = 'stolen'",
      "        f = f.f_back",
      "    return found",
      "attempt('frames', frames)",
      // Everything the kernel's main module holds, and its classes patched for later runs.
      "main = sys.modules['__main__']",
      "attempt('main_module', lambda: {k: repr(v)[:200] for k, v in vars(main).items()})",
      "def patch():",
      "    real = main.Kernel.handle",
      "    def handle(self, req):",
      "        for ws in self.workspaces.values():",
      "            ws.globals['cache']['secret'] = 'stolen'",
      "        return real(self, req)",
      "    main.Kernel.handle = handle",
      "    main.Workspace.__init__ = lambda *a, **k: None",
      "    return 'patched'",
      "attempt('patch_kernel', patch)",
      "attempt('module_global', lambda: setattr(json, 'STOLEN', cache) or setattr(sys.modules['builtins'], 'STOLEN', cache))",
      "attempt('gc', lambda: [o for o in sys.modules['gc'].get_objects() if isinstance(o, dict) and 'secret' in o])",
      "attempt('all_modules', lambda: [n for n, m in list(sys.modules.items()) if 'secret' in repr(getattr(m, '__dict__', {}))[:100000]])",
      // Other processes and their files: the victim's scratch directory, memory, environment.
      "attempt('scratch_dirs', lambda: glob.glob(os.path.join(os.path.dirname(tempfile.gettempdir()), 'python-api-kernel-*', '*')))",
      "attempt('siblings', lambda: sorted(os.listdir(os.path.dirname(tempfile.gettempdir()))))",
      "attempt('proc', lambda: sorted(os.listdir('/proc')))",
      "attempt('proc_environ', lambda: pathlib.Path(f'/proc/{victim}/environ').read_bytes())",
      "attempt('proc_mem', lambda: pathlib.Path(f'/proc/{victim}/mem').read_bytes()[:1])",
      "attempt('proc_cwd', lambda: os.listdir(f'/proc/{victim}/cwd'))",
      "attempt('signal', lambda: os.kill(victim, 9))",
      "return out",
    ].join("\n");
    await server.deploy(attacker, { functions: { attack: py(attack, { victim: { type: "number" } }) } });
    const stolen = await server.run(attacker, "attack", { victim: before.pid });
    expect(stolen.status, JSON.stringify(stolen.body)).toBe(200);
    const found: Record<string, string> = stolen.body.result;
    expect(JSON.stringify(found)).not.toContain(secret);
    expect(found.frames).toBe(`ok: {'${attacker}': {}}`); // its own kernel holds its own workspace only
    expect(found.patch_kernel).toBe("ok: 'patched'"); // its own process: patched, and only that
    expect(found.gc).toMatch(/^PermissionError: /);
    for (const name of ["scratch_dirs", "siblings", "proc"]) expect(found[name], name).not.toMatch(/^ok: \[.+\]$/s);
    for (const name of ["proc_environ", "proc_mem", "proc_cwd", "signal"]) expect(found[name], name).toMatch(/^PermissionError: /);

    // The victim reads its cache back unchanged, from the same process: nothing reached it.
    const after = await server.run(victim, "read");
    expect(after.status).toBe(200);
    expect(after.body.result).toEqual(before);
    expect((await server.run(victim, "keep", { secret })).body.result).toBe("kept"); // its kernel is not patched
  });

  it("confines its kernels: Landlock where this system has it (the health check says which layer holds)", async () => {
    // Asked of the system directly, not of the Python API: a kernel that silently went without Landlock fails here.
    const probe = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nlibc.syscall.restype = ctypes.c_long\nprint(max(libc.syscall(444, None, 0, 1), 0) if os.uname().machine in ('x86_64', 'aarch64') else 0)";
    const abi = Number(execFileSync("python3", ["-c", probe], { encoding: "utf8" }).trim());
    expect(((await health()) as { confinement?: string }).confinement).toBe(abi >= 1 ? `landlock-abi-${abi}` : "audit-hook");
    await server.deploy("py-confined", {
      functions: { scratch: py("import tempfile, pathlib\np = pathlib.Path(tempfile.gettempdir(), 'note.txt')\np.write_text('kept')\nreturn p.read_text()"), etc: py("import pathlib\nreturn pathlib.Path('/etc/passwd').read_text()") },
    });
    expect((await server.run("py-confined", "scratch")).body.result).toBe("kept");
    const refused = await server.run("py-confined", "etc");
    expect(refused.status).toBe(500);
    expect(refused.body.message).toMatch(/^PermissionError: reading '\/etc\/passwd' is not allowed in functions/);
  });

  it("runs Node and Python functions of one workspace, and reads both back", async () => {
    const body = {
      functions: {
        nodeHello: { code: 'return "Hello from Node, " + name;', parameters: { name: { type: "string" } } },
        pyHello: py('return f"Hello from Python, {name}"', { name: { type: "string" } }),
      },
    };
    expect((await server.deploy("mixed", body)).status).toBe(200);
    const node = await server.run("mixed", "nodeHello", { name: "a" });
    expect(node.status).toBe(200);
    expect(node.body.result).toBe("Hello from Node, a");
    const python = await server.run("mixed", "pyHello", { name: "b" });
    expect(python.status).toBe(200);
    expect(python.body).toMatchObject({ result: "Hello from Python, b", logs: [] });
    expect(typeof python.body.duration).toBe("number");
    const read = await server.request("GET", "/v2/functions/mixed");
    expect(read.status).toBe(200);
    expect(read.body.functions).toEqual(body.functions);
  });

  it("rejects at deploy, with a 400 naming the offender, names Python cannot use", async () => {
    const reply = await server.deploy("py-names", { functions: { f: py("return 1", { from: { type: "string" } }), sum: py("return 2") } });
    expect(reply.status).toBe(400);
    expect(reply.body.error).toBe("RequestValidationError");
    expect(reply.body.details).toEqual([
      { path: "functions.f.parameters.from", message: "Python parameter name 'from' is a Python keyword" },
      { path: "functions.sum", message: "Python function name 'sum' would shadow a Python builtin in every function of the workspace" },
    ]);
    expect((await server.request("GET", "/v2/functions/py-names")).status).toBe(404); // nothing stored
  });

  it("Python functions call each other by name, with the callee's defaults", async () => {
    await server.deploy("py-calls", {
      functions: {
        funcA: py('return "world"'),
        funcB: py('return "hello " + funcA()'),
        greet: py("return greeting + ' ' + who", { greeting: { default: "hi" }, who: { default: "there" } }),
        callGreet: py("return [greet(), greet(who='you'), greet('yo', 'me')]"),
      },
    });
    expect((await server.run("py-calls", "funcB")).body.result).toBe("hello world");
    expect((await server.run("py-calls", "callGreet")).body.result).toEqual(["hi there", "hi you", "yo me"]);
  });

  it("passes values as sent, ignores undeclared parameters and applies defaults", async () => {
    await server.deploy("py-params", {
      functions: {
        echo: py("return {'flag': flag, 'obj': obj, 'missing': missing, 'nothing': nothing}", {
          flag: { type: "boolean" },
          obj: { type: "object", default: "" },
          missing: { default: 7 },
          nothing: {},
        }),
        append: py("items.append(1)\nreturn items", { items: { type: "array", default: [] } }),
        older: py("result = value * 2", { value: { type: "number", default: 21 } }),
      },
    });
    const reply = await server.run("py-params", "echo", { flag: "false", obj: [1, 2], extra: true });
    expect(reply.status).toBe(200);
    expect(reply.body.result).toEqual({ flag: "false", obj: [1, 2], missing: 7, nothing: null });
    expect((await server.run("py-params", "echo", { missing: null })).body.result).toEqual({ flag: null, obj: "", missing: null, nothing: null });
    expect((await server.request("POST", "/v2/functions/py-params/run/echo")).body.result.missing).toBe(7); // no body at all
    // A mutable default is a fresh copy on every run.
    expect((await server.run("py-params", "append")).body.result).toEqual([1]);
    expect((await server.run("py-params", "append")).body.result).toEqual([1]);
    // The older style: a body that assigns `result` and does not return gives `result`.
    expect((await server.run("py-params", "older")).body.result).toBe(42);
  });

  it("shares `cache` between the functions of a workspace and across runs, not across workspaces", async () => {
    const body = {
      functions: {
        funcA: py("cache['counter'] = cache.get('counter', 0) + 1\nreturn cache['counter']"),
        funcB: py("return 'Counter : ' + str(cache['counter'])"),
      },
    };
    await server.deploy("py-cache", body);
    await server.deploy("py-cache-other", body);
    expect((await server.run("py-cache", "funcA")).body.result).toBe(1);
    expect((await server.run("py-cache", "funcA")).body.result).toBe(2);
    expect((await server.run("py-cache", "funcB")).body.result).toBe("Counter : 2");
    expect((await server.run("py-cache-other", "funcA")).body.result).toBe(1);
  });

  it("a redeploy takes effect on the very next run, with a fresh cache", async () => {
    await server.deploy("py-redeploy", { functions: { f: py("cache['n'] = cache.get('n', 0) + 1\nreturn ['v1', cache['n']]") } });
    expect((await server.run("py-redeploy", "f")).body.result).toEqual(["v1", 1]);
    expect((await server.run("py-redeploy", "f")).body.result).toEqual(["v1", 2]);
    await server.deploy("py-redeploy", { functions: { f: py("cache['n'] = cache.get('n', 0) + 1\nreturn ['v2', cache['n']]") } });
    expect((await server.run("py-redeploy", "f")).body.result).toEqual(["v2", 1]);
  });

  it("captures print, logging and warnings into logs, in order, with levels and timestamps", async () => {
    await server.deploy("py-logs", {
      functions: {
        logs: py(
          [
            "import logging, warnings",
            "print('hello', 42, {'a': 1})",
            "logging.info('info %s', 'arg')",
            "logging.warning('careful')",
            "logging.error('bad')",
            "logging.debug('dbg')",
            "logging.getLogger('mine').info('named')",
            "warnings.warn('old')",
            "return 1",
          ].join("\n"),
        ),
        failing: py("print('before')\nraise Exception('after')"),
      },
    });
    const reply = await server.run("py-logs", "logs");
    expect(reply.status).toBe(200);
    expect(reply.body.logs.map((entry: { level: string; message: string }) => [entry.level, entry.message])).toEqual([
      ["log", "hello 42 {'a': 1}"],
      ["info", "info arg"],
      ["warn", "careful"],
      ["error", "bad"],
      ["debug", "dbg"],
      ["info", "named"],
      ["warn", "UserWarning: old"],
    ]);
    for (const entry of reply.body.logs) expect(new Date(entry.timestamp).toISOString()).toBe(entry.timestamp);
    // Runs do not share logs, and a failed run keeps what it logged before failing.
    const failed = await server.run("py-logs", "failing");
    expect(failed.status).toBe(500);
    expect(failed.body.logs.map((entry: { message: string }) => entry.message)).toEqual(["before"]);
  });

  it("refuses blocked imports with a 500 FunctionError whose ImportError names the module", async () => {
    await server.deploy("py-imports", {
      functions: {
        useOs: py("import os\nreturn os.getcwd()"),
        useSubprocess: py("from subprocess import run\nreturn 1"),
        allowed: py("import json, math\nfrom collections import Counter\nreturn json.dumps(Counter('aab')['a'] + math.floor(1.5))"),
      },
    });
    for (const [fn, module] of [["useOs", "os"], ["useSubprocess", "subprocess"]]) {
      const reply = await server.run("py-imports", fn);
      expect(reply.status, fn).toBe(500);
      expect(reply.body.error).toBe("FunctionError");
      expect(reply.body.details.name).toBe("ImportError");
      expect(reply.body.details.message).toContain(`'${module}'`);
      expect(reply.body.message).toMatch(new RegExp(`^ImportError: .*'${module}' is not allowed`));
    }
    expect((await server.run("py-imports", "allowed")).body.result).toBe("3");
  });

  it("a user error is a 500 FunctionError whose stack shows the user's function and lines, and no server paths", async () => {
    const code = ["def helper(x):", "    return 10 / x", "", "total = 0", "return helper(total)"].join("\n");
    await server.deploy("py-error", { functions: { divide: py(code) } });
    const reply = await server.run("py-error", "divide");
    expect(reply.status).toBe(500);
    expect(reply.body).toMatchObject({ error: "FunctionError", message: "ZeroDivisionError: division by zero", details: { name: "ZeroDivisionError", message: "division by zero" } });
    const stack: string = reply.body.details.stack;
    expect(stack).toContain('File "divide", line 5, in divide');
    expect(stack).toContain("    return helper(total)");
    expect(stack).toContain('File "divide", line 2, in helper');
    expect(stack).toContain("    return 10 / x");
    expect(stack).not.toMatch(/\.py\b|\/(work|home|usr|tmp)\/|runtime|server|kernel/);
    expect(typeof reply.body.duration).toBe("number");
  });

  it("a body that does not compile is rejected at deploy, naming the function and line, and nothing is stored", async () => {
    const deploy = await server.deploy("py-syntax", { functions: { broken: py("x = 1\nif x\n    return 2"), fine: py("return 'fine'") } });
    expect(deploy.status).toBe(400);
    expect(deploy.body.error).toBe("RequestValidationError");
    expect(deploy.body.details).toEqual([{ path: "functions.broken.code", message: expect.stringMatching(/function 'broken', line 2/) }]);
    expect((await server.request("GET", "/v2/functions/py-syntax")).status).toBe(404);
  });

  it("a deploy goes on when the Python API cannot check it (its runs answer 502 while the API is down)", async () => {
    const down = await startServer({ PYTHON_API_URL: `http://127.0.0.1:${await freePort()}` });
    try {
      expect((await down.deploy("py-unchecked", { functions: { broken: py("if x\n    return 2") } })).status).toBe(200);
      expect((await down.run("py-unchecked", "broken")).status).toBe(502);
    } finally {
      await down.stop();
    }
  });

  it("a run that exceeds PYTHON_FUNCTIONS_RUN_TIMEOUT is a 504 TimeoutError, while other workspaces are served; then its workspace works again", async () => {
    const spinning = "py-spin";
    const other = idSharingOldKernel("py-busy-other", spinning); // once queued behind the loop, now on its own kernel
    await server.deploy(spinning, { functions: { spin: py("while True:\n    pass"), ok: py("return 'ok'") } });
    await server.deploy(other, { functions: { quick: py("return n + 1", { n: { type: "number" } }), node: { code: "return 'node';" } } });
    expect((await server.run(other, "quick", { n: 0 })).status).toBe(200); // loaded: what follows is a warm run
    expect((await server.run(other, "node")).status).toBe(200); // its Node worker too (a first Node run starts one)
    expect((await server.run(spinning, "ok")).status).toBe(200); // its kernel too: no process starts during the loop
    expect(await waitFor(async () => (await health()).spare === 1, 5000)).toBe(true); // nor a spare
    const restartsBefore = (await health()).restarts;

    const started = performance.now();
    const spin = server.run(spinning, "spin").then((reply) => ({ reply, ms: performance.now() - started }));
    await new Promise((r) => setTimeout(r, 200)); // the loop is running on its kernel
    const quickStarted = performance.now();
    const [quick, node] = await Promise.all([server.run(other, "quick", { n: 41 }), server.run(other, "node")]);
    const quickMs = performance.now() - quickStarted;
    expect(quick.status).toBe(200);
    expect(quick.body.result).toBe(42);
    expect(node.body.result).toBe("node");
    expect(quickMs).toBeLessThan(500);

    const { reply, ms } = await spin;
    expect(reply.status).toBe(504);
    expect(reply.body).toMatchObject({ error: "TimeoutError", logs: [] });
    expect(reply.body.message).toContain(`${PYTHON_TIMEOUT_MS} ms`);
    expect(ms).toBeGreaterThanOrEqual(PYTHON_TIMEOUT_MS - 50);
    expect(ms).toBeLessThan(PYTHON_TIMEOUT_MS + 1000); // the Python API's own deadline, not the service's grace
    expect(quickStarted - started).toBeLessThan(ms); // the other run finished while the loop still ran

    // The killed kernel was replaced: the same workspace runs again at once.
    const again = await server.run(spinning, "ok");
    expect(again.status).toBe(200);
    expect(again.body.result).toBe("ok");
    expect((await health()).restarts).toBe(restartsBefore + 1);
  }, 20_000);

  it("kernels killed while idle are replaced: the next run works (with a fresh cache)", async () => {
    const other = idSharingOldKernel("py-killed-other", "py-killed");
    await server.deploy("py-killed", { functions: { count: py("cache['n'] = cache.get('n', 0) + 1\nreturn cache['n']") } });
    await server.deploy(other, { functions: { f: py("cache['n'] = cache.get('n', 0) + 1\nreturn ['alive', cache['n']]") } });
    expect((await server.run("py-killed", "count")).body.result).toBe(1);
    expect((await server.run("py-killed", "count")).body.result).toBe(2);
    expect((await server.run(other, "f")).body.result).toEqual(["alive", 1]);
    const before = kernels();
    expect(before.length).toBeGreaterThanOrEqual(3); // the two workspaces' kernels and the spare, at least
    for (const pid of before) process.kill(pid, "SIGKILL");
    // Dead for real before the next run (the run sent at once is the next test's case).
    expect(await waitFor(() => before.every((pid) => !isRunning(pid)), 5000)).toBe(true);

    const reply = await server.run("py-killed", "count");
    expect(reply.status, JSON.stringify(reply.body)).toBe(200);
    expect(reply.body.result).toBe(1); // the code came back through the 409 handshake; the cache did not survive
    expect(kernels().some((pid) => !before.includes(pid))).toBe(true);
    // The other workspace's kernel is replaced on its first job, too, with a fresh cache of its own.
    expect((await server.run(other, "f")).body.result).toEqual(["alive", 1]);
    expect(kernels().filter((pid) => before.includes(pid))).toEqual([]);
  });

  it("a run sent right as its idle kernel is killed runs on a fresh kernel: it never started on the dead one", async () => {
    await server.deploy("py-race", { functions: { count: py("cache['n'] = cache.get('n', 0) + 1\nreturn cache['n']") } });
    for (let round = 0; round < 5; round++) {
      expect((await server.run("py-race", "count")).status).toBe(200);
      for (const pid of kernels()) process.kill(pid, "SIGKILL");
      // No wait: the run may reach a kernel that is still being torn down (its pipe takes the write).
      const reply = await server.run("py-race", "count");
      expect(reply.status, JSON.stringify(reply.body)).toBe(200);
      expect(reply.body.result).toBe(1); // a fresh kernel: the code came through the 409 handshake, the cache did not
    }
  });

  it("a kernel killed during a run fails that run with KernelCrashed, and the next run works", async () => {
    await server.deploy("py-crash", { functions: { slow: py("import time\ntime.sleep(5)\nreturn 'late'"), ok: py("return 'ok'") } });
    expect((await server.run("py-crash", "ok")).body.result).toBe("ok");
    const slow = server.run("py-crash", "slow");
    expect(await waitFor(async () => (await health()).busy > 0, 3000)).toBe(true);
    // SIGTERM, not SIGKILL: the Python API reads a SIGKILL it did not send as the OOM killer's.
    for (const pid of kernels()) process.kill(pid, "SIGTERM");
    const reply = await slow;
    expect(reply.status).toBe(500);
    expect(reply.body).toMatchObject({ error: "FunctionError", details: { name: "KernelCrashed" } });
    expect(reply.body.message).toMatch(/SIGTERM.*replaced/);
    expect((await server.run("py-crash", "ok")).body.result).toBe("ok");
  });

  it("stopping the service stops the Python API and its kernels", async () => {
    const children = [apiPid, ...kernels()];
    expect(children.length).toBeGreaterThan(1); // kernels killed by the tests above are replaced lazily
    await server.stop();
    expect(await waitFor(() => children.every((pid) => !isRunning(pid)), 10_000)).toBe(true);
  }, 20_000);
});

describe("Python API unreachable", () => {
  let server: RunningServer;
  let refusedUrl: string;
  beforeAll(async () => {
    // A port that was free a moment ago: nothing listens there.
    refusedUrl = `http://127.0.0.1:${await freePort()}`;
    server = await startServer({ PYTHON_API_URL: refusedUrl });
  });
  afterAll(async () => {
    await server?.stop();
  });

  it("answers 502 PythonApiError saying where it looked, and Node functions still run", async () => {
    await server.deploy("py-down", { functions: { hello: py("return 'hi'"), node: { code: "return 'node';" } } });
    const reply = await server.run("py-down", "hello");
    expect(reply.status).toBe(502);
    expect(reply.body.error).toBe("PythonApiError");
    expect(reply.body.message).toBe(`The Python API at ${refusedUrl} (PYTHON_API_URL) could not be reached: the connection was refused (is the Python API running?)`);
    expect((await server.run("py-down", "node")).body.result).toBe("node");
    expect(childrenOf(server.process.pid!, "server.py")).toEqual([]); // an explicit URL: nothing started
  });

  it("says so too for PYTHON_API_URL=http://127.0.0.1:1", async () => {
    const other = await startServer({ PYTHON_API_URL: "http://127.0.0.1:1" });
    try {
      await other.deploy("py-down", { functions: { hello: py("return 'hi'") } });
      const reply = await other.run("py-down", "hello");
      expect(reply.status).toBe(502);
      expect(reply.body.error).toBe("PythonApiError");
      expect(reply.body.message).toMatch(/^The Python API at http:\/\/127\.0\.0\.1:1 \(PYTHON_API_URL\) could not be reached: /);
    } finally {
      await other.stop();
    }
  });
});

describe.skipIf(!hasPython)("the bundled Python API's lifetime", () => {
  it("ends with the service even when the service is killed with SIGKILL", async () => {
    const service = await startServer({ KERNEL_POOL_SIZE: "1" });
    try {
      const [api] = childrenOf(service.process.pid!, "server.py");
      expect(api).toBeGreaterThan(0);
      service.process.kill("SIGKILL");
      await expect.poll(() => isRunning(api), { timeout: 10_000, interval: 100 }).toBe(false);
    } finally {
      await service.stop();
    }
  });
});
