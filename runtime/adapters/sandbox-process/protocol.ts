/** Messages between the service and a sandbox process (Node IPC, structured clone). */
import type { EgressOptions } from "../../egress.mjs";
import type { CompiledWorkspace, RunOutcome } from "../../types.ts";

/** Which sandbox a process hosts, with its options as plain data (URLs as strings). */
export type SandboxSpec =
  | { kind: "vm2"; options: { workerUrl: string; maxWorkers?: number; idleTimeoutMs?: number; memoryLimitMb?: number; builtinModules?: string[]; bufferAllocLimitBytes?: number; externalMemoryLimitMb?: number; egress?: EgressOptions } }
  | { kind: "quickjs"; options: { workerUrl: string; memoryLimitMb?: number; maxRuntimes?: number; idleTimeoutMs?: number; threads?: number; egress?: EgressOptions } };

export type ToChild =
  | { t: "init"; sandbox: SandboxSpec }
  /** `workspace` travels with the first run of each version on a process only. */
  | { t: "run"; id: number; workspaceId: string; version: string; workspace?: CompiledWorkspace; functionName: string; parameters: Record<string, unknown>; timeoutMs: number }
  | { t: "cancel"; id: number }
  | { t: "unload"; workspaceId: string };

export type FromChild =
  | { t: "ready" }
  | { t: "result"; id: number; outcome: RunOutcome }
  /** The process does not hold that version (it was restarted): send the workspace again. */
  | { t: "missing"; id: number };
