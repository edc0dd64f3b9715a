/** The storage variables, as start-up reads them: a bad value stops the service naming the variable. */
import { describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../server/utils/config.ts";

describe("storage configuration", () => {
  it("defaults to the filesystem, and to the `functions` prefix on Redis", () => {
    const config = loadConfig({});
    expect(config).toMatchObject({ storageType: "filesystem", storageDir: "data/functions/", redisUrl: "redis://127.0.0.1:6379", redisPrefix: "functions" });
  });

  it("takes a Redis backend with its own URL and prefix", () => {
    const config = loadConfig({ FUNCTIONS_STORAGE_TYPE: "redis", FUNCTIONS_STORAGE_REDIS_URL: "redis://cache:6380/2", FUNCTIONS_STORAGE_REDIS_PREFIX: "fx:prod-eu.1" });
    expect(config).toMatchObject({ storageType: "redis", redisUrl: "redis://cache:6380/2", redisPrefix: "fx:prod-eu.1" });
  });

  it.each([
    ["FUNCTIONS_STORAGE_TYPE", "s3"],
    ["FUNCTIONS_STORAGE_REDIS_URL", "not a url"],
    ["FUNCTIONS_STORAGE_REDIS_PREFIX", "fx*"],
    ["FUNCTIONS_STORAGE_REDIS_PREFIX", "fx:"],
    ["FUNCTIONS_STORAGE_REDIS_PREFIX", "a b"],
  ])("rejects %s=%j, naming the variable", (variable, value) => {
    expect(() => loadConfig({ [variable]: value })).toThrow(ConfigError);
    expect(() => loadConfig({ [variable]: value })).toThrow(variable);
  });
});
