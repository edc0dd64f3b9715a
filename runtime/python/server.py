#!/usr/bin/env python3
"""Python API: runs the `language: python` functions of the functions service.

    python3 runtime/python/server.py        (standard library only, Python 3.10+)

The Node service forwards runs to `POST /v1/run`; this server gives each workspace a warm worker
process of its own ("kernel", see kernel.py), so that the workspace's `cache` holds and no other
workspace shares its Python process. It keeps at most PYTHON_KERNELS_MAX of them (least recently
used idle ones ended first, idle ones ended after PYTHON_KERNEL_IDLE_TIMEOUT), one blank kernel
started ahead of need, queues runs per workspace (FIFO), lets KERNEL_POOL_SIZE kernels run at once,
enforces the deadline by SIGKILL and replaces dead kernels. The protocol and the semantics are in
docs/python-api.md.
"""

import collections
import fcntl
import itertools
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
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import confine  # beside this file: the egress settings are validated with the kernels' own code
import kernel  # beside this file: its compile step serves /v1/check (importing it runs nothing)

PROTOCOL = 1
KERNEL_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernel.py")
EXIT_MEMORY = 3  # kernel.py's exit code for a MemoryError it could not answer
KERNEL_START_TIMEOUT = 30.0  # seconds for a new kernel to say it is ready
FATAL_PENDING = 1 << (signal.SIGKILL - 1) | 1 << (signal.SIGTERM - 1)  # bits of /proc/<pid>/status SigPnd
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
        "kernels_max": integer("PYTHON_KERNELS_MAX", 64, 1, 100000),
        "idle_timeout_s": integer("PYTHON_KERNEL_IDLE_TIMEOUT", 3600, 1),
        "spare": True,  # one blank kernel started ahead of need (off only in measurements)
        "builtin_modules": names("PYTHON_BUILTIN_MODULES", DEFAULT_BUILTIN_MODULES),
        "packages": names("PYTHON_PACKAGES_WHITELIST_IMPORT", DEFAULT_PACKAGES),
        "memory_mb": integer("PYTHON_MEMORY_LIMIT_MB", 256, 0),
        "timeout_ms": integer("PYTHON_FUNCTIONS_RUN_TIMEOUT", 20000, 1),
        "egress": egress,
    }


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

    __slots__ = ("workspace", "body", "timeout_ms", "deadline", "done", "status", "payload")

    def __init__(self, workspace, body, timeout_ms):
        self.workspace = workspace
        self.body = body
        self.timeout_ms = timeout_ms
        # The deadline counts from receipt, waits included (behind the workspace's other runs, for
        # a run slot, for a process): the answer always comes within about timeoutMs, so the
        # caller can bound its own wait.
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


class Process:
    """One kernel.py process: started blank (confined, ready, holding no workspace), then given to
    one workspace for its whole life. Only the thread that holds it touches it."""

    serials = itertools.count(1)

    def __init__(self, kernel_config):
        self.serial = next(Process.serials)
        self.kernel_config = kernel_config
        self.workspace = None  # the one workspace this process ever serves (server.py enforces it)
        self.scratch = None  # its scratch directory (its TMPDIR and cwd)
        self.confinement = None  # what it said it is confined by
        self.note = None
        self.proc = None
        self.poller = None
        self.buf = bytearray()
        self.killed = False
        self.kill_lock = threading.Lock()

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def spawn(self):
        # A fresh scratch directory per process: nothing a run wrote outlives its kernel.
        self.scratch = tempfile.mkdtemp(prefix=f"python-api-kernel-{self.serial}-")
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
            line = self.read_line(time.monotonic() + KERNEL_START_TIMEOUT)
        except EOFError:
            line = None
        if line is None or not line.startswith(b"200 "):
            self.kill()
            raise KernelStartError(
                f"a kernel failed to start (exit code {self.proc.returncode}); its error is above. "
                "A PYTHON_MEMORY_LIMIT_MB too low for Python itself does this.")
        ready = json.loads(line[4:])
        self.confinement, self.note = ready.get("confinement"), ready.get("note")

    def start(self):
        self.spawn()
        self.wait_ready()
        return self

    def running(self):
        """Started and not reaped as dead: cheap (waitpid)."""
        return self.proc is not None and not self.killed and self.proc.poll() is None

    def alive(self):
        """Running, and not about to die: a process killed a moment ago may still look alive (and
        even read a run's bytes) until it is scheduled, so a pending SIGKILL or SIGTERM counts as
        dead (Linux: /proc/<pid>/status, one read: about 15 µs)."""
        if not self.running():
            return False
        try:
            fd = os.open(f"/proc/{self.proc.pid}/status", os.O_RDONLY)
            try:
                status = os.read(fd, 8192)
            finally:
                os.close(fd)
            for key in (b"\nSigPnd:", b"\nShdPnd:"):
                at = status.find(key)
                if at >= 0 and int(status[at + len(key):status.index(b"\n", at + 1)], 16) & FATAL_PENDING:
                    return False
        except (OSError, ValueError):
            pass  # no /proc: poll() alone
        return True

    def kill(self):
        """Ends the process (with its process group) and removes its scratch directory. Once: a
        second call never signals a pid that may have been reused since."""
        with self.kill_lock:
            if self.proc is None or self.killed:
                return
            self.killed = True
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout):
                stream.close()
            remove_scratch(self.scratch)
            self.scratch = None

    def read_line(self, deadline):
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

    def write(self, data):
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    def unread(self):
        """Bytes written to the kernel that it never read (Linux FIONREAD on the pipe); 0 when unknown."""
        try:
            return struct.unpack("i", fcntl.ioctl(self.proc.stdin.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0]
        except (OSError, ValueError, AttributeError):
            return 0


class Slots:
    """KERNEL_POOL_SIZE: how many kernels run a function at the same time, handed out in arrival
    order. A waiter gives up at its deadline."""

    def __init__(self, count):
        self.free = count
        self.waiters = collections.deque()
        self.lock = threading.Lock()

    def acquire(self, deadline):
        with self.lock:
            if self.free > 0 and not self.waiters:
                self.free -= 1
                return True
            handed = threading.Event()
            self.waiters.append(handed)
        handed.wait(max(0.0, deadline - time.monotonic()))
        with self.lock:
            if handed.is_set():
                return True
            self.waiters.remove(handed)
            return False

    def release(self):
        with self.lock:
            if self.waiters:
                self.waiters.popleft().set()  # the slot goes straight to the longest waiter
            else:
                self.free += 1

    def waiting(self):
        return len(self.waiters)


class Kernel:
    """The kernel of one workspace: a process of its own and the thread that owns it. The thread
    takes the workspace's jobs in order, waits for a run slot, writes each job to the process,
    waits for the answer until the job's deadline, and replaces the process when it is killed or
    dies. Only this thread touches the process, so no lock guards it."""

    def __init__(self, pool, workspace):
        self.pool = pool
        self.workspace = workspace
        self.process = None  # taken from the pool on the first job
        self.queue = collections.deque()
        self.cond = threading.Condition()
        self.busy = False  # a job taken from the queue and not finished yet
        self.running = False  # holding a run slot
        self.closing = False
        self.last_used = time.monotonic()
        self.thread = threading.Thread(target=self._loop, name=f"kernel-{workspace[:40]}", daemon=True)

    def idle(self):
        return not self.busy and not self.queue

    # -- process ---------------------------------------------------------------------------------

    def _adopt(self):
        process = self.pool.take_process()
        if process.workspace is not None:  # never: a process serves one workspace for its life
            process.kill()
            raise KernelStartError("refused a kernel process that already served another workspace")
        process.workspace = self.workspace
        self.process = process

    def restart(self):
        """Ends the process (timeout, crash, death) and puts a fresh one in its place, for this
        workspace only. A failed start leaves none: the next job tries again."""
        if self.process is not None:
            self.process.kill()
            self.process = None
            self.pool.count_restart()
        if self.closing:
            return
        try:
            self._adopt()
        except (KernelStartError, OSError) as e:
            print(f"python-api: {e}", file=sys.stderr, flush=True)

    def _ensure_process(self):
        # The cheap check here; _run looks for a pending kill just before writing.
        if self.process is None or not self.process.running():  # died while idle, or never started
            self.restart()
            if self.process is None:
                raise KernelStartError("a kernel could not be started")

    # -- jobs ------------------------------------------------------------------------------------

    def submit(self, job):
        with self.cond:
            self.queue.append(job)
            self.cond.notify()

    def close(self):
        with self.cond:
            self.closing = True
            self.cond.notify()

    def _loop(self):
        try:
            while True:
                with self.cond:
                    while not self.queue and not self.closing:
                        self.cond.wait()
                    if self.closing:
                        for job in self.queue:
                            job.finish(503, error_body("ShuttingDown", "the Python API is shutting down"))
                        self.queue.clear()
                        return
                    job = self.queue.popleft()
                    self.busy = True
                try:
                    self._serve(job)
                except Exception as e:  # a kernel that cannot start, or a bug of ours
                    print(f"python-api: kernel of a workspace: {e!r}", file=sys.stderr, flush=True)
                    job.finish(500, error_body("KernelError", f"the Python kernel is unavailable: {e}"))
                finally:
                    with self.cond:
                        self.busy = False
                        self.last_used = time.monotonic()
                self.pool.trim()  # an idle kernel may now be evicted, this one included
        finally:
            if self.process is not None:
                self.process.kill()
                self.process = None

    def _never_ran(self, job, why):
        job.finish(200, outcome("timeout", "TimeoutError",
                                f"Function exceeded its {ms(job.timeout_ms)} ms timeout while waiting {why}; "
                                "it never ran", 0))

    def _serve(self, job):
        if job.workspace != self.workspace:  # never: the pool routes by workspace id
            job.finish(500, error_body("KernelError", "refused: a run of another workspace reached this kernel"))
            return
        if time.monotonic() >= job.deadline:
            self._never_ran(job, "for its kernel (runs of a workspace are serialized)")
            return
        self._ensure_process()  # a process start, when needed, happens before taking a run slot
        if not self.pool.slots.acquire(job.deadline):
            self._never_ran(job, "for a free kernel (KERNEL_POOL_SIZE runs at a time)")
            return
        self.running = True
        try:
            if self.pool.closing:
                job.finish(503, error_body("ShuttingDown", "the Python API is shutting down"))
                return
            replace = self._run(job)
        finally:
            self.running = False
            self.pool.slots.release()
        if replace:
            self.restart()  # after answering: the caller does not wait for the new process

    def _run(self, job):
        """Runs the job on the process; True when the process must be replaced afterwards."""
        frame = b"%d\n%s" % (len(job.body), job.body)
        # A run that provably never started (the process was dead before reading a byte of it)
        # goes to a fresh process; twice at most, then it is a crash.
        for attempt in range(3):
            if attempt or not self.process.alive():  # alive: checked again, it may have died while waiting
                self.restart()
                if self.process is None:
                    raise KernelStartError("a kernel could not be started")
            started = time.monotonic()
            try:
                self.process.write(frame)
            except OSError:  # died while idle, unnoticed until now: the run did not start
                continue
            try:
                line = self.process.read_line(job.deadline)
            except EOFError:
                if attempt < 2 and self.process.unread() >= len(frame):
                    continue  # killed just before: it never read this run
                job.finish(200, self._crash_outcome((time.monotonic() - started) * 1000))
                return True
            if line is None:
                self.process.kill()
                job.finish(200, outcome("timeout", "TimeoutError",
                                        f"Function exceeded its {ms(job.timeout_ms)} ms timeout",
                                        (time.monotonic() - started) * 1000))
                return True
            job.finish(int(line[:3]), line[4:])
            return False
        raise KernelStartError("the kernel died before reading the run, three times")

    def _crash_outcome(self, duration_ms):
        proc = self.process.proc
        try:
            code = proc.wait(timeout=2)
        except subprocess.TimeoutExpired:  # closed its stdout but lives on: end it
            self.process.kill()
            code = proc.returncode
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
    """The kernels of the workspaces, keyed by workspace id, least recently used first; the run
    slots (KERNEL_POOL_SIZE); one spare process started ahead of need; and the thread that keeps
    the spare and ends idle kernels."""

    def __init__(self, config):
        self.config = config
        self.kernel_config = {
            "memoryMb": config["memory_mb"],
            "allowed": config["builtin_modules"] + config["packages"],
            "egress": config["egress"],
        }
        self.slots = Slots(config["pool_size"])
        self.kernels = collections.OrderedDict()  # workspace id -> Kernel, least recently used first
        self.lock = threading.Lock()  # guards kernels, spare, counters; taken before any Kernel.cond
        self.wake = threading.Condition(self.lock)  # the housekeeping thread waits on it
        self.spare = None  # a started, confined, ready Process holding no workspace
        self.spare_wanted = config["spare"]
        self.closing = False
        self.restarts = 0
        self.evictions = 0
        self.spare_misses = 0  # new workspaces or replacements that found no spare ready
        self.last_confinement = None
        self.housekeeper = threading.Thread(target=self._housekeeping, name="kernels-housekeeping", daemon=True)

    def start(self):
        """Starts the first spare (start-up fails here when a kernel cannot start at all)."""
        first = Process(self.kernel_config).start()
        if first.note:  # once, for the operator: function code is held by the soft layer only
            print(f"python-api: {first.note}; function code is confined by the audit hook only "
                  "(a soft layer, see docs/python-api.md)", file=sys.stderr, flush=True)
        self.last_confinement = first.confinement
        if self.spare_wanted:
            self.spare = first
        else:
            first.kill()
        self.housekeeper.start()

    def close(self):
        with self.lock:
            self.closing = True
            kernels = list(self.kernels.values())
            spare, self.spare = self.spare, None
            self.wake.notify_all()
        for kernel in kernels:
            kernel.close()
        for kernel in kernels:  # ends a run in progress at once; the thread answers its queue 503
            process = kernel.process
            if process is not None:
                process.kill()
        if spare is not None:
            spare.kill()

    def count_restart(self):
        with self.lock:
            self.restarts += 1

    # -- processes -------------------------------------------------------------------------------

    def take_process(self):
        """A blank process for a kernel: the spare when one is ready (a new spare then starts in
        the background), else one started now."""
        with self.lock:
            spare, self.spare = self.spare, None
            if self.spare_wanted:
                self.wake.notify_all()
        if spare is not None:
            if spare.alive():
                return spare
            spare.kill()  # killed from outside while it waited: clean up, start one now
        with self.lock:
            self.spare_misses += 1
        return Process(self.kernel_config).start()

    def _housekeeping(self):
        """Keeps one spare ready, and ends kernels idle past PYTHON_KERNEL_IDLE_TIMEOUT."""
        idle_timeout = self.config["idle_timeout_s"]
        check_every = min(max(idle_timeout / 4, 0.25), 30.0)
        failures = 0
        while True:
            with self.lock:
                if not self.closing and not (self.spare_wanted and self.spare is None):
                    self.wake.wait(check_every)
                if self.closing:
                    return
                need_spare = self.spare_wanted and self.spare is None
            self._end_idle(idle_timeout)
            if not need_spare:
                continue
            try:
                process = Process(self.kernel_config).start()
                failures = 0
            except (KernelStartError, OSError) as e:
                failures += 1
                print(f"python-api: the spare kernel: {e}", file=sys.stderr, flush=True)
                time.sleep(min(0.5 * 2 ** failures, 30.0))
                continue
            with self.lock:
                if self.closing or self.spare is not None:
                    surplus = process
                else:
                    self.spare, surplus = process, None
            if surplus is not None:
                surplus.kill()

    # -- kernels ---------------------------------------------------------------------------------

    def _evict_locked(self, kernel):
        """Removes an idle kernel (the caller checked, under its cond); its thread ends its process."""
        del self.kernels[kernel.workspace]
        self.evictions += 1
        kernel.close()

    def trim(self):
        """Past PYTHON_KERNELS_MAX, ends the least recently used idle kernels. Busy ones are kept:
        the set then stays over the cap until they are idle."""
        with self.lock:
            excess = len(self.kernels) - self.config["kernels_max"]
            if excess <= 0:
                return
            for kernel in list(self.kernels.values()):
                if excess <= 0:
                    break
                with kernel.cond:
                    if not kernel.idle():
                        continue
                self._evict_locked(kernel)
                excess -= 1

    def _end_idle(self, idle_timeout):
        cutoff = time.monotonic() - idle_timeout
        with self.lock:
            for kernel in list(self.kernels.values()):
                with kernel.cond:
                    if not kernel.idle() or kernel.last_used > cutoff:
                        continue
                self._evict_locked(kernel)

    def submit(self, workspace, job):
        """Queues the job on the workspace's kernel, created when it has none."""
        with self.lock:
            if self.closing:
                job.finish(503, error_body("ShuttingDown", "the Python API is shutting down"))
                return
            kernel = self.kernels.get(workspace)
            if kernel is None:
                kernel = self.kernels[workspace] = Kernel(self, workspace)
                kernel.thread.start()
            else:
                self.kernels.move_to_end(workspace)
            kernel.submit(job)  # under the pool lock: eviction cannot take it between lookup and submit
        self.trim()

    # -- health ----------------------------------------------------------------------------------

    def confinement(self, processes):
        """What the kernels are confined by: one value when they agree (they normally do)."""
        values = sorted({p.confinement for p in processes if p.confinement})
        if values:
            self.last_confinement = values[0] if len(values) == 1 else "mixed: " + ", ".join(values)
        return self.last_confinement

    def health(self):
        with self.lock:
            kernels = list(self.kernels.values())
            spare = self.spare
            restarts, evictions, misses = self.restarts, self.evictions, self.spare_misses
        processes = [k.process for k in kernels if k.process is not None]
        if spare is not None:
            processes.append(spare)
        return {"healthy": True, "protocol": PROTOCOL,
                "kernels": self.config["pool_size"],  # the field's meaning before per-workspace kernels
                "poolSize": self.config["pool_size"],
                "workspaceKernels": len(kernels),
                "kernelsMax": self.config["kernels_max"],
                "spare": 1 if spare is not None else 0,
                "processes": len(processes),
                "busy": sum(k.running for k in kernels),
                "queued": sum(len(k.queue) for k in kernels) + self.slots.waiting(),
                "restarts": restarts,
                "evictions": evictions,
                "spareMisses": misses,
                "idleTimeoutS": self.config["idle_timeout_s"],
                "confinement": self.confinement(processes)}

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
        job = Job(req["workspace"], body, req.get("timeoutMs") or self.config["timeout_ms"])
        # The kernel gets the body as received: it parses it once more, which is cheaper than
        # re-serialising it here.
        self.submit(req["workspace"], job)
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
