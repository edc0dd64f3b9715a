"""Self-test of the Python API: python3 -m unittest runtime/python/test_server.py -v

Starts server.py on a free port with two kernels and talks protocol v1 to it over HTTP.
"""

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.dont_write_bytecode = True  # no __pycache__ left in the source tree
from server import kernel_index  # noqa: E402  (the routing the server uses)

POOL_SIZE = 2

HELLO = {"code": "return 'Hello ' + name", "parameters": {"name": {"type": "string", "default": "x"}}}


class PythonApiTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        env = dict(os.environ, PORT="0", HOST="127.0.0.1", KERNEL_POOL_SIZE=str(POOL_SIZE))
        cls.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "server.py")],
                                    stdout=subprocess.PIPE, env=env, text=True)
        line = cls.proc.stdout.readline()
        assert line.startswith("python-api listening on http://127.0.0.1:"), line
        cls.port = int(line.rsplit(":", 1)[1])

    @classmethod
    def tearDownClass(cls):
        cls.proc.send_signal(signal.SIGTERM)
        cls.proc.stdout.close()
        assert cls.proc.wait(timeout=10) == 0

    # -- helpers ---------------------------------------------------------------------------------

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
        fast_ws = next(f"timeout-b{i}" for i in range(100)
                       if kernel_index(f"timeout-b{i}", POOL_SIZE) != kernel_index(slow_ws, POOL_SIZE))
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


if __name__ == "__main__":
    unittest.main()
