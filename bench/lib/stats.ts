/** Order statistics for latency samples and repeated measurements. */

/**
 * The `p`-th percentile (0–100) of `values`, by linear interpolation between the two nearest
 * ranks (the "R-7"/Excel method, as numpy's default). NaN for an empty input.
 */
export function percentile(values: readonly number[], p: number): number {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

/** The median (50th percentile). */
export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

/** p50/p95/p99 in the metric names the report uses, rounded to 0.01 ms. */
export function latencySummary(samplesMs: readonly number[]): { p50_ms: number; p95_ms: number; p99_ms: number } {
  return {
    p50_ms: round(percentile(samplesMs, 50), 2),
    p95_ms: round(percentile(samplesMs, 95), 2),
    p99_ms: round(percentile(samplesMs, 99), 2),
  };
}

/** Rounds to `digits` decimals. */
export function round(value: number, digits = 0): number {
  const f = 10 ** digits;
  return Math.round(value * f) / f;
}
