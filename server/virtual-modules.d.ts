// Modules that exist only inside a Nitro build.

/** Nitro's polyfills, imported first by every entry. */
declare module "#nitro-internal-pollyfills" {}

/** QuickJS's wasm as a compiled module (unwasm's `?module` import; edge builds only). */
declare module "#quickjs-wasm/emscripten-module.wasm?module" {
  const module: WebAssembly.Module;
  export default module;
}
