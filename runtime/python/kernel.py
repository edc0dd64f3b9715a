"""A kernel: one warm Python process that runs workspace functions for server.py, one run at a time.

Started by server.py (never by hand) as `python3 kernel.py '<config json>'`. It talks to the
server over its original stdin/stdout, which are moved to private descriptors at start so that
nothing user code prints (or a C extension writes to fd 1) can corrupt the stream:

  server -> kernel   b"<length>\\n" + <length> bytes: the POST /v1/run body, forwarded as received
  kernel -> server   b"<status> <json>\\n"  (json.dumps never emits a raw newline)

The first line a kernel writes is b'200 {"ready": true, "confinement": "...", "note": ...}\\n' (see
confine.apply). <status> is the HTTP status the server answers with; the JSON after it is the HTTP
body, forwarded without being parsed again.

The kernel keeps, per workspace, one namespace built from one version of its code: the functions
(bound by name, so they call each other), a `cache` dict, and a private `__builtins__` whose
`__import__` only lets through the allowed top-level modules. None of that is a security boundary
(Python has none inside a process); the process is: rlimits, an empty environment, SIGKILL on
deadline, and the confinement of confine.py (Landlock, then an audit hook), all applied by the
server or at start below, before any user code runs.
"""

import ast
import builtins
import collections
import copy
import faulthandler
import gc
import io
import json
import keyword
import logging
import math
import os
import resource
import sys
import time
import types
import warnings

import confine  # beside this file

EXIT_MEMORY = 3  # exit code telling the server "died of MemoryError outside a run's own handling"
MAX_WORKSPACES = 100  # namespaces kept per kernel, least recently used evicted (they come back via 409)
REMOVED_BUILTINS = ("open", "exec", "eval", "compile", "input", "breakpoint", "exit", "quit", "help")

# Appended to a body whose `result` is a local variable: falling off the end returns it (the older
# documented style); `return` anywhere still wins. Unbound `result` gives None.
_RESULT_TAIL = ast.parse("try:\n    return result\nexcept NameError:\n    return None\n").body

# ---------------------------------------------------------------------------------------------
# Logs of the current run: print(), sys.stdout/stderr writes, logging records, warnings.

LOGS = []


def _timestamp(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % (int(t * 1000) % 1000)


def _log(level, message, created=None):
    LOGS.append({"level": level, "message": message, "timestamp": _timestamp(created or time.time())})


class _LogStream(io.TextIOBase):
    """sys.stdout / sys.stderr during runs: text is logged each time a write ends a line, so one
    pprint.pprint() call is one entry; a trailing partial line is logged at run end."""

    encoding = "utf-8"

    def __init__(self, level):
        self.level = level
        self.pending = ""

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self.pending += s
        if self.pending.endswith("\n"):  # a line just ended: pprint's inner writes never end so
            _log(self.level, self.pending[:-1])
            self.pending = ""
        return len(s)

    def drain(self):
        if self.pending:
            _log(self.level, self.pending)
            self.pending = ""


STDOUT = _LogStream("log")
STDERR = _LogStream("error")


def _print(*args, sep=" ", end="\n", file=None, flush=False):
    """The user's print: exactly one log entry per call (builtin print writes piecewise)."""
    if file is None or file is STDOUT:
        level = "log"
    elif file is STDERR:
        level = "error"
    else:  # e.g. print(..., file=io.StringIO())
        return builtins.print(*args, sep=sep, end=end, file=file, flush=flush)
    message = (" " if sep is None else sep).join(map(str, args)) + ("\n" if end is None else end)
    _log(level, message[:-1] if message.endswith("\n") else message)


def _level_name(levelno):
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warn"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class _CaptureHandler(logging.Handler):
    def emit(self, record):
        try:
            message = self.format(record)  # getMessage() plus the traceback of logging.exception()
        except Exception:
            self.handleError(record)
            return
        _log(_level_name(record.levelno), message, record.created)


CAPTURE_HANDLER = _CaptureHandler()
CAPTURE_HANDLER.setFormatter(logging.Formatter("%(message)s"))


def _show_warning(message, category, filename, lineno, file=None, line=None):
    _log("warn", f"{category.__name__}: {message}")


def _reset_io():
    """Undo what a previous run may have changed in the process-wide logging/stdio state.
    Cheap when nothing changed, which is the usual case."""
    sys.stdout, sys.stderr = STDOUT, STDERR
    STDOUT.pending = STDERR.pending = ""
    root = logging.root
    if root.handlers != [CAPTURE_HANDLER]:
        root.handlers[:] = [CAPTURE_HANDLER]
    if root.level != logging.DEBUG:
        root.setLevel(logging.DEBUG)
    if logging.root.manager.disable:
        logging.disable(logging.NOTSET)
    warnings.showwarning = _show_warning


# ---------------------------------------------------------------------------------------------
# Workspaces: compiling bodies into functions bound in one shared namespace.


class UserFunction:
    """What a function's name is bound to in its workspace: applies defaults, then runs the body.

    Siblings call it as `hello(name='a')` or `hello('a')`; undeclared keywords are ignored and an
    absent parameter gets a fresh copy of its `default` (or None), like a run from outside."""

    __slots__ = ("name", "params", "defaults", "impl", "error", "__weakref__")

    def __init__(self, name, params, defaults, impl=None, error=None):
        self.name, self.params, self.defaults, self.impl, self.error = name, params, defaults, impl, error

    def _value(self, param, given):
        if param in given:
            return given[param]
        if param in self.defaults:
            value = self.defaults[param]
            # A run may mutate its arguments: each call gets its own copy of a list/dict default.
            return copy.deepcopy(value) if isinstance(value, (dict, list)) else value
        return None

    def run(self, given):
        if self.error is not None:
            raise SyntaxError(self.error[0])
        return self.impl(*[self._value(p, given) for p in self.params])

    def __call__(self, *args, **kwargs):
        if self.error is not None:
            raise SyntaxError(self.error[0])
        if len(args) > len(self.params):
            raise TypeError(f"{self.name}() takes {len(self.params)} parameters but {len(args)} were given")
        rest = self.params[len(args):]
        return self.impl(*args, *[self._value(p, kwargs) for p in rest])

    def __repr__(self):
        return f"<function {self.name}>"


def _inner_code(module_code):
    return next(c for c in module_code.co_consts if isinstance(c, types.CodeType))


def compile_function(name, spec, glb):
    """Build `def <name>(<params>): <body>` from the AST of the body alone, so the body's line 1
    is line 1 in tracebacks (filename = the function name) and string literals stay untouched."""
    code = spec.get("code") or ""
    declared = spec.get("parameters") or {}
    params = list(declared)
    defaults = {p: s["default"] for p, s in declared.items() if isinstance(s, dict) and "default" in s}
    bad = [p for p in params if not p.isidentifier() or keyword.iskeyword(p)]
    if bad:
        message = f"parameter '{bad[0]}' of function '{name}' is not a valid Python name"
        return UserFunction(name, params, defaults, error=(message, 0, ""))
    try:
        body = ast.parse(code, filename=name).body  # `return` at top level parses; it is checked below
        module = ast.parse(f"def _f({', '.join(params)}):\n    pass\n")
        module.body[0].body = body or [ast.Pass(lineno=1, col_offset=0)]
        fcode = _inner_code(compile(module, name, "exec", dont_inherit=True))
        if "result" in fcode.co_varnames or "result" in fcode.co_cellvars:
            last = max((getattr(n, "end_lineno", None) or n.lineno) for n in body) if body else 1
            tail = copy.deepcopy(_RESULT_TAIL)
            for node in tail:
                ast.increment_lineno(node, last)
            module.body[0].body = body + tail
            fcode = _inner_code(compile(module, name, "exec", dont_inherit=True))
    except (SyntaxError, ValueError, RecursionError) as e:  # ValueError: NUL bytes; Recursion: deep nesting
        line = getattr(e, "lineno", None) or 0
        message = f"{getattr(e, 'msg', None) or e} (function '{name}', line {line})"
        return UserFunction(name, params, defaults, error=(message, line, (getattr(e, "text", None) or "").strip()))
    names = {"co_name": name}
    if hasattr(fcode, "co_qualname"):  # 3.11+
        names["co_qualname"] = name
    impl = types.FunctionType(fcode.replace(**names), glb, name)
    return UserFunction(name, params, defaults, impl=impl)


class Workspace:
    __slots__ = ("version", "functions", "sources", "globals")

    def __init__(self, version, specs, user_builtins):
        self.version = version
        # Each workspace gets its own copy of the builtins dict: a run that mutates it only hurts itself.
        glb = {"__builtins__": dict(user_builtins), "__name__": "__functions__"}
        self.functions = {}
        self.sources = {}  # function name (= co_filename of its frames) -> lines, for stacks
        for name, spec in specs.items():
            fn = compile_function(name, spec, glb)
            self.functions[name] = glb[name] = fn
            self.sources[name] = (spec.get("code") or "").splitlines()
        glb["cache"] = {}  # last: the shared dict always wins over a (misnamed) function
        self.globals = glb


def make_user_builtins(allowed):
    real_import = builtins.__import__
    allowed = frozenset(allowed)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        # Only the user's own import statements come through here; modules they import run with
        # the real builtins, so their internal imports are not checked.
        if level != 0:
            raise ImportError("relative imports are not supported in functions")
        top = name.partition(".")[0]
        if top not in allowed:
            raise ImportError(
                f"import of '{top}' is not allowed in functions (allowed: the modules listed in "
                "PYTHON_BUILTIN_MODULES and PYTHON_PACKAGES_WHITELIST_IMPORT)",
                name=top,
            )
        return real_import(name, globals, locals, fromlist, level)

    user = dict(builtins.__dict__)
    for name in REMOVED_BUILTINS:
        user.pop(name, None)
    user["__import__"] = guarded_import
    user["print"] = _print
    return user


# ---------------------------------------------------------------------------------------------
# Runs.


def _json_default(o):
    if hasattr(o, "tolist"):  # numpy arrays and scalars (np.int64 is not an int)
        return o.tolist()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _finite(o):
    """NaN/Infinity become null, as JavaScript's JSON.stringify does (pandas results hold NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    if hasattr(o, "tolist") and not isinstance(o, (str, bytes)):
        return _finite(o.tolist())
    return o


def encode_result(result):
    try:
        return json.dumps(result, separators=(",", ":"), allow_nan=False, default=_json_default)
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
        return json.dumps(_finite(result), separators=(",", ":"), allow_nan=False, default=_json_default)


def describe(exc):
    try:
        return str(exc)
    except Exception:  # a user exception whose __str__ fails must not take the kernel down
        return f"<unprintable {type(exc).__name__}>"


def format_stack(exc, ws):
    """A traceback of the user's frames only (no host paths). Walks the traceback by hand:
    traceback.extract_tb would ask linecache, which searches the disk for a file named 'hello'."""
    frames = []  # (function name, line, code name) of the user's frames, outermost first
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_filename in ws.sources:
            frames.append((code.co_filename, tb.tb_lineno or 0, code.co_name))
        tb = tb.tb_next
    lines = ["Traceback (most recent call last):"]
    i = 0
    while i < len(frames):
        filename, lineno, name = frames[i]
        source = ws.sources[filename]
        lines.append(f'  File "{filename}", line {lineno}, in {name}')
        text = source[lineno - 1].strip() if 0 < lineno <= len(source) else ""
        if text:
            lines.append("    " + text)
        same = i + 1
        while same < len(frames) and frames[same] == frames[i]:
            same += 1
        if same - i > 3:  # deep recursion: one line instead of a thousand identical ones
            lines.append(f"  [Previous line repeated {same - i - 1} more times]")
            i = same
        else:
            i += 1
    message = describe(exc)
    lines.append(f"{type(exc).__name__}: {message}" if message else type(exc).__name__)
    return "\n".join(lines)


class Kernel:
    def __init__(self, config):
        self.memory_mb = config["memoryMb"]
        self.scratch = os.path.realpath(config["scratchDir"]) if config.get("scratchDir") else None
        self.user_builtins = make_user_builtins(config["allowed"])
        self.workspaces = collections.OrderedDict()

    def handle(self, req):
        """One request -> (status, JSON text)."""
        ws_id, version, specs = req["workspace"], req["version"], req.get("functions")
        ws = self.workspaces.get(ws_id)
        if specs is not None and (ws is None or ws.version != version):
            # A version's code never changes: the same version sent again keeps its namespace and cache.
            ws = self.workspaces[ws_id] = Workspace(version, specs, self.user_builtins)
            while len(self.workspaces) > MAX_WORKSPACES:
                self.workspaces.popitem(last=False)
        elif ws is None or ws.version != version:
            held = f"holds version {ws.version}" if ws else "holds no version of it"
            return 409, json.dumps({"error": "VersionUnknown",
                                    "message": f"workspace '{ws_id}' version {version} is not loaded "
                                               f"(this kernel {held}); resend with `functions`"})
        self.workspaces.move_to_end(ws_id)
        fn = ws.functions.get(req["function"])
        if fn is None:
            return 404, json.dumps({"error": "FunctionNotFound",
                                    "message": f"workspace '{ws_id}' has no Python function '{req['function']}'"})
        return 200, self.run(ws_id, ws, fn, req.get("parameters") or {})

    def run(self, ws_id, ws, fn, params):
        LOGS.clear()
        _reset_io()
        if self.scratch:  # a previous run's chdir stays its own
            try:
                if os.getcwd() != self.scratch:
                    os.chdir(self.scratch)
            except OSError:
                pass
        error = None
        start = time.perf_counter()
        if fn.error is not None:  # the body does not compile: reported at run, like the original
            message, line, text = fn.error
            stack = f'  File "{fn.name}", line {line}' + (f"\n    {text}" if text else "")
            error = {"kind": "function", "name": "SyntaxError", "message": message, "stack": stack}
        else:
            returned = False
            try:
                result = fn.run(params)
                returned = True
                encoded = encode_result(result)
            except MemoryError:
                error = self.memory_error(ws_id)
            except BaseException as e:  # SystemExit, KeyboardInterrupt raised by user code too
                if returned:  # the body returned; its value is the problem
                    error = {"kind": "function", "name": "TypeError",
                             "message": f"The function's result is not JSON-serialisable: {describe(e)}", "stack": ""}
                else:
                    error = {"kind": "function", "name": type(e).__name__, "message": describe(e),
                             "stack": format_stack(e, ws)}
            result = None  # drop the reference before answering
        duration = round((time.perf_counter() - start) * 1000, 3)
        STDOUT.drain()
        STDERR.drain()
        if error is not None:
            if error["kind"] == "memory":
                gc.collect()
            return json.dumps({"ok": False, "error": error, "logs": LOGS, "durationMs": duration})
        return '{"ok":true,"result":%s,"logs":%s,"durationMs":%r}' % (encoded, json.dumps(LOGS), duration)

    def memory_error(self, ws_id):
        # Forget the workspace, cache included: a full cache would make every later run on this
        # kernel fail. It comes back, fresh, through the 409 handshake.
        self.workspaces.pop(ws_id, None)
        limit = f" (limit {self.memory_mb} MB per kernel)" if self.memory_mb else ""
        return {"kind": "memory", "name": "MemoryLimitError", "message": "Function ran out of memory" + limit}


def main():
    config = json.loads(sys.argv[1])
    # The script's directory is not a place user imports should look in.
    if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
        del sys.path[0]

    # Private copies of the protocol descriptors; fd 0 becomes /dev/null and fd 1 goes to stderr.
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(2, 1)
    faulthandler.enable(file=sys.__stderr__)  # a segfault's Python stack goes to the operator's log

    if config["memoryMb"]:
        limit = config["memoryMb"] * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    # For good, before any user code: Landlock when the system has it, the audit hook always.
    confinement = confine.apply(config, os.path.dirname(os.path.abspath(__file__)))

    kernel = Kernel(config)
    _reset_io()
    # One run end to end, confined, before saying ready: a memory limit too low for Python itself
    # fails here (MemoryError -> EXIT_MEMORY), at start-up, instead of on every user run.
    probe = {"workspace": "", "version": "", "function": "f", "functions": {"f": {"code": "return len(bytearray(1 << 22))"}}}
    status, text = kernel.handle(probe)
    if status != 200 or not json.loads(text)["ok"]:
        print(f"python-api kernel: self-test failed: {text}", file=sys.__stderr__, flush=True)
        os._exit(EXIT_MEMORY)
    kernel.workspaces.clear()

    def send(status, text):
        proto_out.write(b"%d %s\n" % (status, text.encode()))
        proto_out.flush()

    send(200, json.dumps({"ready": True, **confinement}))
    while True:
        header = proto_in.readline()
        if not header:
            return  # the server went away
        body = proto_in.read(int(header))
        try:
            status, text = kernel.handle(json.loads(body))
        except MemoryError:
            raise
        except Exception as e:  # a bug of ours or a malformed forward: answer, keep serving
            print(f"python-api kernel {os.getpid()}: internal error: {e!r}", file=sys.__stderr__)
            status, text = 500, json.dumps({"error": "KernelError", "message": f"kernel error: {e}"})
        send(status, text)


if __name__ == "__main__":
    try:
        main()
    except MemoryError:
        os._exit(EXIT_MEMORY)
