import { test, expect } from "vitest";
import { createStorage } from "unstorage";
import memory from "unstorage/drivers/memory";
import { createWorkspaceStore } from "../../storage/workspace-store.ts";
import { createVm2Adapter } from "../../runtime/adapters/vm2/index.ts";
import { createFunctionsService } from "../../runtime/service.ts";

test("smoke", async () => {
  const store = createWorkspaceStore<any>(createStorage({ driver: memory() }));
  const node = createVm2Adapter({ maxWorkers: 4 });
  const svc = createFunctionsService({ store, node, runTimeoutMs: 1000 });
  await svc.deploy("test", { functions: {
    hello: { code: "console.log('hi', {a:1}); return 'Hello ' + name;", parameters: { name: { type: "string", default: "x" } } },
    funcA: { code: "return 'world'" }, funcB: { code: "return 'hello ' + (await funcA());" },
    inc: { code: "cache.n = (cache.n||0)+1; return cache.n" },
    boom: { code: "const x = 1;\nthrow new Error('bad ' + x);" },
    spin: { code: "while(true){}" },
    never: { code: "await new Promise(() => {})" },
    imp: { code: "import { format } from 'util';\nimport crypto from 'crypto';\nreturn format('%s', crypto.createHash('sha1').update('a').digest('hex'))" },
    ev: { code: "return eval('1+1')" },
    fetchy: { code: "return typeof fetch + typeof URL + typeof Buffer + typeof setTimeout" },
  }});
  const t0 = performance.now();
  console.log(await svc.run("test", "hello", { name: "world" }), performance.now() - t0);
  const t1 = performance.now();
  console.log(await svc.run("test", "hello", {}), performance.now() - t1);
  console.log(await svc.run("test", "funcB"));
  console.log(await svc.run("test", "inc"), await svc.run("test", "inc"));
  console.log(await svc.run("test", "boom"));
  console.log(await svc.run("test", "imp"));
  console.log(await svc.run("test", "ev"));
  console.log(await svc.run("test", "fetchy"));
  console.log(await svc.run("test", "never"));
  console.log(await svc.run("test", "spin"));
  console.log(await svc.run("test", "inc"));
  const t2 = performance.now();
  for (let i = 0; i < 1000; i++) await svc.run("test", "hello", { name: "w" });
  console.log("1000 warm runs ms", performance.now() - t2);
  await svc.dispose();
}, 20000);
