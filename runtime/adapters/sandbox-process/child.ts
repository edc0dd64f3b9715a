/**
 * A sandbox process: hosts one sandbox adapter (vm2 or QuickJS, each in worker threads) for the
 * workspaces the service assigns to it, and answers runs over IPC. It is started with an empty
 * environment and under Node's permission model (see index.ts), so user code that escapes its
 * sandbox still finds no secrets, no files beyond code and packages, and no child processes.
 */
import type { SandboxAdapter } from "../../types.ts";
import type { CompiledWorkspace } from "../../types.ts";
import type { FromChild, SandboxSpec, ToChild } from "./protocol.ts";

let adapter: SandboxAdapter | undefined;
const workspaces = new Map<string, CompiledWorkspace>();
const cancels = new Map<number, AbortController>();

async function createAdapter(sandbox: SandboxSpec): Promise<SandboxAdapter> {
  if (sandbox.kind === "quickjs") {
    const { createQuickJsWorkerAdapter } = await import("../quickjs/workers.ts");
    const quickjs = createQuickJsWorkerAdapter({ ...sandbox.options, workerUrl: new URL(sandbox.options.workerUrl) });
    await quickjs.ready();
    return quickjs;
  }
  const { createVm2Adapter } = await import("../vm2/index.ts");
  return createVm2Adapter({
    ...(sandbox.options as object),
    workerUrl: new URL(sandbox.options.workerUrl),
    // A thread stuck in native code past its deadline takes this process down: the last resort,
    // after which the service fails the runs here and starts a fresh process. SIGKILL, because
    // process.exit() would wait for that very thread to stop.
    onWorkerStuck: () => process.kill(process.pid, "SIGKILL"),
  });
}

/** Replies settled during one turn of the event loop go out as one message. */
let outbox: FromChild[] = [];
function send(message: FromChild): void {
  outbox.push(message);
  if (outbox.length === 1) {
    setImmediate(() => {
      const batch = outbox;
      outbox = [];
      process.send!(batch.length === 1 ? batch[0] : batch);
    });
  }
}

async function run(message: Extract<ToChild, { t: "run" }>): Promise<void> {
  if (message.workspace) workspaces.set(message.workspaceId, message.workspace);
  const workspace = workspaces.get(message.workspaceId);
  if (!workspace || workspace.version !== message.version) return send({ t: "missing", id: message.id });
  const controller = new AbortController();
  cancels.set(message.id, controller);
  try {
    const outcome = await adapter!.run({ workspace, functionName: message.functionName, parameters: message.parameters }, { timeoutMs: message.timeoutMs, signal: controller.signal });
    send({ t: "result", id: message.id, outcome });
  } finally {
    cancels.delete(message.id);
  }
}

function dispatch(message: ToChild): void {
  switch (message.t) {
    case "init":
      void createAdapter(message.sandbox).then((created) => {
        adapter = created;
        send({ t: "ready" });
      });
      return;
    case "run":
      void run(message);
      return;
    case "cancel":
      cancels.get(message.id)?.abort();
      return;
    case "unload":
      workspaces.delete(message.workspaceId);
      void adapter?.unload(message.workspaceId);
      return;
  }
}

process.on("message", (message: ToChild | ToChild[]) => {
  if (Array.isArray(message)) message.forEach(dispatch);
  else dispatch(message);
});
// The service going away (its IPC channel closing) ends this process too.
process.on("disconnect", () => {
  void adapter?.dispose().finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
});
