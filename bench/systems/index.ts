/**
 * The registry of benchmarked systems.
 *
 * Each entry names an adapter module in this folder and the systems it provides. A module
 * exports `systems: System[]` (see `bench/lib/system.ts` for the contract) and comes with its
 * worker child script(s). A module that is not there is skipped with a printed line, which is
 * how `dmm.ts` (providing `dmm-nats` and `dmm-pg`) plugs in once the engine exists: add the
 * file, nothing else changes.
 */
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { dmmBuildProblem } from "../lib/dmm-build.js";
import type { System } from "../lib/system.js";

/**
 * An adapter module and the system names it must export, in report column order; `problem`
 * says why the module cannot run now (checked before it is imported).
 */
export const SYSTEM_MODULES: ReadonlyArray<{ file: string; names: readonly string[]; problem?: () => string | null }> = [
  { file: "dmm.ts", names: ["dmm-nats", "dmm-pg"], problem: dmmBuildProblem },
  { file: "graphile-worker.ts", names: ["graphile-worker"] },
  { file: "pg-boss.ts", names: ["pg-boss"] },
];

/** The `file:` URL of the adapter module that provides system `name`. */
export function systemModuleUrl(name: string): string {
  const mod = SYSTEM_MODULES.find((m) => m.names.includes(name));
  if (!mod) throw new Error(`Unknown system "${name}".`);
  return new URL(`./${mod.file}`, import.meta.url).href;
}

/** Every system name the registry knows. */
export const ALL_SYSTEM_NAMES: readonly string[] = SYSTEM_MODULES.flatMap((m) => m.names);

/**
 * Imports the adapters of the wanted systems. Absent modules and modules that fail to load
 * are reported in `skipped` (the latter with `failed: true`, which fails the run).
 */
export async function loadSystems(wanted: readonly string[]): Promise<{
  systems: System[];
  skipped: Array<{ name: string; reason: string; failed: boolean }>;
}> {
  const systems: System[] = [];
  const skipped: Array<{ name: string; reason: string; failed: boolean }> = [];
  for (const mod of SYSTEM_MODULES) {
    const names = mod.names.filter((n) => wanted.includes(n));
    if (names.length === 0) continue;
    const url = new URL(`./${mod.file}`, import.meta.url);
    if (!existsSync(fileURLToPath(url))) {
      for (const name of names) skipped.push({ name, reason: `bench/systems/${mod.file} is not there yet`, failed: false });
      continue;
    }
    const problem = mod.problem?.() ?? null;
    if (problem !== null) {
      for (const name of names) skipped.push({ name, reason: problem, failed: true });
      continue;
    }
    try {
      const loaded = (await import(url.href)) as { systems?: System[] };
      for (const name of names) {
        const system = loaded.systems?.find((s) => s.name === name);
        if (system) systems.push(system);
        else skipped.push({ name, reason: `bench/systems/${mod.file} does not export it in \`systems\``, failed: true });
      }
    } catch (err) {
      const reason = `bench/systems/${mod.file} failed to load: ${err instanceof Error ? err.message : String(err)}`;
      for (const name of names) skipped.push({ name, reason, failed: true });
    }
  }
  return { systems, skipped };
}
