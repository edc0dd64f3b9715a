// What function code cannot do through the allowed builtins, whichever way it loads them (the
// sandbox's `require`, or a shared package loaded on the host side), and whoever calls them
// (undici's `fetch` decompresses through `zlib` too).
//
// Applied once to the worker thread's own instances of the modules, before any code is loaded: a
// worker thread has its own copy of every builtin module, so this never touches the HTTP process.
// vm2 already refuses `crypto.setEngine`/`setFips`, hands out a sandbox-only `http(s).globalAgent`
// and a read-only view of each module; the worker narrows `dns` (see worker.mjs). This adds what
// would otherwise reach past the run or the thread: listening sockets, stream defaults, and
// decompression output, which lives outside the V8 heap and so outside the heap limit.
import net from "node:net";
import stream from "node:stream";
import zlib from "node:zlib";

/** Zlib classes that decompress; a name missing from this Node version is skipped (Zstd: Node 22.15+). */
const DECOMPRESSORS = ["Gunzip", "Inflate", "InflateRaw", "Unzip", "BrotliDecompress", "ZstdDecompress"];

/** Replaces a member for good: code that reaches the object later cannot put the original back. */
function replace(target, name, value) {
  Object.defineProperty(target, name, { value, writable: false, configurable: false, enumerable: true });
}

function refuse(target, name, message) {
  replace(target, name, () => {
    throw new Error(message);
  });
}

function outputTooLarge(maxBytes) {
  return Object.assign(new RangeError(`Cannot create a Buffer larger than ${maxBytes} bytes (decompressed output limit)`), { code: "ERR_BUFFER_TOO_LARGE" });
}

/** A decompression stream that fails once its output passes `maxBytes` in total. */
function capOutput(decompressor, maxBytes) {
  let total = 0;
  const push = decompressor.push;
  decompressor.push = function (chunk, encoding) {
    total += chunk?.length ?? 0;
    if (total <= maxBytes) return push.call(this, chunk, encoding);
    this.destroy(outputTooLarge(maxBytes));
    return false;
  };
  return decompressor;
}

/**
 * @param {{ maxDecompressedBytes: number }} limits the most bytes one decompression may produce:
 *   the one-shot forms get `maxOutputLength` (never above it), the streams fail past it.
 */
export function hardenBuiltins({ maxDecompressedBytes }) {
  refuse(net.Server.prototype, "listen", "Function code cannot listen for connections: a server would outlive its run and take a port of the whole host");
  refuse(stream, "setDefaultHighWaterMark", "stream.setDefaultHighWaterMark is not available to function code: it changes every stream of the worker");

  const capped = (options) => ({ ...options, maxOutputLength: Math.min(options?.maxOutputLength ?? Infinity, maxDecompressedBytes) });
  for (const name of DECOMPRESSORS.filter((n) => typeof zlib[n] === "function")) {
    const Original = zlib[name];
    // Callable with or without `new`, like zlib's own; instances keep the original prototype.
    function Capped(options) {
      return capOutput(new Original(options), maxDecompressedBytes);
    }
    Capped.prototype = Original.prototype;
    const oneShot = name[0].toLowerCase() + name.slice(1);
    const async = zlib[oneShot];
    const sync = zlib[`${oneShot}Sync`];
    replace(zlib, name, Capped);
    replace(zlib, `create${name}`, Capped);
    replace(zlib, oneShot, (buffer, options, callback) => (typeof options === "function" ? async(buffer, capped(), options) : async(buffer, capped(options), callback)));
    replace(zlib, `${oneShot}Sync`, (buffer, options) => sync(buffer, capped(options)));
  }
}
