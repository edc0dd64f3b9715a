"""Self-test of the Python API: python3 -m unittest runtime/python/test_server.py -v

Starts server.py on a free port (two runs at a time) and talks protocol v1 to it over HTTP; the
placement tests start servers of their own with other settings. The confinement tests also start
kernel.py alone, with one layer switched off, to prove the other.
"""

import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
import confine  # noqa: E402
from server import DEFAULT_BUILTIN_MODULES, ConfigError, load_config  # noqa: E402

POOL_SIZE = 2
CANARY = f"canary-{uuid.uuid4()}"  # in the server's environment: no answer may ever carry it


def landlock_abi():
    """The running kernel's Landlock ABI, asked here independently of confine.py: 0 when none."""
    if sys.platform != "linux" or os.uname().machine not in ("x86_64", "aarch64"):
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(ctypes.c_long(444), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(abi, 0)


LANDLOCK_ABI = landlock_abi()


def attempts(**tries):
    """A function body that runs each `name=expression` and returns {name: 'ok: <value>' or
    '<ExceptionName>: <message>'}, so one run reports on several attempts."""
    lines = ["import io, pathlib, tempfile, http.client", "out = {}"]
    for name, expression in tries.items():
        lines += ["try:", f"    out[{name!r}] = 'ok: ' + repr({expression})",
                  "except BaseException as e:", f"    out[{name!r}] = type(e).__name__ + ': ' + str(e)"]
    return {"code": "\n".join(lines + ["return out"])}

HELLO = {"code": "return 'Hello ' + name", "parameters": {"name": {"type": "string", "default": "x"}}}
PID = {"code": "import tempfile\nreturn tempfile._os.getpid()"}


def start_server(**settings):
    """server.py on a free port with these settings: (process, port)."""
    env = dict(os.environ, PORT="0", HOST="127.0.0.1", KERNEL_POOL_SIZE=str(POOL_SIZE), SECRET_CANARY=CANARY,
               PYTHON_BUILTIN_MODULES=DEFAULT_BUILTIN_MODULES + ", zoneinfo")
    env.update(settings)
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "server.py")], stdout=subprocess.PIPE, env=env, text=True)
    line = proc.stdout.readline()
    assert line.startswith("python-api listening on http://127.0.0.1:"), line
    return proc, int(line.rsplit(":", 1)[1])


def stop_server(proc):
    proc.send_signal(signal.SIGTERM)
    proc.stdout.close()
    assert proc.wait(timeout=10) == 0


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def old_kernel(workspace):
    """The kernel a workspace was pinned to before one kernel per workspace (crc32 % 2): the
    isolation tests pick ids that shared one then, so that they fail on a shared kernel."""
    return zlib.crc32(workspace.encode()) % 2


def same_old_kernel(base, other):
    return next(f"{other}-{i}" for i in range(100) if old_kernel(f"{other}-{i}") == old_kernel(base))


class Client:
    """Protocol v1 requests to the server at self.port."""

    port = None

    def request(self, method, path, body=None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, None if body is None else json.dumps(body),
                         {"Content-Type": "application/json"})
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def run_fn(self, workspace, function, parameters=None, functions=None, version="v1", **extra):
        body = {"protocol": 1, "workspace": workspace, "version": version, "function": function,
                "parameters": parameters or {}, "timeoutMs": 5000, **extra}
        if functions is not None:
            body["functions"] = functions
        return self.request("POST", "/v1/run", body)

    def ok(self, *args, **kwargs):
        status, answer = self.run_fn(*args, **kwargs)
        self.assertEqual(status, 200, answer)
        self.assertTrue(answer["ok"], answer)
        return answer

    def failed(self, *args, **kwargs):
        status, answer = self.run_fn(*args, **kwargs)
        self.assertEqual(status, 200, answer)
        self.assertFalse(answer["ok"], answer)
        return answer

    def health(self):
        status, answer = self.request("GET", "/v1/health")
        self.assertEqual(status, 200)
        return answer


class PythonApiTest(Client, unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.proc, cls.port = start_server()

    @classmethod
    def tearDownClass(cls):
        stop_server(cls.proc)

    # -- tests -----------------------------------------------------------------------------------

    def test_hello_parameters_and_defaults(self):
        fns = {"hello": HELLO}
        answer = self.ok("hello", "hello", {"name": "world", "undeclared": 1}, fns)
        self.assertEqual(answer["result"], "Hello world")
        self.assertEqual(answer["logs"], [])
        self.assertIsInstance(answer["durationMs"], float)
        self.assertEqual(self.ok("hello", "hello", {}, fns)["result"], "Hello x")
        # null is a value, not an absent key: no default, so 'Hello ' + None fails.
        self.assertEqual(self.failed("hello", "hello", {"name": None})["error"]["name"], "TypeError")

    def test_function_calls_function(self):
        fns = {"hello": HELLO,
               "shout": {"code": "return hello(name='a') + '!' + hello() + hello('b')"}}
        self.assertEqual(self.ok("calls", "shout", {}, fns)["result"], "Hello a!Hello xHello b")

    def test_cache_across_runs_and_fresh_on_new_version(self):
        fns = {"count": {"code": "cache['n'] = cache.get('n', 0) + 1\nreturn cache['n']"},
               "peek": {"code": "return cache.get('n')"}}
        self.assertEqual(self.ok("cache", "count", {}, fns)["result"], 1)
        self.assertEqual(self.ok("cache", "count")["result"], 2)
        self.assertEqual(self.ok("cache", "peek")["result"], 2)  # shared by the workspace's functions
        self.assertEqual(self.ok("cache", "count", {}, fns)["result"], 3)  # same version resent: kept
        self.assertEqual(self.ok("cache", "count", {}, fns, version="v2")["result"], 1)

    def test_print_and_logging_captured(self):
        code = ("print('a', 1, {'k': 2})\n"
                "import logging\n"
                "logging.info('info %s', 'x')\n"
                "logging.getLogger('mine').warning('careful')\n"
                "logging.getLogger('mine').debug('dbg')\n"
                "logging.error('bad')\n"
                "return None")
        answer = self.ok("logs", "f", {}, {"f": {"code": code}})
        self.assertIsNone(answer["result"])
        self.assertEqual([(e["level"], e["message"]) for e in answer["logs"]],
                         [("log", "a 1 {'k': 2}"), ("info", "info x"), ("warn", "careful"),
                          ("debug", "dbg"), ("error", "bad")])
        self.assertRegex(answer["logs"][0]["timestamp"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_blocked_import(self):
        fns = {"f": {"code": "import json, os\nreturn 1"}, "g": {"code": "import json\nreturn json.dumps([1])"}}
        answer = self.failed("imports", "f", {}, fns)
        self.assertEqual(answer["error"]["kind"], "function")
        self.assertEqual(answer["error"]["name"], "ImportError")
        self.assertIn("'os' is not allowed", answer["error"]["message"])
        self.assertEqual(self.ok("imports", "g")["result"], "[1]")  # json imports os itself: fine

    def test_timeout_kills_and_replaces_while_other_kernel_serves(self):
        slow_ws = "timeout-a"
        fast_ws = same_old_kernel(slow_ws, "timeout-b")  # once on the same kernel, now each on its own
        fns = {"loop": {"code": "while True: pass"}, "hello": HELLO}
        self.ok(fast_ws, "hello", {}, fns)  # loaded before, so the check below measures a warm run
        restarts = self.health()["restarts"]
        answers = {}
        slow = threading.Thread(target=lambda: answers.update(
            slow=self.run_fn(slow_ws, "loop", {}, fns, timeoutMs=1000)))
        started = time.monotonic()
        slow.start()
        time.sleep(0.2)
        self.assertEqual(self.ok(fast_ws, "hello", {"name": "b"})["result"], "Hello b")
        self.assertLess(time.monotonic() - started, 0.9)  # answered while the loop still runs
        slow.join(10)
        status, answer = answers["slow"]
        self.assertEqual(status, 200)
        self.assertFalse(answer["ok"])
        self.assertEqual(answer["error"]["kind"], "timeout")
        self.assertEqual(answer["error"]["name"], "TimeoutError")
        self.assertIn("1000 ms", answer["error"]["message"])
        self.assertLess(time.monotonic() - started, 3)
        self.assertEqual(self.health()["restarts"], restarts + 1)
        # The replacement kernel is fresh: it asks for the code again, then runs.
        self.assertEqual(self.run_fn(slow_ws, "hello")[0], 409)
        self.assertEqual(self.ok(slow_ws, "hello", {}, fns)["result"], "Hello x")

    def test_version_handshake(self):
        status, answer = self.run_fn("handshake", "hello")
        self.assertEqual(status, 409)
        self.assertEqual(answer["error"], "VersionUnknown")
        self.assertEqual(self.ok("handshake", "hello", {}, {"hello": HELLO})["result"], "Hello x")
        self.assertEqual(self.ok("handshake", "hello")["result"], "Hello x")
        self.assertEqual(self.run_fn("handshake", "hello", version="v0")[0], 409)  # another version
        status, answer = self.run_fn("handshake", "nope")
        self.assertEqual((status, answer["error"]), (404, "FunctionNotFound"))
        status, answer = self.run_fn("handshake", "nope", functions={"hello": HELLO})
        self.assertEqual((status, answer["error"]), (404, "FunctionNotFound"))

    def test_result_variable_style(self):
        fns = {"old": {"code": "x = 20\nresult = x * 2 + 2"},
               "both": {"code": "result = 1\nif flag:\n    return 'early'", "parameters": {"flag": {}}},
               "none": {"code": "# nothing to do"},
               "sibling": {"code": "return old()"}}
        self.assertEqual(self.ok("result", "old", {}, fns)["result"], 42)
        self.assertEqual(self.ok("result", "both", {"flag": True})["result"], "early")
        self.assertEqual(self.ok("result", "both", {"flag": False})["result"], 1)
        self.assertIsNone(self.ok("result", "none")["result"])
        self.assertEqual(self.ok("result", "sibling")["result"], 42)

    def test_traceback_line_numbers(self):
        fns = {"outer": {"code": "x = 1\n\ny = inner(d=0)\nreturn y"},
               "inner": {"code": "'''doc\nstring'''\nreturn 1 / d", "parameters": {"d": {}}}}
        error = self.failed("trace", "outer", {}, fns)["error"]
        self.assertEqual((error["kind"], error["name"], error["message"]),
                         ("function", "ZeroDivisionError", "division by zero"))
        self.assertIn('  File "outer", line 3, in outer\n    y = inner(d=0)\n', error["stack"])
        self.assertIn('  File "inner", line 3, in inner\n    return 1 / d\n', error["stack"])
        self.assertNotIn("kernel.py", error["stack"])

    def test_syntax_error_and_unserialisable_result(self):
        fns = {"broken": {"code": "x = 1\nif x\n    pass"}, "fine": {"code": "return {1, 2}"}}
        error = self.failed("syntax", "broken", {}, fns)["error"]
        self.assertEqual((error["kind"], error["name"]), ("function", "SyntaxError"))
        self.assertIn("'broken'", error["message"])
        self.assertIn("line 2", error["message"])
        error = self.failed("syntax", "fine")["error"]
        self.assertEqual((error["kind"], error["name"]), ("function", "TypeError"))
        self.assertIn("not JSON-serialisable", error["message"])

    def test_bad_requests_and_health(self):
        status, answer = self.request("POST", "/v1/run", {"protocol": 2})
        self.assertEqual((status, answer["error"]), (400, "BadRequest"))
        status, answer = self.request("POST", "/v1/run", {"protocol": 1, "workspace": "w", "version": "v",
                                                          "function": "f", "parameters": []})
        self.assertEqual((status, answer["error"]), (400, "BadRequest"))
        health = self.health()
        self.assertEqual((health["healthy"], health["protocol"], health["kernels"]), (True, 1, POOL_SIZE))
        self.assertEqual((health["poolSize"], health["kernelsMax"], health["idleTimeoutS"]), (POOL_SIZE, 64, 3600))
        self.assertIsInstance(health["workspaceKernels"], int)
        self.assertLessEqual(health["processes"], health["workspaceKernels"] + 1)

    def test_new_variables_are_validated_naming_the_variable(self):
        for name, value in (("PYTHON_KERNELS_MAX", "0"), ("PYTHON_KERNELS_MAX", "many"),
                            ("PYTHON_KERNEL_IDLE_TIMEOUT", "0"), ("PYTHON_KERNEL_IDLE_TIMEOUT", "1.5"),
                            ("KERNEL_POOL_SIZE", "0")):
            with self.assertRaisesRegex(ConfigError, f"^invalid {name}="):
                load_config({name: value})
        config = load_config({"PYTHON_KERNELS_MAX": " 3 ", "PYTHON_KERNEL_IDLE_TIMEOUT": ""})
        self.assertEqual((config["kernels_max"], config["idle_timeout_s"]), (3, 3600))

    def test_each_workspace_has_a_kernel_process_of_its_own(self):
        a = "own-a"
        b = same_old_kernel(a, "own-b")  # once pinned to the same kernel
        pid_a = self.ok(a, "pid", {}, {"pid": PID})["result"]
        pid_b = self.ok(b, "pid", {}, {"pid": PID})["result"]
        self.assertNotEqual(pid_a, pid_b)
        self.assertEqual((parent_of(pid_a), parent_of(pid_b)), (self.proc.pid, self.proc.pid))
        self.assertEqual(self.ok(a, "pid")["result"], pid_a)  # the same kernel on every run
        self.assertEqual(self.ok(b, "pid")["result"], pid_b)

    def test_a_workspace_cannot_reach_another_through_the_process(self):
        victim = "victim"
        attacker = same_old_kernel(victim, "attacker")  # once pinned to the victim's kernel
        fns = {"keep": {"code": "cache['secret'] = secret\nglobal SHARED\nSHARED = secret\nreturn 'kept'",
                        "parameters": {"secret": {}}},
               "read": {"code": "import json, pathlib, tempfile\n"
                                "main = pathlib.sys.modules['__main__']\n"
                                "return {'cache': dict(cache), 'pid': tempfile._os.getpid(),\n"
                                "        'main': getattr(main, 'LEAK', None), 'json': getattr(json, 'LEAK', None),\n"
                                "        'builtin': getattr(__builtins__, 'get', dict().get)('LEAK')}"}}
        self.assertEqual(self.ok(victim, "keep", {"secret": "s3cret"}, fns)["result"], "kept")
        before = self.ok(victim, "read")["result"]
        attack = {"code": "\n".join([
            "import json, pathlib, tempfile",
            "main = pathlib.sys.modules['__main__']",
            "seen, out = [], {}",
            # Every frame up the stack, the kernel's own included: its workspaces and their caches.
            "f = pathlib.sys._getframe()",
            "while f is not None:",
            "    for value in list(f.f_locals.values()):",
            "        spaces = getattr(value, 'workspaces', None)",
            "        if isinstance(spaces, dict):",
            "            for ws_id, ws in spaces.items():",
            "                seen.append(ws_id)",
            "                ws.globals['cache']['secret'] = 'stolen'",
            "                ws.globals['SHARED'] = 'stolen'",
            "    f = f.f_back",
            "out['seen'] = sorted(set(seen))",
            # Module globals everyone in this process would see, and the kernel's classes patched.
            "main.LEAK = json.LEAK = pathlib.sys.modules['builtins'].LEAK = 'A was here'",
            "def hijacked(self, req):",
            "    return 200, json.dumps({'ok': True, 'result': 'hijacked', 'logs': [], 'durationMs': 0})",
            "try:",
            "    main.Kernel.handle = hijacked",
            "    out['patched'] = True",
            "except Exception as e:",
            "    out['patched'] = repr(e)",
            "out['pid'] = tempfile._os.getpid()",
            "return out"])}
        result = self.ok(attacker, "attack", {}, {"attack": attack})["result"]
        self.assertEqual(result["seen"], [attacker])  # its own kernel holds nothing else
        self.assertIs(result["patched"], True)  # it broke its own process, and only that
        self.assertEqual(self.ok(attacker, "anything")["result"], "hijacked")
        after = self.ok(victim, "read")["result"]
        self.assertEqual(after, before)
        self.assertEqual(after["cache"], {"secret": "s3cret"})
        self.assertEqual((after["main"], after["json"], after["builtin"]), (None, None, None))
        self.assertNotEqual(after["pid"], result["pid"])

    # -- confinement (docs/python-api.md, "Confinement") ----------------------------------------

    def refused(self, workspace, body, names, pattern=r"^PermissionError: "):
        """Runs an attempts() body; every attempt in `names` must have been refused."""
        result = self.ok(workspace, "f", {}, {"f": body})["result"]
        self.assertNotIn(CANARY, json.dumps(result))
        for name in names:
            self.assertRegex(result[name], pattern, name)
        return result

    def test_confinement_in_force_is_reported(self):
        # Landlock where the system has it: a kernel that silently went without it fails here.
        expected = f"landlock-abi-{LANDLOCK_ABI}" if LANDLOCK_ABI >= 1 else "audit-hook"
        self.assertEqual(self.health()["confinement"], expected)

    def test_files_of_other_processes_and_the_system_are_out_of_reach(self):
        pid = self.proc.pid
        result = self.refused("files", attempts(
            server_io=f"io.open('/proc/{pid}/environ', 'rb').read()",
            server_pathlib=f"pathlib.Path('/proc/{pid}/environ').read_text()",
            init_io="io.open('/proc/1/environ', 'rb').read()",
            init_pathlib="pathlib.Path('/proc/1/environ').read_bytes()",
            through_root=f"pathlib.Path('/proc/self/root/proc/{pid}/environ').read_bytes()",
            passwd="pathlib.Path('/etc/passwd').read_text()",
            listing="[p.name for p in pathlib.Path('/').iterdir()]",
            service_files=f"pathlib.Path({os.path.join(HERE, '..', '..', 'package.json')!r}).read_text()",
            write_outside="pathlib.Path('/tmp', 'escaped-' + str(id(out))).write_text('x')",
        ), ["server_io", "server_pathlib", "init_io", "init_pathlib", "through_root", "passwd", "listing",
            "service_files", "write_outside"])
        self.assertIn("not allowed in functions", result["server_io"])

    def test_no_programs_no_signals_and_the_server_survives(self):
        pid = self.proc.pid
        result = self.refused("signals", attempts(
            system="pathlib.os.system('true')",
            spawn="pathlib.os.posix_spawn('/bin/true', ['true'], {})",
            execv="pathlib.os.execv('/bin/true', ['true'])",
            fork="pathlib.os.fork()",
            kill_server=f"tempfile._os.kill({pid}, 9)",
            kill_init="tempfile._os.kill(1, 0)",
            ctypes="tempfile._os.sys.modules['ctypes'].CDLL(None)",
        ), ["system", "spawn", "execv", "fork", "kill_server", "kill_init", "ctypes"])
        self.assertIn("running programs", result["system"])
        self.assertIn("signals", result["kill_server"])
        self.assertIsNone(self.proc.poll())
        self.assertEqual(self.health()["healthy"], True)
        self.assertEqual(self.ok("signals", "f", {}, {"f": HELLO}, version="v2")["result"], "Hello x")

    def test_no_listening_sockets_and_no_private_addresses(self):
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(0.2)
        try:
            port = listener.getsockname()[1]
            result = self.refused("sockets", attempts(
                bind="http.client.socket.socket().bind(('127.0.0.1', 0))",
                bind_udp="http.client.socket.socket(type=http.client.socket.SOCK_DGRAM).bind(('0.0.0.0', 0))",
                loopback=f"http.client.socket.create_connection(('127.0.0.1', {port}), timeout=2)",
                by_name=f"http.client.socket.create_connection(('localhost', {port}), timeout=2)",
                mapped=f"http.client.socket.create_connection(('::ffff:127.0.0.1', {port}), timeout=2)",
                metadata="http.client.socket.create_connection(('169.254.169.254', 80), timeout=2)",
                private="http.client.socket.create_connection(('10.0.0.1', 80), timeout=2)",
                udp="http.client.socket.socket(type=http.client.socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', 53))",
                unix="http.client.socket.socket(http.client.socket.AF_UNIX).connect('/var/run/docker.sock')",
                urllib=f"__import__('urllib.request').request.urlopen('http://127.0.0.1:{port}/', timeout=2)",
            ), ["bind", "bind_udp", "loopback", "by_name", "mapped", "metadata", "private", "udp", "unix"])
            self.assertIn("listening", result["bind"])
            self.assertIn("connection to 127.0.0.1 is not allowed by the egress policy", result["loopback"])
            self.assertIn("localhost (127.0.0.1)", result["by_name"])
            self.assertIn("169.254.169.254", result["metadata"])
            self.assertIn("local socket", result["unix"])
            self.assertIn("egress policy", result["urllib"])
            with self.assertRaises(socket.timeout):  # nothing got through
                listener.accept()
        finally:
            listener.close()

    def test_scratch_directory_and_the_standard_library_work(self):
        code = ("import tempfile, pathlib, json, datetime, zoneinfo, logging\n"
                "with tempfile.NamedTemporaryFile('w+') as f:\n"
                "    f.write('round trip')\n"
                "    f.seek(0)\n"
                "    text = f.read()\n"
                "with tempfile.TemporaryDirectory() as d:\n"
                "    (pathlib.Path(d) / 'a.json').write_text(json.dumps([1]))\n"
                "    loaded = json.loads((pathlib.Path(d) / 'a.json').read_text())\n"
                "pathlib.Path('relative.txt').write_text('cwd is the scratch dir')\n"
                "paris = datetime.datetime(2024, 7, 1, 12, tzinfo=zoneinfo.ZoneInfo('Europe/Paris'))\n"
                "logging.info('done')\n"
                "return [text, loaded, paris.isoformat(), tempfile.gettempdir()]")
        answer = self.ok("scratch", "f", {}, {"f": {"code": code}})
        text, loaded, paris, scratch = answer["result"]
        self.assertEqual((text, loaded, paris), ("round trip", [1], "2024-07-01T12:00:00+02:00"))
        self.assertEqual(answer["logs"][0]["message"], "done")
        self.assertRegex(os.path.basename(scratch), r"^python-api-kernel-\d+-")
        self.assertTrue(os.path.exists(os.path.join(scratch, "relative.txt")))
        # A replaced kernel takes its scratch directory with it.
        self.failed("scratch", "loop", {}, {"f": {"code": code}, "loop": {"code": "while True: pass"}},
                    version="v2", timeoutMs=300)
        self.assertFalse(os.path.exists(scratch))

    def test_egress_policy_matches_the_node_side(self):
        check = confine.make_egress_check()
        for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "::ffff:7f00:1", "::127.0.0.1", "0.0.0.0", "::",
                        "10.1.2.3", "172.16.0.1", "192.168.1.1", "100.64.0.1", "169.254.169.254", "fe80::1%eth0",
                        "fc00::1", "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "224.0.0.1", "255.255.255.255"):
            self.assertIsNotNone(check(address, 80), address)
        for address in ("93.184.216.34", "2606:2800:220:1::", "8.8.8.8"):
            self.assertIsNone(check(address, 443), address)
        for spelling in ("0x7f000001", "2130706433", "127.1", "0127.0.0.1", "localhost", ""):
            self.assertIn("not an IP address", check(spelling, 80), spelling)
        check = confine.make_egress_check("public-only", ["10.1.0.0/16", "*.corp.example"], ["10.1.2.3", "bad.example"],
                                          service_port=4000, is_local=lambda address: address == "10.9.9.9")
        self.assertIsNone(check("10.1.5.5", 80))
        self.assertIn("FUNCTIONS_EGRESS_DENY", check("10.1.2.3", 80))  # deny wins over allow
        self.assertIsNone(check("10.7.0.1", 80, "api.corp.example"))
        self.assertIsNotNone(check("10.7.0.1", 80, "corp.example.evil"))
        self.assertIn("FUNCTIONS_EGRESS_DENY", check("8.8.8.8", 80, "bad.example"))
        self.assertIsNone(check("93.184.216.34", 4000))  # the service's port on a remote address is someone else's
        self.assertIn("own API", check("10.9.9.9", 4000))  # on a local one it is the service
        self.assertIn("own API", check("127.0.0.1", 4000))  # loopback: always
        check = confine.make_egress_check("allow-all", [], ["169.254.169.254"], service_port=4000)
        self.assertIsNone(check("127.0.0.1", 80))
        self.assertIsNotNone(check("169.254.169.254", 80))
        self.assertIn("own API", check("127.0.0.1", 4000))

    def test_egress_settings_are_validated_naming_the_variable(self):
        for name, value in (("FUNCTIONS_EGRESS_ALLOW", "10.0.0.0/33"), ("FUNCTIONS_EGRESS_DENY", "exa mple"),
                            ("FUNCTIONS_EGRESS_POLICY", "none"), ("FUNCTIONS_SERVICE_PORT", "http")):
            with self.assertRaisesRegex(ConfigError, f"^invalid {name}"):
                load_config({name: value})
        config = load_config({"FUNCTIONS_EGRESS_ALLOW": " 10.1.2.3 , api.internal", "FUNCTIONS_SERVICE_PORT": "4000"})
        self.assertEqual(config["egress"], {"policy": "public-only", "allow": ["10.1.2.3", "api.internal"],
                                            "deny": [], "servicePort": 4000})


class PlacementTest(Client, unittest.TestCase):
    """Servers of their own: the kernel cap, the idle timeout and the run slots."""

    def serve(self, **settings):
        proc, self.port = start_server(**settings)
        self.addCleanup(stop_server, proc)
        return proc

    def test_the_least_recently_used_idle_kernel_is_evicted_past_the_cap(self):
        self.serve(PYTHON_KERNELS_MAX="2")
        pids = {ws: self.ok(ws, "pid", {}, {"pid": PID})["result"] for ws in ("lru-a", "lru-b")}
        self.assertEqual(self.ok("lru-a", "pid")["result"], pids["lru-a"])  # b is now the least recently used
        pids["lru-c"] = self.ok("lru-c", "pid", {}, {"pid": PID})["result"]
        health = self.health()
        self.assertEqual((health["workspaceKernels"], health["kernelsMax"], health["evictions"]), (2, 2, 1))
        # b's kernel is gone (its process too); a and c kept theirs, code and all.
        self.assertTrue(waited(lambda: not os.path.exists(f"/proc/{pids['lru-b']}")), pids)
        self.assertEqual(self.ok("lru-a", "pid")["result"], pids["lru-a"])
        self.assertEqual(self.ok("lru-c", "pid")["result"], pids["lru-c"])
        status, answer = self.run_fn("lru-b", "pid")
        self.assertEqual((status, answer["error"]), (409, "VersionUnknown"))  # a fresh kernel
        self.assertNotIn(self.ok("lru-b", "pid", {}, {"pid": PID})["result"], pids.values())

    def test_busy_kernels_are_not_evicted_and_the_set_is_trimmed_when_they_are_idle(self):
        self.serve(PYTHON_KERNELS_MAX="1")
        fns = {"nap": {"code": "import time\ntime.sleep(seconds)\nreturn 'rested'", "parameters": {"seconds": {}}},
               "pid": PID}
        answers = {}
        naps = [threading.Thread(target=lambda ws=ws, s=s: answers.update({ws: self.run_fn(ws, "nap", {"seconds": s}, fns)}))
                for ws, s in (("busy-a", 0.8), ("busy-b", 1.2))]
        for nap in naps:
            nap.start()
            time.sleep(0.3)
        health = self.health()  # both busy: over the cap, nothing cut short
        self.assertEqual((health["workspaceKernels"], health["busy"], health["evictions"]), (2, 2, 0))
        for nap in naps:
            nap.join(10)
        self.assertEqual([answers[ws][1].get("result") for ws in ("busy-a", "busy-b")], ["rested", "rested"])
        # a, the least recently used, went as soon as it was idle; b stays.
        self.assertTrue(waited(lambda: self.health()["workspaceKernels"] == 1))
        self.assertEqual(self.run_fn("busy-b", "pid")[0], 200)
        self.assertEqual(self.run_fn("busy-a", "pid")[0], 409)

    def test_idle_kernels_end_after_the_idle_timeout(self):
        self.serve(PYTHON_KERNEL_IDLE_TIMEOUT="1")
        pid = self.ok("idle", "pid", {}, {"pid": PID})["result"]
        self.assertEqual(self.health()["workspaceKernels"], 1)
        self.assertTrue(waited(lambda: self.health()["workspaceKernels"] == 0, 5))
        self.assertTrue(waited(lambda: not os.path.exists(f"/proc/{pid}")))
        self.assertEqual(self.run_fn("idle", "pid")[0], 409)

    def test_pool_size_one_serializes_the_runs_of_two_workspaces(self):
        self.serve(KERNEL_POOL_SIZE="1")
        fns = {"nap": {"code": "import time\ntime.sleep(0.8)\nreturn time.time()"},
               "now": {"code": "import time\nreturn time.time()"}}
        self.ok("slot-a", "now", {}, fns)
        self.ok("slot-b", "now", {}, fns)
        answers = {}
        first = threading.Thread(target=lambda: answers.update(a=self.run_fn("slot-a", "nap")))
        started = time.time()
        first.start()
        time.sleep(0.2)
        second = self.ok("slot-b", "now")["result"]  # waits for a's run to end
        first.join(10)
        ended_a = answers["a"][1]["result"]
        self.assertGreaterEqual(second, ended_a)
        self.assertGreater(second - started, 0.7)
        # A run whose deadline passes while it waits for the slot answers that it never ran.
        first = threading.Thread(target=lambda: answers.update(a=self.run_fn("slot-a", "nap")))
        first.start()
        time.sleep(0.2)
        answer = self.failed("slot-b", "now", timeoutMs=300)
        self.assertEqual((answer["error"]["kind"], answer["error"]["name"]), ("timeout", "TimeoutError"))
        self.assertIn("300 ms", answer["error"]["message"])
        self.assertIn("never ran", answer["error"]["message"])
        first.join(10)
        self.assertTrue(answers["a"][1]["ok"])
        self.assertEqual(self.health()["restarts"], 0)  # nothing was killed: b's kernel never ran it


def waited(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class KernelAloneTest(unittest.TestCase):
    """kernel.py started directly, with one layer switched off by a test-only configuration key
    (the server never sets them): each layer must hold on its own."""

    def start(self, **switches):
        scratch = tempfile.mkdtemp(prefix="python-api-test-")
        self.addCleanup(shutil.rmtree, scratch, True)
        config = {"memoryMb": 256, "allowed": ["io", "pathlib", "tempfile", "http"], "scratchDir": scratch,
                  "egress": {"policy": "public-only", "allow": [], "deny": [], "servicePort": None}, **switches}
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "kernel.py"), json.dumps(config)], cwd=scratch,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env={"PATH": os.environ["PATH"], "TMPDIR": scratch})
        self.addCleanup(proc.wait)
        self.addCleanup(proc.stdin.close)
        self.addCleanup(proc.stdout.close)
        ready = proc.stdout.readline()
        self.assertTrue(ready.startswith(b"200 "), ready)
        return proc, json.loads(ready[4:])

    def run_body(self, proc, body):
        request = json.dumps({"protocol": 1, "workspace": "w", "version": str(time.monotonic()), "function": "f",
                              "functions": {"f": body}}).encode()
        proc.stdin.write(b"%d\n%s" % (len(request), request))
        proc.stdin.flush()
        answer = json.loads(proc.stdout.readline()[4:])
        self.assertTrue(answer["ok"], answer)
        return answer["result"]

    @unittest.skipUnless(LANDLOCK_ABI >= 1, "this system has no Landlock")
    def test_landlock_alone_holds(self):
        proc, ready = self.start(auditHook=False)
        self.assertEqual(ready["confinement"], f"landlock-abi-{LANDLOCK_ABI}")
        victim = subprocess.Popen(["sleep", "30"])
        self.addCleanup(victim.wait)
        self.addCleanup(victim.kill)
        result = self.run_body(proc, attempts(
            parent_environ=f"io.open('/proc/{os.getpid()}/environ', 'rb').read()",
            init_environ="pathlib.Path('/proc/1/environ').read_bytes()",
            passwd="pathlib.Path('/etc/passwd').read_text()",
            listing="pathlib.os.listdir('/')",
            write_outside="pathlib.Path('/tmp', 'escaped-' + str(id(out))).write_text('x')",
            execv="pathlib.os.execv('/bin/true', ['true'])",
            kill=f"tempfile._os.kill({victim.pid}, 9)",
            listen="http.client.socket.socket().bind(('127.0.0.1', 0))",
            system="pathlib.os.system('true')",
            scratch="(pathlib.Path(tempfile.gettempdir()) / 'x').write_text('ok')",
        ))
        for name in ("parent_environ", "init_environ", "passwd", "listing", "write_outside", "execv", "kill", "listen"):
            self.assertRegex(result[name], r"^PermissionError: \[Errno (13|1)\]", name)  # the system's refusal
        self.assertNotEqual(result["system"], "ok: 0")  # the shell cannot be executed
        self.assertEqual(result["scratch"], "ok: 2")
        self.assertIsNone(victim.poll())

    def test_audit_hook_alone_holds(self):
        proc, ready = self.start(landlock=False)
        self.assertEqual(ready["confinement"], "audit-hook")
        self.assertIn("Landlock", ready["note"])
        result = self.run_body(proc, attempts(
            parent_environ=f"io.open('/proc/{os.getpid()}/environ', 'rb').read()",
            passwd="pathlib.Path('/etc/passwd').read_text()",
            system="pathlib.os.system('true')",
            kill=f"tempfile._os.kill({os.getpid()}, 0)",
            listen="http.client.socket.socket().bind(('127.0.0.1', 0))",
            metadata="http.client.socket.create_connection(('169.254.169.254', 80), timeout=1)",
            symlinked="pathlib.Path(tempfile.gettempdir(), 'l').symlink_to('/etc/passwd') or "
                      "pathlib.Path(tempfile.gettempdir(), 'l').read_text()",
            scratch="(pathlib.Path(tempfile.gettempdir()) / 'x').write_text('ok')",
            scratch_itself="pathlib.os.rename(tempfile.gettempdir(), tempfile.gettempdir() + '-moved')",
        ))
        for name in ("parent_environ", "passwd", "system", "kill", "listen", "metadata", "symlinked", "scratch_itself"):
            self.assertRegex(result[name], r"^PermissionError: .*not allowed", name)
        self.assertEqual(result["scratch"], "ok: 2")


if __name__ == "__main__":
    unittest.main()
