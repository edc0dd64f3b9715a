// An h3 app of your own that embeds functions-service: the whole HTTP API under /functions, and a
// route of the app that runs code directly through a sandbox adapter. Plain JavaScript, run as it is,
// in a project where the packed package is installed (docs/embedding.md), or from this repository
// after `npm run build:lib` (the package imports itself by name):
//
//   PORT=3000 FUNCTIONS_DIR=data/functions node server.mjs
//   curl -X POST localhost:3000/functions/v2/functions/test -H 'content-type: application/json' \
//     -d '{"functions":{"hello":{"code":"return \"Hello \" + name;","parameters":{"name":{}}}}}'
//   curl -X POST localhost:3000/functions/v2/functions/test/run/hello -H 'content-type: application/json' \
//     -d '{"parameters":{"name":"world"}}'
//   curl 'localhost:3000/greet?name=you'
import { createServer } from "node:http";
import { createApp, defineEventHandler, getQuery, toNodeListener } from "h3";
import { createStorage } from "unstorage";
import { compileWorkspace, createApiHandler, createFunctionsService, createWorkspaceStore } from "functions-service";
import fsAtomic from "functions-service/fs-atomic";
import { createVm2Adapter } from "functions-service/vm2";

const node = createVm2Adapter({ maxWorkers: 50, memoryLimitMb: 64 });
const store = createWorkspaceStore(createStorage({ driver: fsAtomic({ base: process.env.FUNCTIONS_DIR ?? "data/functions" }) }));
const service = createFunctionsService({ store, node, runTimeoutMs: 5000 });

const app = createApp();
// The same routes as the standalone service, below the prefix: /functions/v2/functions/:workspace, ...
app.use("/functions", createApiHandler({ service, requestMaxBytes: 1024 * 1024 }));

// No store, no HTTP API: a workspace compiled in memory, one function run by the adapter.
const greeting = compileWorkspace("greeting", "v1", {
  functions: { greet: { code: "return `Hello ${name} from the sandbox`;", parameters: { name: { default: "there" } } } },
});
app.use(
  "/greet",
  defineEventHandler(async (event) => {
    const { name } = getQuery(event);
    const outcome = await node.run({ workspace: greeting, functionName: "greet", parameters: name ? { name } : {} }, { timeoutMs: 1000 });
    return outcome.ok ? { result: outcome.result } : { error: outcome.error.name, message: outcome.error.message };
  }),
);

const server = createServer(toNodeListener(app));
server.listen(Number(process.env.PORT ?? 3000), "127.0.0.1", () => console.log(`listening on http://127.0.0.1:${server.address().port}`));

process.once("SIGTERM", async () => {
  // Ends the sandbox's worker threads; they would not keep the process alive, but they hold memory.
  await service.dispose();
  server.close();
  server.closeAllConnections();
});
