import { createStorage } from "unstorage";
import memory from "unstorage/drivers/memory";
import { runStorageConformance } from "./conformance.ts";

runStorageConformance({
  name: "memory",
  async create() {
    // One process, one map: a second instance can only share it by holding the same storage.
    const storage = createStorage({ driver: memory() });
    return { storage, open: () => storage, dispose: () => storage.dispose() };
  },
});
