/**
 * Runs the acceptance script (public API only, two buckets on one namespace) as a user would,
 * in a child process, in both dispatch modes.
 */
import { describe, expect, it } from "vitest";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { MODES, useTestEnvironment } from "../harness/setup.js";

const env = useTestEnvironment();
const SCRIPT = fileURLToPath(new URL("../../scripts/acceptance.ts", import.meta.url));

describe.each(MODES)("with %s dispatch", (mode) => {
  it("keeps every promise of the acceptance script with two buckets on one namespace", async () => {
    const namespace = env.namespace("acc");
    const child = env.track(
      spawn(process.execPath, ["--import", "tsx", "--conditions=dmm-source", SCRIPT, mode, namespace], {
        env: { ...process.env, DATABASE_URL: env.url, DMM_LOG_LEVEL: "error", DMM_ACCEPTANCE_REPORT_ONLY: "1" },
        stdio: ["ignore", "pipe", "pipe"],
      }),
    );
    let out = "";
    child.stdout!.on("data", (d: Buffer) => (out += d.toString()));
    child.stderr!.on("data", (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((r) => child.once("exit", r));
    expect(out).not.toContain("FAIL");
    expect(code, out).toBe(0);
    expect(out.match(/^ok /gm)?.length).toBe(6);
    expect(out).toMatch(/^info notify-to-run-start p50/m);
  });
});
