/** One JSON line per event on stdout, the format log collectors parse without configuration. */
import type { ServiceLogger } from "../../runtime/service.ts";

function write(level: string, message: string, fields?: Record<string, unknown>): void {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), level, msg: message, ...fields })}\n`);
}

export const logger: ServiceLogger = {
  info: (message, fields) => write("info", message, fields),
  warn: (message, fields) => write("warn", message, fields),
  error: (message, fields) => write("error", message, fields),
};
