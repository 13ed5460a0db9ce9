/**
 * The module boundaries of STYLE.md, checked on the source: all SQL in store/, all NATS in
 * nats/, loops that receive their I/O by injection, one composition root.
 */
import { describe, expect, it } from "vitest";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const SRC = fileURLToPath(new URL("../../src", import.meta.url));

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? files(path) : path.endsWith(".ts") ? [path] : [];
  });
}

/** Value imports (not `import type`) of a file, as written. */
function valueImports(path: string): string[] {
  const text = readFileSync(path, "utf8");
  return [...text.matchAll(/^import\s+(?!type\b)[^;]*?from\s+"([^"]+)"/gms)].map((m) => m[1]!);
}

const rules: { folder: string; forbidden: RegExp; why: string }[] = [
  { folder: "worker", forbidden: /^(postgres|drizzle-orm|@nats-io\/)|\/(store|nats)\//, why: "loops get their I/O injected" },
  { folder: "relay", forbidden: /^(postgres|drizzle-orm|@nats-io\/)|\/(store|nats)\//, why: "loops get their I/O injected" },
  { folder: "nats", forbidden: /^(postgres|drizzle-orm)|\/(store|schema|worker|relay)\/|bucket/, why: "nats/ is only the NATS client" },
  { folder: "store", forbidden: /^@nats-io\/|\/(nats|worker|relay)\/|bucket/, why: "store/ is only SQL" },
  { folder: "schema", forbidden: /^(?!drizzle-orm)/, why: "schema/ is only Drizzle tables" },
];

describe("module boundaries", () => {
  for (const rule of rules) {
    it(`keeps ${rule.folder}/ free of forbidden imports (${rule.why})`, () => {
      const offending = files(join(SRC, rule.folder)).flatMap((f) =>
        valueImports(f)
          .filter((spec) => rule.forbidden.test(spec) && !(rule.folder === "schema" && spec.startsWith("./")))
          .map((spec) => `${relative(SRC, f)} imports ${spec}`),
      );
      expect(offending).toEqual([]);
    });
  }

  it("imports @nats-io only in nats/ and SQL drivers only in store/ (bucket.ts and cli/ may compose)", () => {
    const offending = files(SRC)
      .filter((f) => !/\/(nats|store|schema|cli|status)\//.test(f) && !f.endsWith("bucket.ts"))
      .flatMap((f) => valueImports(f).filter((s) => /^(@nats-io\/|postgres$|drizzle-orm)/.test(s)).map((s) => `${relative(SRC, f)} imports ${s}`));
    expect(offending).toEqual([]);
  });
});
