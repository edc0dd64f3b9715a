/**
 * Workspace ids and the storage keys derived from them. An id is checked before it becomes a key,
 * so no id can name anything outside its own `<workspace>:` prefix (or, on the filesystem, outside
 * `<root>/<workspace>/`).
 */

/** Letters, digits, `.`, `_` and `-`, starting with a letter or digit, at most 128 characters. */
const WORKSPACE_ID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Why `id` is not a usable workspace id, or undefined when it is. */
export function workspaceIdProblem(id: string): string | undefined {
  if (WORKSPACE_ID.test(id)) return undefined;
  if (id.length === 0) return "must not be empty";
  if (id.length > 128) return "must be at most 128 characters";
  return "may contain only letters, digits, '.', '_' and '-', and must start with a letter or digit";
}

export const WORKSPACE_FILE = "workspace.yaml";
export const SCRIPT_FILE = "workspace.js";
export const VERSION_FILE = "version";

export const keys = {
  spec: (id: string) => `${id}:${WORKSPACE_FILE}`,
  script: (id: string) => `${id}:${SCRIPT_FILE}`,
  version: (id: string) => `${id}:${VERSION_FILE}`,
};
