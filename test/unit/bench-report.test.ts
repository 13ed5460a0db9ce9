import { describe, expect, it } from "vitest";
import { renderMarkdown, type BenchReport, type Result } from "../../bench/lib/report.js";

function report(results: Result[]): BenchReport {
  return {
    machine: { cpus: 2, model: "test CPU", memGiB: 24, node: "v20", postgres: "15", nats: "2.9.10" },
    date: "2026-11-29T09:00:00.000Z",
    mode: "full",
    results,
    command: "npx tsx bench/run.ts",
    postgresSettings: { fsync: "on" },
    systems: [{ name: "dmm-pg", notes: [] }, { name: "graphile-worker", notes: [] }],
    skipped: [],
    sizes: { throughput_jobs: 20_000 },
    notes: [],
  };
}

function drainRepeats(cpu: Array<{ postgres_us_per_item: number; workers_us_per_item: number; machine_busy: number }>) {
  return {
    aggregate: `median of ${cpu.length} repeats`,
    repeats: cpu.map((c) => ({ procs: 2, drain: { jobs: 20_000, startup_ms: 70, cpu: c } })),
  };
}

describe("the benchmark report", () => {
  it("states each system's drain CPU per item and busy share as medians of the repeats", () => {
    const md = renderMarkdown(
      report([
        {
          system: "dmm-pg",
          scenario: "throughput",
          variant: "2proc",
          metrics: { per_s: 20_000 },
          detail: drainRepeats([
            { postgres_us_per_item: 30, workers_us_per_item: 50, machine_busy: 0.97 },
            { postgres_us_per_item: 90, workers_us_per_item: 41, machine_busy: 0.5 },
            { postgres_us_per_item: 35, workers_us_per_item: 45.4, machine_busy: 0.95 },
          ]),
        },
        {
          system: "graphile-worker",
          scenario: "throughput",
          variant: "2proc",
          metrics: { per_s: 21_000 },
          detail: drainRepeats([
            { postgres_us_per_item: 40, workers_us_per_item: 44, machine_busy: 0.99 },
            { postgres_us_per_item: 42, workers_us_per_item: 46, machine_busy: 0.98 },
          ]),
        },
      ]),
    );
    const line = md.split("\n").find((l) => l.startsWith("- throughput/2proc, CPU per item during the drain"));
    expect(line).toBeDefined();
    expect(line).toContain("dmm-pg 35 + 45, busy 0.95");
    expect(line).toContain("graphile-worker 41 + 45, busy 0.985");
    expect(md).not.toContain("throughput/1proc, CPU per item");
  });

  it("leaves the drain CPU line out for results written before the drain measured it", () => {
    const md = renderMarkdown(
      report([
        { system: "dmm-pg", scenario: "throughput", variant: "1proc", metrics: { per_s: 20_000 }, detail: { procs: 1, drain: { jobs: 20_000, startup_ms: 70 } } },
      ]),
    );
    expect(md).toContain("| throughput | 1proc | per_s |");
    expect(md).not.toContain("CPU per item during the drain");
  });
});

describe("the scale scenario's ratio", () => {
  it("divides the large variant's per_s by the small one's, also when both are medians of repeats", async () => {
    const { scale } = await import("../../bench/scenarios/scale.js");
    const repeated = (per_s: number) => ({ aggregate: "median of 3 repeats", values: { per_s: [per_s - 1, per_s, per_s + 1] }, repeats: [{}, {}, {}] });
    const derived = scale.derive!([
      { system: "dmm-pg", scenario: "scale", variant: "existing_1000000", metrics: { per_s: 18_000 }, detail: repeated(18_000) },
      { system: "dmm-pg", scenario: "scale", variant: "existing_10000", metrics: { per_s: 20_000 }, detail: repeated(20_000) },
      { system: "pg-boss", scenario: "scale", variant: "existing_10000", metrics: {}, error: "timed out" },
      { system: "pg-boss", scenario: "scale", variant: "existing_1000000", metrics: { per_s: 1_000 } },
    ]);
    expect(derived).toEqual([
      expect.objectContaining({ system: "dmm-pg", variant: "ratio", metrics: { ratio: 0.9 }, detail: expect.objectContaining({ definition: expect.stringContaining("1000000 existing rows ÷ per_s with 10000") }) }),
    ]);
  });
});
