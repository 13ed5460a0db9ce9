/** Ways of feeding work to a system's producer. */
import type { Producer } from "./system.js";
import { sleep, wallNow } from "./util.js";

/** `count` keys `<prefix><start>`, `<prefix><start+1>`, … */
export function makeKeys(prefix: string, count: number, start = 0): string[] {
  return Array.from({ length: count }, (_, i) => `${prefix}${start + i}`);
}

/** Enqueues `keys` in consecutive transactions of `batchSize` keys, one after the other. */
export async function enqueueAll(producer: Producer, keys: readonly string[], batchSize: number): Promise<void> {
  for (let i = 0; i < keys.length; i += batchSize) {
    await producer.enqueue(keys.slice(i, i + batchSize));
  }
}

/**
 * A steady background load: enqueues `ratePerS` keys per second (prefix `bg-`) in one
 * transaction per tick of `tickMs`, catching up if a tick ran late, until stopped.
 */
export class PacedLoad {
  private stopped = false;
  private sent = 0;
  private startedAt = 0;
  private loop: Promise<void> | undefined;

  constructor(
    private readonly producer: Producer,
    private readonly ratePerS: number,
    private readonly tickMs = 20,
    private readonly maxBatch = 2_000,
  ) {}

  /** Starts the load in the background. */
  start(): void {
    this.startedAt = wallNow();
    this.loop = this.run();
  }

  /** Stops the load and returns the rate actually achieved (keys per second). */
  async stop(): Promise<number> {
    this.stopped = true;
    await this.loop;
    const seconds = (wallNow() - this.startedAt) / 1000;
    return seconds > 0 ? this.sent / seconds : 0;
  }

  /** Keys enqueued so far. */
  get count(): number {
    return this.sent;
  }

  private async run(): Promise<void> {
    while (!this.stopped) {
      const due = Math.floor(((wallNow() - this.startedAt) / 1000) * this.ratePerS) - this.sent;
      if (due > 0) {
        const n = Math.min(due, this.maxBatch);
        await this.producer.enqueue(makeKeys("bg-", n, this.sent));
        this.sent += n;
      }
      await sleep(this.tickMs);
    }
  }
}
