// A QuickJS worker thread: hosts one engine (./engine.mjs) for the workspaces the main thread
// assigns to it (./workers.ts). Plain JavaScript, so Node loads it as it is, from the sources and
// from the Nitro build alike.
//
// Messages in:  {t:"load", workspaceId, version, script} | {t:"run", id, workspaceId, fn, paramsJson, timeoutMs, deadline}
//               {t:"cancel", id} | {t:"unload", workspaceId}
// Messages out: {t:"ready"} | {t:"result", id, outcome}
import variant from "@jitl/quickjs-wasmfile-release-sync";
import { parentPort, workerData } from "node:worker_threads";
import { newQuickJSWASMModuleFromVariant, newVariant } from "quickjs-emscripten-core";
import { installEgressGuard } from "../../egress.mjs";
import { createQuickJsEngine } from "./engine.mjs";

// Before any guest runs: every connection of this thread (the guests' fetch) meets the egress policy.
installEgressGuard(workerData.egress);

// The wasm comes compiled by the main thread: V8 shares the compiled code between threads.
const module = await newQuickJSWASMModuleFromVariant(newVariant(variant, { wasmModule: workerData.wasmModule }));
// The deadline of the guest code running now (0: none), read by the main thread to tell an engine
// stuck in a native builtin, which ignores the interrupt handler, from a busy one.
const busy = new Float64Array(workerData.busy);
const engine = createQuickJsEngine(module, {
  ...workerData.engine,
  onGuestCode: (deadline) => {
    busy[0] = deadline;
  },
});

// The first sandbox of a thread pays for compiling the wasm code it runs: pay it before taking
// work. No message is handled before the listener below exists, so the id cannot clash.
engine.load("warm-up", "", "module.exports = function () { return { f: async function () { return new URL('http://h/').href; } }; };");
await engine.run(0, { workspaceId: "warm-up", fn: "f", paramsJson: "{}", timeoutMs: 10_000 });
engine.unload("warm-up");

function answer(id, outcome) {
  parentPort.postMessage({ t: "result", id, outcome });
}

parentPort.on("message", (message) => {
  switch (message.t) {
    case "load":
      return engine.load(message.workspaceId, message.version, message.script);
    case "run":
      return void engine.run(message.id, message).then(
        (outcome) => answer(message.id, outcome),
        (error) => answer(message.id, { ok: false, error: { kind: "function", name: "InternalError", message: String(error?.message) }, logs: [], durationMs: 0 }),
      );
    case "cancel":
      return engine.cancel(message.id);
    case "unload":
      return engine.unload(message.workspaceId);
  }
});
parentPort.postMessage({ t: "ready" });
