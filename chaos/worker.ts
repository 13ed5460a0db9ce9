/**
 * A chaos worker process: imports dmm by its package name like an app, opens one bucket per
 * configured namespace (JetStream or Postgres-only dispatch, through its slot's proxies) and
 * works the `tally` kind until SIGTERM (clean close) or SIGKILL (the chaos).
 *
 * Spawned by `chaos/run.ts` as
 * `node --import tsx --conditions=dmm-source chaos/worker.ts` with its configuration in the
 * `CHAOS_WORKER` environment variable and an IPC channel. It reports `ready` once every bucket
 * works, its counters every second, and exits at once when the run goes away (IPC disconnect),
 * so a crashed run leaves no worker behind.
 *
 * Relay kills: dmm's relay cannot be stopped between "JetStream acknowledged the token" and
 * "the outbox row is deleted" from outside, and src/ has no hook for it, so the worker wraps
 * the bucket's own NATS connection's `request` (the call `js.publish` makes) and, when armed by
 * the run, stops right after the next successful PubAck of a token: either SIGKILL at once
 * (`self`), or report, wait until the run has blackholed this worker's Postgres proxy, let the
 * relay go on into its delete (which now hangs on the half-open link), and be SIGKILLed by the
 * run (`blocked`).
 */
import { setTimeout as delay } from "node:timers/promises";
import { open, type Bucket, type Logger } from "dmm";
import { KIND, makeTally, type BucketCounters, type RelayKillHow, type RunMessage, type WorkerConfig, type WorkerMessage } from "./model.js";

const config = JSON.parse(process.env.CHAOS_WORKER ?? "null") as WorkerConfig | null;
if (!config || typeof process.send !== "function") {
  console.error("chaos/worker.ts is a worker process of `npm run chaos`; it needs CHAOS_WORKER and an IPC channel.");
  process.exit(2);
}

const send = (msg: WorkerMessage, then?: () => void): void => {
  if (process.connected) process.send!(msg, undefined, {}, () => then?.());
  else then?.();
};
process.on("disconnect", () => process.exit(0));

/**
 * One JSON object per line on stderr, at info and above: the run counts lines by message
 * (session losses, fallbacks, lease losses) and keeps them in the slot's log file.
 */
function jsonLogger(base: Record<string, unknown>): Logger {
  const emit = (level: string) => (msg: string, fields?: Record<string, unknown>) => {
    const line: Record<string, unknown> = { t: new Date().toISOString(), level, msg, ...base };
    for (const [k, v] of Object.entries(fields ?? {})) line[k] = v instanceof Error ? v.message : v;
    process.stderr.write(`${JSON.stringify(line)}\n`);
  };
  return { debug: () => {}, info: emit("info"), warn: emit("warn"), error: emit("error"), child: (f) => jsonLogger({ ...base, ...f }) };
}

const logger = jsonLogger({});
const buckets = new Map<string, Bucket>();
const works: Promise<void>[] = [];
let armed: RelayKillHow | null = null;
let resume: (() => void) | null = null;
let closing = false;

process.on("message", (raw) => {
  const msg = raw as RunMessage;
  if (msg.type === "arm") armed = msg.how;
  else if (msg.type === "disarm") armed = null;
  else if (msg.type === "continue") {
    const r = resume;
    resume = null;
    r?.();
  }
});

/** Connection internals of a NATS-dispatch bucket (dmm's `@internal` hooks). */
interface NatsInternals {
  tokens: { connection: { request: (subject: string, data?: unknown, opts?: { headers?: { get(k: string): string } }) => Promise<{ string(): string }> } } | null;
}

/** Wraps the bucket's NATS `request` so an armed relay kill lands right after a token's PubAck. */
function hookRelay(namespace: string, bucket: Bucket): void {
  const nc = (bucket as unknown as NatsInternals).tokens?.connection;
  if (!nc) return;
  const original = nc.request.bind(nc);
  const prefix = `dmm.${namespace}.`;
  nc.request = async (subject, data, opts) => {
    const reply = await original(subject, data, opts);
    const how = armed;
    if (how && subject.startsWith(prefix) && !reply.string().includes('"error"')) {
      armed = null;
      const msgId = opts?.headers?.get("Nats-Msg-Id") ?? "";
      if (how === "self") {
        // The relay never gets the PubAck: it cannot delete its outbox row.
        send({ type: "published", namespace, msgId, how }, () => process.kill(process.pid, "SIGKILL"));
        await new Promise<never>(() => {});
      }
      // "blocked": wait until the run has cut this worker's Postgres link, then let the relay
      // go on into its delete, which hangs on the half-open connection until the run kills us.
      await new Promise<void>((r) => {
        resume = r;
        send({ type: "published", namespace, msgId, how });
      });
    }
    return reply;
  };
}

/** Opens a bucket, retrying while Postgres or NATS is down (a worker restarted mid-outage). */
async function openBucket(namespace: string, nats: boolean): Promise<Bucket> {
  const t = config!.timings;
  for (let attempt = 1; ; attempt++) {
    try {
      return await open(namespace, {
        database: config!.database,
        nats: nats ? config!.nats : undefined,
        logger,
        leaseMs: t.leaseMs,
        heartbeatMs: t.heartbeatMs,
        sweepIntervalMs: t.sweepIntervalMs,
        deadWorkerCheckMs: t.deadWorkerCheckMs,
        pollIntervalMs: t.pollIntervalMs,
        natsFallbackMs: t.natsFallbackMs,
        shutdownGraceMs: t.shutdownGraceMs,
        poolSize: t.poolSize,
      });
    } catch (err) {
      if (closing) throw err;
      if (attempt === 1 || attempt % 10 === 0) logger.warn("chaos:open:retry", { namespace, attempt, err: (err as Error).message });
      await delay(Math.min(2_000, 100 * attempt));
    }
  }
}

function counters(): Record<string, BucketCounters> {
  const out: Record<string, BucketCounters> = {};
  for (const [ns, b] of buckets) out[ns] = { ...b.stats(), natsFallback: b.natsFallback };
  return out;
}

async function main(): Promise<void> {
  const started = Date.now();
  await Promise.all(
    config!.buckets.map(async ({ namespace, nats }) => {
      const bucket = await openBucket(namespace, nats);
      buckets.set(namespace, bucket);
      if (nats) hookRelay(namespace, bucket);
      const stream = bucket.register(KIND, makeTally(namespace, config!.slot, config!.profile), {
        backoffMaxMs: config!.timings.backoffMaxMs,
        timeoutMs: 30_000,
      });
      works.push(
        stream.work({ concurrency: config!.timings.concurrency }).catch((err: unknown) => {
          logger.error("chaos:work:error", { namespace, err: (err as Error).stack ?? String(err) });
          process.exit(3);
        }),
      );
    }),
  );
  send({ type: "ready", openMs: Date.now() - started });
  setInterval(() => send({ type: "stats", buckets: counters() }), 1_000).unref();
}

process.on("SIGTERM", () => {
  if (closing) return;
  closing = true;
  void (async () => {
    const hard = setTimeout(() => process.exit(4), 15_000);
    hard.unref();
    await Promise.allSettled([...buckets.values()].map((b) => b.close()));
    await Promise.allSettled(works);
    send({ type: "stats", buckets: counters() }, () => process.exit(0));
  })();
});

// A materializer never throws past dmm, but a library bug might; log it and die loudly.
process.on("unhandledRejection", (err) => {
  logger.error("chaos:unhandled-rejection", { err: err instanceof Error ? (err.stack ?? err.message) : String(err) });
  process.exit(5);
});

main().catch((err: unknown) => {
  logger.error("chaos:worker:error", { err: (err as Error).stack ?? String(err) });
  process.exit(1);
});
