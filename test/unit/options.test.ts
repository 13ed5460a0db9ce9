import { describe, expect, it } from "vitest";
import { resolveOptions } from "../../src/options.js";
import { ConfigError } from "../../src/errors.js";
import { safeLogger } from "../../src/log.js";

describe("resolveOptions", () => {
  it("fills every default", () => {
    const o = resolveOptions("app", { database: "postgres://x/y" });
    expect(o).toMatchObject({ leaseMs: 30_000, heartbeatMs: 10_000, sweepIntervalMs: 10_000, deadWorkerCheckMs: 1_000, pollIntervalMs: 1_000, maxCacheBytes: 262_144, shutdownGraceMs: 10_000, poolSize: 10, relayBatchSize: 500, migrate: false });
  });

  it("derives the heartbeat from the lease", () => {
    expect(resolveOptions("app", { database: "postgres://x/y", leaseMs: 3_000 }).heartbeatMs).toBe(1_000);
  });

  it("refuses non-numbers with the option's name", () => {
    expect(() => resolveOptions("app", { database: "postgres://x/y", sweepIntervalMs: "5" as never })).toThrow(ConfigError);
    expect(() => resolveOptions("app", { database: "postgres://x/y", sweepIntervalMs: Number.NaN })).toThrow(/sweepIntervalMs/);
  });
});

describe("safeLogger", () => {
  it("swallows a logger that throws, so loops keep going", () => {
    const broken = {
      debug() {
        throw new Error("x");
      },
      info() {
        throw new Error("x");
      },
      warn() {
        throw new Error("x");
      },
      error() {
        throw new Error("x");
      },
      child() {
        throw new Error("x");
      },
    };
    const log = safeLogger(broken);
    expect(() => log.info("m", {})).not.toThrow();
    expect(() => log.child({ a: 1 }).error("m")).not.toThrow();
  });
});
