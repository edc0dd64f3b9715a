#!/usr/bin/env python3
"""Python API: runs the `language: python` functions of the functions service.

    python3 runtime/python/server.py        (standard library only, Python 3.10+)

The Node service forwards runs to `POST /v1/run`; this server routes each workspace to one warm
worker process ("kernel", see kernel.py) of a fixed pool, always the same one so that the
workspace's `cache` holds, queues runs per kernel (FIFO), enforces the deadline by SIGKILL and
replaces dead kernels. The protocol and the semantics are in docs/python-api.md.
"""

import collections
import fcntl
import json
import math
import os
import select
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import confine  # beside this file: the egress settings are validated with the kernels' own code
import kernel  # beside this file: its compile step serves /v1/check (importing it runs nothing)

PROTOCOL = 1
KERNEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.py")
EXIT_MEMORY = 3  # kernel.py's exit code for a MemoryError it could not answer
KERNEL_START_TIMEOUT = 30.0  # seconds for a new kernel to say it is ready
MAX_BODY = 64 * 1024 * 1024  # a run request carries at most one workspace's code

DEFAULT_BUILTIN_MODULES = (
    "json, csv, xml, html, email, re, string, textwrap, unicodedata, difflib, math, decimal, "
    "fractions, random, statistics, datetime, time, calendar, collections, itertools, functools, "
    "operator, array, heapq, bisect, queue, copy, enum, typing, dataclasses, abc, types, io, "
    "pathlib, tempfile, glob, fnmatch, base64, hashlib, hmac, binascii, struct, secrets, zlib, "
    "gzip, bz2, lzma, zipfile, tarfile, urllib, http, logging, warnings, traceback, pprint, uuid, "
    "contextlib, weakref, timeit, atexit"
)
DEFAULT_PACKAGES = "numpy, pandas, tabulate, dateparser, urllib3, requests, pptx, docx"


# ---------------------------------------------------------------------------------------------
# Configuration


class ConfigError(Exception):
    pass


def load_config(env):
    """Environment -> config; a bad value raises ConfigError naming the variable."""

    def get(name, default):
        value = env.get(name, "").strip()
        return value if value else default  # empty counts as unset

    def integer(name, default, low, high=None):
        raw = get(name, str(default))
        try:
            value = int(raw)
        except ValueError:
            value = None
        if value is None or value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ConfigError(f"invalid {name}={raw!r}: expected an integer {bound}")
        return value

    def names(name, default):
        raw = get(name, default)
        items = [item.strip() for item in raw.split(",") if item.strip()]
        bad = [item for item in items if not item.isidentifier()]
        if bad:
            raise ConfigError(f"invalid {name}: {bad[0]!r} is not a top-level module name")
        return items

    try:
        egress = confine.load_egress(env)
    except ValueError as e:
        name, _, problem = str(e).partition(": ")
        raise ConfigError(f"invalid {name}: {problem}") from None

    return {
        "host": get("HOST", "127.0.0.1"),
        "port": integer("PORT", 8000, 0, 65535),
        "pool_size": integer("KERNEL_POOL_SIZE", os.cpu_count() or 1, 1, 1024),
        "builtin_modules": names("PYTHON_BUILTIN_MODULES", DEFAULT_BUILTIN_MODULES),
        "packages": names("PYTHON_PACKAGES_WHITELIST_IMPORT", DEFAULT_PACKAGES),
        "memory_mb": integer("PYTHON_MEMORY_LIMIT_MB", 256, 0),
        "timeout_ms": integer("PYTHON_FUNCTIONS_RUN_TIMEOUT", 20000, 1),
        "egress": egress,
    }


def kernel_index(workspace, pool_size):
    """Stable across restarts and processes (unlike hash()): a workspace always meets its cache."""
    return zlib.crc32(workspace.encode("utf-8")) % pool_size


def kernel_env(scratch):
    """The kernel's whole environment: nothing secret, only what Python and its packages need, and
    its scratch directory as TMPDIR (the one place it may write)."""
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "TMPDIR": scratch}
    for name, value in os.environ.items():
        if name in ("LANG", "LC_ALL", "LC_CTYPE", "TZ", "PYTHONPATH") or name.startswith("OPENBLAS_"):
            env[name] = value
    # Under RLIMIT_AS, reserved address space counts: one thread per BLAS, and few malloc arenas.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_ARENA_MAX="2")
    return env


def remove_scratch(path):
    """Removes a kernel's scratch directory. shutil.rmtree never follows links; directories a
    function made unwritable are reopened without following links and made writable first."""
    if not path:
        return
    try:
        if not stat.S_ISDIR(os.lstat(path).st_mode):  # replaced by a link or a file: never followed
            os.unlink(path)
            return
    except OSError:
        return
    shutil.rmtree(path, ignore_errors=True)
    if not os.path.lexists(path):
        return

    def unlock(name):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            return
        try:
            os.fchmod(fd, 0o700)
        except OSError:
            pass
        finally:
            os.close(fd)

    unlock(path)
    for root, dirs, _files in os.walk(path):  # top-down: each level unlocked before it is entered
        for name in dirs:
            unlock(os.path.join(root, name))
    shutil.rmtree(path, ignore_errors=True)


def error_body(name, message):
    return json.dumps({"error": name, "message": message}).encode()


# ---------------------------------------------------------------------------------------------
# Kernels


class Job:
    """One run waiting for, or running on, a kernel."""

    __slots__ = ("body", "timeout_ms", "deadline", "done", "status", "payload")

    def __init__(self, body, timeout_ms):
        self.body = body
        self.timeout_ms = timeout_ms
        # The deadline counts from receipt, queue time included: the answer always comes within
        # about timeoutMs, so the caller can bound its own wait.
        self.deadline = time.monotonic() + timeout_ms / 1000
        self.done = threading.Event()
        self.status = None
        self.payload = None

    def finish(self, status, payload):
        if self.status is None:
            self.status, self.payload = status, payload
            self.done.set()


def ms(value):
    return int(value) if value == int(value) else value


def outcome(kind, name, message, duration_ms):
    return json.dumps({"ok": False, "error": {"kind": kind, "name": name, "message": message},
                       "logs": [], "durationMs": round(duration_ms, 3)}).encode()


class KernelStartError(Exception):
    pass


class Kernel:
    """One worker process and the thread that owns it: the thread takes jobs in order, writes each
    to the process, waits for the answer until the job's deadline, and replaces the process when
    it is killed or dies. Only this thread touches the process, so no lock guards it."""

    def __init__(self, index, config):
        self.index = index
        self.kernel_config = {
            "memoryMb": config["memory_mb"],
            "allowed": config["builtin_modules"] + config["packages"],
            "egress": config["egress"],
        }
        self.scratch = None  # the running process's scratch directory (its TMPDIR and cwd)
        self.confinement = None  # what the running process said it is confined by
        self.confinement_note = None
        self.proc = None
        self.poller = None
        self.buf = bytearray()
        self.queue = collections.deque()
        self.cond = threading.Condition()
        self.busy = False
        self.closing = False
        self.restarts = 0
        self.thread = threading.Thread(target=self._loop, name=f"kernel-{index}", daemon=True)

    # -- process ---------------------------------------------------------------------------------

    def spawn(self):
        self.buf.clear()
        self.confinement = self.confinement_note = None
        # A fresh scratch directory per process: nothing a run wrote outlives its kernel.
        self.scratch = tempfile.mkdtemp(prefix=f"python-api-kernel-{self.index}-")
        config = dict(self.kernel_config, scratchDir=self.scratch)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, KERNEL_PATH, json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                bufsize=0, env=kernel_env(self.scratch), cwd=self.scratch, close_fds=True,
                start_new_session=True,  # Ctrl-C goes to the server only, and killpg reaches any child
            )
        except OSError:
            remove_scratch(self.scratch)
            self.scratch = None
            raise
        self.poller = select.poll()  # poll, not select: fds above 1024 are fine
        self.poller.register(self.proc.stdout.fileno(), select.POLLIN)

    def wait_ready(self):
        try:
            line = self._read_line(time.monotonic() + KERNEL_START_TIMEOUT)
        except EOFError:
            line = None
        if line is None or not line.startswith(b"200 "):
            self.kill()
            code = self.proc.returncode
            raise KernelStartError(
                f"kernel {self.index} failed to start (exit code {code}); its error is above. "
                "A PYTHON_MEMORY_LIMIT_MB too low for Python itself does this.")
        ready = json.loads(line[4:])
        self.confinement, self.confinement_note = ready.get("confinement"), ready.get("note")

    def start(self):
        self.spawn()
        self.wait_ready()

    def kill(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            stream.close()
        remove_scratch(self.scratch)
        self.scratch = None

    def restart(self):
        self.kill()
        self.restarts += 1
        if self.closing:
            self.proc = None
            return
        try:
            self.start()
        except (KernelStartError, OSError) as e:
            print(f"python-api: {e}", file=sys.stderr, flush=True)
            self.proc = None  # the next job tries again

    def _read_line(self, deadline):
        """The kernel's next line, None past the deadline; EOFError when the kernel is gone."""
        fd = self.proc.stdout.fileno()
        scanned = 0
        while True:
            end = self.buf.find(b"\n", scanned)
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 1]
                return line
            scanned = len(self.buf)
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.poller.poll(math.ceil(remaining * 1000)):
                if time.monotonic() >= deadline:
                    return None
                continue
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                raise EOFError
            self.buf += chunk

    def _write(self, data):
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, job):
        with self.cond:
            self.queue.append(job)
            self.cond.notify()

    def _loop(self):
        while True:
            with self.cond:
                while not self.queue and not self.closing:
                    self.cond.wait()
                if self.closing:
                    for job in self.queue:
                        job.finish(503, error_body("ShuttingDown", "the Python API is shutting down"))
                    return
                job = self.queue.popleft()
                self.busy = True
            try:
                self._serve(job)
            except Exception as e:  # a kernel that cannot start, or a bug of ours
                print(f"python-api: kernel {self.index}: {e!r}", file=sys.stderr, flush=True)
                job.finish(500, error_body("KernelError", f"the Python kernel is unavailable: {e}"))
            finally:
                self.busy = False

    def _serve(self, job):
        if time.monotonic() >= job.deadline:
            job.finish(200, outcome("timeout", "TimeoutError",
                                    f"Function exceeded its {ms(job.timeout_ms)} ms timeout while waiting "
                                    "for its kernel (runs of a workspace are serialized)", 0))
            return
        frame = b"%d\n%s" % (len(job.body), job.body)
        if self.proc is None or self.proc.poll() is not None:  # died while idle, or never started
            self.restart()
            if self.proc is None:
                raise KernelStartError(f"kernel {self.index} could not be started")
        try:
            self._write(frame)
        except OSError:  # died while idle, unnoticed until now: the run did not start, so retry once
            self._resend(frame)
        started = time.monotonic()
        try:
            line = self._read_line(job.deadline)
        except EOFError:
            crashed = True
            if self._unread() >= len(frame):
                # It died (killed while idle) before reading a byte of this run: the run never
                # started, so a fresh kernel gets it, once.
                self._resend(frame)
                started = time.monotonic()
                try:
                    line = self._read_line(job.deadline)
                    crashed = False
                except EOFError:
                    pass
            if crashed:
                job.finish(200, self._crash_outcome((time.monotonic() - started) * 1000))
                self.restart()
                return
        if line is None:
            self.kill()
            job.finish(200, outcome("timeout", "TimeoutError",
                                    f"Function exceeded its {ms(job.timeout_ms)} ms timeout",
                                    (time.monotonic() - started) * 1000))
            self.restart()  # after answering: the caller does not wait for the new process
            return
        job.finish(int(line[:3]), line[4:])

    def _resend(self, frame):
        """A run that never started on a dead kernel, written to its replacement."""
        self.restart()
        if self.proc is None:
            raise KernelStartError(f"kernel {self.index} could not be started")
        self._write(frame)

    def _unread(self):
        """Bytes written to the kernel that it never read (Linux FIONREAD on the pipe); 0 when unknown."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError, AttributeError):
            return 0

    def _crash_outcome(self, duration_ms):
        try:
            code = self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # closed its stdout but lives on: end it
            self.kill()
            code = self.proc.returncode
        if code == EXIT_MEMORY:
            return outcome("memory", "MemoryLimitError", "Function ran out of memory", duration_ms)
        if code == -signal.SIGKILL:  # not ours (we answer timeouts before killing): the OOM killer
            return outcome("memory", "MemoryLimitError",
                           "The Python kernel was killed (SIGKILL) while running the function, "
                           "most likely by the system's out-of-memory killer", duration_ms)
        if code < 0:
            try:
                how = f"crashed (signal {signal.Signals(-code).name})"
            except ValueError:
                how = f"crashed (signal {-code})"
        else:
            how = f"exited (code {code})"
        return outcome("function", "KernelCrashed",
                       f"The Python kernel {how} while running the function; it has been replaced",
                       duration_ms)


# ---------------------------------------------------------------------------------------------
# The pool and the HTTP front


def validate(req):
    """Message of the first problem of a parsed /v1/run body, or None."""
    if not isinstance(req, dict):
        return "the body must be a JSON object"
    if req.get("protocol") != PROTOCOL:
        return f"unsupported protocol {req.get('protocol')!r}: this Python API speaks protocol {PROTOCOL}"
    for key in ("workspace", "version", "function"):
        if not isinstance(req.get(key), str) or not req[key]:
            return f"`{key}` must be a non-empty string"
    if req.get("parameters") is not None and not isinstance(req["parameters"], dict):
        return "`parameters` must be an object"
    timeout = req.get("timeoutMs")
    if timeout is not None and (type(timeout) not in (int, float) or not 0 < timeout < math.inf):
        return "`timeoutMs` must be a positive number"
    functions = req.get("functions")
    if functions is None:
        return None
    if not isinstance(functions, dict):
        return "`functions` must be an object"
    for name, spec in functions.items():
        if not isinstance(spec, dict) or not isinstance(spec.get("code", ""), str):
            return f"`functions.{name}` must be an object with a string `code`"
        params = spec.get("parameters")
        if params is not None and (not isinstance(params, dict)
                                   or not all(isinstance(p, dict) or p is None for p in params.values())):
            return f"`functions.{name}.parameters` must be an object of objects"
    return None


class Pool:
    def __init__(self, config):
        self.config = config
        self.kernels = [Kernel(i, config) for i in range(config["pool_size"])]

    def start(self):
        for kernel in self.kernels:  # spawn all, then wait: they boot in parallel
            kernel.spawn()
        for kernel in self.kernels:
            kernel.wait_ready()
            kernel.thread.start()
        notes = {k.confinement_note for k in self.kernels if k.confinement_note}
        if notes:  # once, for the operator: function code is held by the soft layer only
            print(f"python-api: {'; '.join(sorted(notes))}; function code is confined by the audit hook only "
                  "(a soft layer, see docs/python-api.md)", file=sys.stderr, flush=True)

    def close(self):
        for kernel in self.kernels:
            with kernel.cond:
                kernel.closing = True
                kernel.cond.notify()
        for kernel in self.kernels:
            kernel.kill()

    def confinement(self):
        """What the kernels are confined by: one value when they agree (they normally do)."""
        values = sorted({k.confinement for k in self.kernels if k.confinement})
        return values[0] if len(values) == 1 else ("mixed: " + ", ".join(values) if values else None)

    def health(self):
        return {"healthy": True, "protocol": PROTOCOL, "kernels": len(self.kernels),
                "busy": sum(k.busy for k in self.kernels),
                "queued": sum(len(k.queue) for k in self.kernels),
                "restarts": sum(k.restarts for k in self.kernels),
                "confinement": self.confinement()}

    def run(self, body):
        """A /v1/run body -> (status, JSON bytes)."""
        try:
            req = json.loads(body)
        except ValueError as e:
            return 400, error_body("BadRequest", f"the body is not valid JSON: {e}")
        problem = validate(req)
        if problem:
            return 400, error_body("BadRequest", problem)
        if req.get("functions") is not None and req["function"] not in req["functions"]:
            return 404, error_body("FunctionNotFound",
                                   f"workspace '{req['workspace']}' has no Python function '{req['function']}'")
        job = Job(body, req.get("timeoutMs") or self.config["timeout_ms"])
        # The kernel gets the body as received: it parses it once more, which is cheaper than
        # re-serialising it here.
        self.kernels[kernel_index(req["workspace"], len(self.kernels))].submit(job)
        job.done.wait()
        return job.status, job.payload


def check(body):
    """`POST /v1/check`: compile the functions (never run them) and name the ones that do not.
    Compiling happens here, in the server: `compile()` executes nothing of the user's code."""
    try:
        req = json.loads(body)
        functions = req["functions"]
        if req.get("protocol") != 1 or not isinstance(functions, dict):
            raise ValueError
    except (ValueError, KeyError, TypeError):
        return 400, error_body("BadRequest", "expected {\"protocol\": 1, \"functions\": {...}}")
    problems = []
    for name, spec in functions.items():
        fn = kernel.compile_function(name, spec if isinstance(spec, dict) else {}, {})
        if fn.error:
            message, line, _text = fn.error
            problems.append({"function": name, "line": line, "message": message})
    return 200, json.dumps({"problems": problems}).encode()


def make_handler(pool):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: the Node side reuses its connections
        disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall
        server_version = "python-api"
        timeout = 300  # seconds an idle keep-alive connection (and its thread) is kept

        def log_message(self, format, *args):
            pass  # a line per request would cost more than a warm run; errors still reach stderr

        def reply(self, status, body):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts, size = [], 0
                while True:
                    length = int(self.rfile.readline().split(b";")[0], 16)
                    if length == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass  # trailers
                        return b"".join(parts)
                    size += length
                    if size > MAX_BODY:
                        return None
                    parts.append(self.rfile.read(length))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            if length < 0:
                raise ValueError(length)
            return None if length > MAX_BODY else self.rfile.read(length)

        def do_GET(self):
            if self.path.split("?")[0] == "/v1/health":
                self.reply(200, json.dumps(pool.health()).encode())
            else:
                self.reply(404, error_body("NotFound", f"no route GET {self.path}"))

        def do_POST(self):
            route = self.path.split("?")[0]
            if route not in ("/v1/run", "/v1/check"):
                self.reply(404, error_body("NotFound", f"no route POST {self.path}"))
                return
            try:
                body = self.read_body()
            except ValueError:
                self.close_connection = True
                self.reply(400, error_body("BadRequest", "malformed Content-Length or chunked body"))
                return
            if body is None:
                self.close_connection = True
                self.reply(413, error_body("PayloadTooLarge", f"the body exceeds {MAX_BODY} bytes"))
                return
            self.reply(*(check(body) if route == "/v1/check" else pool.run(body)))

    return Handler


class Server(ThreadingHTTPServer):
    daemon_threads = True


def main():
    try:
        config = load_config(os.environ)
    except ConfigError as e:
        print(f"python-api: {e}", file=sys.stderr)
        sys.exit(2)
    if ":" in config["host"]:
        Server.address_family = socket.AF_INET6

    pool = Pool(config)
    try:
        pool.start()
    except (KernelStartError, OSError) as e:
        pool.close()
        print(f"python-api: cannot start: {e}", file=sys.stderr)
        sys.exit(1)
    try:
        httpd = Server((config["host"], config["port"]), make_handler(pool))
    except OSError as e:
        pool.close()
        print(f"python-api: cannot listen on HOST={config['host']} PORT={config['port']}: {e}", file=sys.stderr)
        sys.exit(1)

    def stop(signum, frame):
        # shutdown() waits for serve_forever() to return, which runs in this very thread: ask from another.
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if os.environ.get("PYTHON_API_EXIT_WITH_STDIN") == "1":
        # Started by the service with a pipe as stdin: its end closes when the service dies, even
        # by SIGKILL, and the API goes with it instead of living on as an orphan.
        def watch_parent():
            sys.stdin.buffer.read()
            stop(None, None)
        threading.Thread(target=watch_parent, daemon=True).start()
    host = f"[{config['host']}]" if ":" in config["host"] else config["host"]
    print(f"python-api listening on http://{host}:{httpd.server_address[1]}", flush=True)
    try:
        httpd.serve_forever(poll_interval=0.5)
    finally:
        pool.close()
        httpd.server_close()


if __name__ == "__main__":
    main()
