/**
 * A periodic look at the private nats-server's token streams during a chaos run: how many
 * tokens wait, how many are delivered but unacknowledged, how many pull requests wait. It is
 * the context of the JetStream namespaces' latency figures (tokens that sit in the stream while
 * their identities wait) and goes to `nats.jsonl` in the run's logs. It never fails the run:
 * while NATS is down a sample is simply skipped.
 */
import { appendFile } from "node:fs/promises";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstreamManager } from "@nats-io/jetstream";

/** One consumer's numbers at one moment. */
export interface TokenSample {
  at: string;
  stream: string;
  /** Tokens stored in the stream (waiting or delivered but not yet acked). */
  messages: number;
  consumer: string;
  /** Tokens not yet delivered to any worker. */
  pending: number;
  /** Tokens delivered to a worker and not yet acked (or nak'ed, or expired). */
  ackPending: number;
  /** Deliveries beyond the first (ack wait expired or nak). */
  redelivered: number;
  /** Pull requests waiting at the server. */
  waiting: number;
}

/** Samples every `everyMs` until stopped; see the module comment. */
export class TokensProbe {
  /** The largest number of stored tokens seen, per stream. */
  readonly peak = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #busy = false;

  constructor(
    private readonly natsUrl: string,
    private readonly file: string,
    private readonly everyMs = 2_000,
  ) {}

  start(): void {
    this.#timer = setInterval(() => {
      if (this.#busy) return;
      this.#busy = true;
      void this.#sample().finally(() => (this.#busy = false));
    }, this.everyMs);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async #sample(): Promise<void> {
    let nc: NatsConnection | undefined;
    try {
      nc = await connect({ servers: this.natsUrl, timeout: 1_000, reconnect: false });
      const jsm = await jetstreamManager(nc, { timeout: 1_000 });
      const lines: string[] = [];
      const at = new Date().toISOString();
      for await (const stream of jsm.streams.list()) {
        const name = stream.config.name;
        this.peak.set(name, Math.max(this.peak.get(name) ?? 0, stream.state.messages));
        for await (const c of jsm.consumers.list(name)) {
          const sample: TokenSample = {
            at,
            stream: name,
            messages: stream.state.messages,
            consumer: c.name,
            pending: c.num_pending,
            ackPending: c.num_ack_pending,
            redelivered: c.num_redelivered,
            waiting: c.num_waiting,
          };
          lines.push(JSON.stringify(sample));
        }
      }
      if (lines.length > 0) await appendFile(this.file, `${lines.join("\n")}\n`);
    } catch {
      /* NATS is down or slow right now: no sample */
    } finally {
      await nc?.close().catch(() => {});
    }
  }
}
