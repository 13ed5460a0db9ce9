/**
 * dmm is benchmarked as an app runs it: from its compiled package (`dist/`, what `npm run
 * build` makes and npm publishes), like the peers run from theirs. Loaded through tsx from
 * `src/`, the engine's per-run JavaScript cost a quarter to a third more CPU (esbuild's
 * name-keeping helper defines a name on every closure the hot path creates), a handicap no
 * user pays. `npm run bench`
 * builds first; this check catches a direct `npx tsx bench/run.ts` after a source change.
 */
import { readdirSync, statSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

/** Newest modification time (ms) of the files under `dir` ending in `suffix`; 0 if none. */
function newest(dir: string, suffix: string): number {
  let latest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const full = path.join(dir, entry.name);
    if (entry.isDirectory()) latest = Math.max(latest, newest(full, suffix));
    else if (entry.name.endsWith(suffix)) latest = Math.max(latest, statSync(full).mtimeMs);
  }
  return latest;
}

/**
 * Why the compiled dmm cannot be benchmarked (missing, or older than a source file), or null
 * when `dist/` is at least as new as every file in `src/`.
 */
export function dmmBuildProblem(root = ROOT): string | null {
  let built: number;
  try {
    built = statSync(path.join(root, "dist", "index.js")).mtimeMs;
  } catch {
    return "dmm is not built (no dist/index.js): run `npm run build` first (`npm run bench` does)";
  }
  const sources = newest(path.join(root, "src"), ".ts");
  if (sources > built) {
    return "dmm's build (dist/) is older than src/: run `npm run build` first (`npm run bench` does)";
  }
  return null;
}
