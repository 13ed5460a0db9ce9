/**
 * Property-based tests of dmm's logging under hostile field values: identities, error messages
 * and user log fields end up in log lines, so they must not be able to forge lines or break the
 * loop that logs them.
 */
import { afterEach, describe, expect, it, vi } from "vitest";
import fc from "fast-check";
import { createConsoleLogger, safeLogger } from "../../src/log.js";
import type { Logger } from "../../src/types.js";

/** Any text, biased towards line breaks, terminal escapes and quoting characters. */
const hostileText = fc.oneof(
  fc.string({ unit: "binary" }),
  fc.string({ unit: fc.constantFrom("\n", "\r", "\u001b[31m", "\u0000", "\t", '"', "\\", "=", " ", "a", "é", "🎵", "\u2028", "key=forged") }),
  fc.constantFrom("\ndmm error materialize:error kind=forged key=x", "x\r\ndmm info worker:stop", "\u001b[2J\u001b[H", "'; drop table dmm.dmm_matter; --"),
);

const fieldValue = fc.oneof(
  hostileText,
  fc.integer(),
  fc.boolean(),
  fc.constant(null),
  hostileText.map((m) => new Error(m)),
  fc.dictionary(fc.string({ maxLength: 5 }), hostileText, { maxKeys: 3 }),
  fc.array(hostileText, { maxLength: 3 }),
);

const fieldKey = fc.constantFrom("kind", "key", "attempt", "workerId", "durationMs", "err", "identity", "note");

afterEach(() => {
  vi.restoreAllMocks();
});

describe("the console logger", () => {
  it("writes exactly one line without control characters per call, whatever the field values hold", () => {
    const lines: string[] = [];
    vi.spyOn(console, "log").mockImplementation((line: unknown) => void lines.push(String(line)));
    vi.spyOn(console, "error").mockImplementation((line: unknown) => void lines.push(String(line)));
    fc.assert(
      fc.property(
        fc.constantFrom("debug", "info", "warn", "error") as fc.Arbitrary<"debug" | "info" | "warn" | "error">,
        hostileText,
        fc.dictionary(fieldKey, fieldValue, { maxKeys: 4 }),
        (level, identity, fields) => {
          lines.length = 0;
          const log = createConsoleLogger("debug").child({ kind: "music", key: identity });
          log[level]("materialize:error", fields);
          expect(lines).toHaveLength(1);
          expect(lines[0]).not.toMatch(/[\u0000-\u001f]/);
          expect(lines[0]!.startsWith(`dmm ${level} materialize:error `)).toBe(true);
          // The identity can be read back: plain, or as a JSON string literal.
          const shown = /^[\w.:/@-]*$/.test(identity) && identity !== "" ? identity : JSON.stringify(identity);
          const key = "key" in fields ? undefined : `key=${shown}`;
          if (key) expect(lines[0]).toContain(key);
        },
      ),
      { numRuns: 1_000 },
    );
  });
});

describe("safeLogger", () => {
  it("never lets a throwing user logger escape into dmm, whatever it is asked to log", () => {
    const boom = (): never => {
      throw new Error("logger is broken");
    };
    const broken: Logger = { debug: boom, info: boom, warn: boom, error: boom, child: boom };
    fc.assert(
      fc.property(hostileText, fc.dictionary(fieldKey, fieldValue, { maxKeys: 4 }), (msg, fields) => {
        const log = safeLogger(broken);
        expect(() => log.warn(msg, fields)).not.toThrow();
        expect(() => log.child(fields).error(msg, fields)).not.toThrow();
      }),
      { numRuns: 300 },
    );
  });
});
