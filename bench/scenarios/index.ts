/** The scenarios, in the order a run executes them (throughput first: latency uses its rates). */
import { coalescing } from "./coalescing.js";
import type { Scenario } from "./common.js";
import { cost } from "./cost.js";
import { latency } from "./latency.js";
import { scale } from "./scale.js";
import { throughput } from "./throughput.js";

/** All scenarios in run order. */
export const SCENARIOS: readonly Scenario[] = [throughput, latency, coalescing, scale, cost];
