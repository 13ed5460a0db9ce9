import { mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { dmmBuildProblem } from "../../bench/lib/dmm-build.js";

const roots: string[] = [];
afterEach(() => {
  for (const root of roots.splice(0)) rmSync(root, { recursive: true, force: true });
});

/** A checkout with one nested source file and, optionally, a build, at the given times (s). */
function checkout(sourceAt: number, builtAt: number | null): string {
  const root = mkdtempSync(path.join(tmpdir(), "dmm-build-"));
  roots.push(root);
  mkdirSync(path.join(root, "src", "worker"), { recursive: true });
  const source = path.join(root, "src", "worker", "engine.ts");
  writeFileSync(source, "export {};\n");
  utimesSync(source, sourceAt, sourceAt);
  if (builtAt !== null) {
    mkdirSync(path.join(root, "dist"));
    const built = path.join(root, "dist", "index.js");
    writeFileSync(built, "export {};\n");
    utimesSync(built, builtAt, builtAt);
  }
  return root;
}

describe("the benchmark's check of dmm's build", () => {
  it("asks for a build when dist/ is missing", () => {
    expect(dmmBuildProblem(checkout(1_000, null))).toMatch(/not built.*npm run build/);
  });

  it("asks for a rebuild when a source file changed after the build", () => {
    expect(dmmBuildProblem(checkout(2_000, 1_000))).toMatch(/older than src.*npm run build/);
  });

  it("accepts a build newer than every source file", () => {
    expect(dmmBuildProblem(checkout(1_000, 2_000))).toBeNull();
  });
});
