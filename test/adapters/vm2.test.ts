import { createVm2Adapter } from "../../runtime/adapters/vm2/index.ts";
import { runConformance } from "./conformance.ts";

runConformance({ name: "vm2", create: () => createVm2Adapter({ maxWorkers: 16, memoryLimitMb: 64 }) });
