/**
 * unstorage driver for a directory, like unstorage's `fs-lite`, but every write is atomic: the
 * value goes to a temporary file beside the target, is flushed, then renamed over it. A crash
 * mid-write leaves the old file or the new one, never a torn mix. Keys `a:b:c` map to `<base>/a/b/c`.
 */
import { randomBytes } from "node:crypto";
import { promises as fsp, readFileSync } from "node:fs";
import { dirname, join, resolve, sep } from "node:path";
import { defineDriver } from "unstorage";

const DRIVER_NAME = "fs-atomic";
const TEMP_MARK = ".fx-tmp-";

export interface FsAtomicOptions {
  /** Directory holding the keys; created on first write. */
  base: string;
}

function ignoreMissing(error: NodeJS.ErrnoException): null {
  if (error.code === "ENOENT" || error.code === "EISDIR") return null;
  throw error;
}

function readSync(path: string, encoding?: BufferEncoding): string | Buffer | null {
  try {
    return encoding ? readFileSync(path, encoding) : readFileSync(path);
  } catch (error) {
    return ignoreMissing(error as NodeJS.ErrnoException);
  }
}

export default defineDriver((options: FsAtomicOptions) => {
  if (!options?.base) throw new Error(`[unstorage] [${DRIVER_NAME}] missing required option 'base'`);
  const base = resolve(options.base);

  function pathOf(key: string): string {
    const segments = key.split(":").filter(Boolean);
    if (segments.some((s) => s === "." || s === ".." || s.includes("/") || s.includes("\\") || s.includes("\0"))) {
      throw new Error(`[unstorage] [${DRIVER_NAME}] invalid key ${JSON.stringify(key)}: no '.', '..', slashes or NUL in segments`);
    }
    return join(base, ...segments);
  }

  /**
   * Creates the temp file and its directory. Another process removing the directory's last file
   * (a delete through another instance) can take the directory away between the two: then again.
   */
  async function createTemp(temp: string) {
    for (let attempt = 1; ; attempt++) {
      await fsp.mkdir(dirname(temp), { recursive: true });
      try {
        return await fsp.open(temp, "wx");
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== "ENOENT" || attempt === 3) throw error;
      }
    }
  }

  async function writeAtomic(key: string, value: string | Uint8Array): Promise<void> {
    const target = pathOf(key);
    const temp = `${target}${TEMP_MARK}${randomBytes(6).toString("hex")}`;
    const handle = await createTemp(temp);
    try {
      try {
        await handle.writeFile(value);
        await handle.sync();
      } finally {
        await handle.close();
      }
      await fsp.rename(temp, target);
    } catch (error) {
      // A failed write (disk full, ...) leaves no temp file behind.
      await fsp.rm(temp, { force: true });
      throw error;
    }
  }

  async function listFiles(dir: string, prefix: string): Promise<string[]> {
    const entries = await fsp.readdir(dir, { withFileTypes: true }).catch(ignoreMissing);
    if (!entries) return [];
    const nested = await Promise.all(
      entries.map((entry) => {
        if (entry.isDirectory()) return listFiles(join(dir, entry.name), `${prefix}${entry.name}:`);
        return entry.name.includes(TEMP_MARK) ? [] : [`${prefix}${entry.name}`];
      }),
    );
    return nested.flat();
  }

  return {
    name: DRIVER_NAME,
    options,
    async hasItem(key) {
      return (await fsp.stat(pathOf(key)).catch(ignoreMissing)) !== null;
    },
    // Reads are synchronous on purpose: workspace files are small (a version marker is 24 bytes and
    // is read on every run), and a sync read of a few KB costs ~10 µs where a thread-pool round
    // trip costs ~0.3-0.5 ms.
    getItem(key) {
      return readSync(pathOf(key), "utf8");
    },
    getItemRaw(key) {
      return readSync(pathOf(key));
    },
    async getMeta(key) {
      const stat = await fsp.stat(pathOf(key)).catch(ignoreMissing);
      return stat ? { mtime: stat.mtime, size: stat.size } : {};
    },
    setItem: writeAtomic,
    setItemRaw: writeAtomic,
    async removeItem(key) {
      const path = pathOf(key);
      await fsp.unlink(path).catch(ignoreMissing);
      // Free the workspace's directory once its last file is gone; never the base itself.
      const parent = dirname(path);
      if (parent !== base && parent.startsWith(base + sep)) await fsp.rmdir(parent).catch(() => undefined);
    },
    getKeys(keyBase) {
      const prefix = keyBase ? keyBase.split(":").filter(Boolean) : [];
      const start = prefix.length > 0 ? pathOf(prefix.join(":")) : base;
      return listFiles(start, prefix.length > 0 ? `${prefix.join(":")}:` : "");
    },
    async clear() {
      const entries = await fsp.readdir(base).catch(() => []);
      await Promise.all(entries.map((name) => fsp.rm(join(base, name), { recursive: true, force: true })));
    },
  };
});
