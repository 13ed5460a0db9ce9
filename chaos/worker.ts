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
 * "the outbox row is deleted" from outside, and src/ has no hook for it, so the worker hooks
 * the bucket's own NATS connection (see `hookRelay`) and, when armed by the run, stops right
 * after the next PubAck of a token: SIGKILL at once (`self`), or once the run has cut its
 * Postgres link and the relay's delete hangs on it (`blocked`).
 */
import { writeFileSync } from "node:fs";
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
  if (msg.type === "arm") {
    // Without a hook, arming would wait in vain: say so, and the run counts a miss.
    if (hookFailures > 0 && msg.how === "self") send({ type: "hook-missing" });
    else armed = msg.how;
  }
  else if (msg.type === "disarm") armed = null;
  else if (msg.type === "continue") {
    const r = resume;
    resume = null;
    r?.();
  }
});

/** The parts of a nats.js connection the relay-kill hook touches (internals of @nats-io/nats-core 3.x). */
interface HookableConnection {
  publish(subject: string, data?: unknown, opts?: { reply?: string; headers?: { get(k: string): string } }): void;
  protocol?: { subscriptions?: { subs?: Map<number, { subject: string; callback?: (err: Error | null, msg: { subject: string; data: Uint8Array }) => void }> } };
}

/** Relay kills that found no PubAck subscription to hook (dmm's publishing changed): reported, never silent. */
let hookFailures = 0;

/**
 * Hooks the bucket's own NATS connection (dmm's `@internal` `tokens.connection`) so that an
 * armed relay kill lands between a token's PubAck and the relay's outbox delete:
 * - `self`: the reply subscriptions of the connection get a wrapped callback; when the PubAck of
 *   a token published by this bucket arrives, the callback settles it as usual (the relay's
 *   continuation is a later microtask), writes the kill file synchronously and SIGKILLs the
 *   process before any microtask runs, so the relay never deletes its outbox rows;
 * - `blocked`: `publish` of the next token is held until the run has blackholed this worker's
 *   Postgres proxy, then goes out; its PubAck lets the relay go on into its delete, which hangs
 *   on the half-open link until the run SIGKILLs the process.
 */
function hookRelay(namespace: string, bucket: Bucket): void {
  const nc = (bucket as unknown as { tokens: { connection: HookableConnection } | null }).tokens?.connection;
  if (!nc) return;
  const tokenPrefix = `dmm.${namespace}.`;
  const stream = `dmm_${namespace}`;
  /** Reply subject → Nats-Msg-Id, identity and outbox row of this bucket's token publishes, until their PubAck arrives. */
  const inFlight = new Map<string, { msgId: string; identity: string; rowId: number }>();
  /**
   * The identity and outbox row a token names: a token per identity
   * (`dmm.<namespace>.<kind>.<base64url identity>`, msgID `<namespace>:<row id>:…`), or a batch
   * token (`….batch.<id>`, body `[[identity, row id, bumps], …]`): its first entry.
   */
  const tokenOf = (subject: string, data: unknown, msgId: string) => {
    if (/\.batch\.[^.]+$/.test(subject)) {
      const body = typeof data === "string" ? data : Buffer.from(data as Uint8Array).toString("utf8");
      const [first] = JSON.parse(body) as [string, number, number][];
      return { identity: first![0], rowId: first![1] };
    }
    return { identity: Buffer.from(subject.slice(subject.lastIndexOf(".") + 1), "base64url").toString("utf8"), rowId: Number(msgId.split(":")[1]) };
  };
  const publish = nc.publish.bind(nc);
  nc.publish = (subject, data, opts) => {
    const isToken = subject.startsWith(tokenPrefix) && opts?.reply !== undefined;
    const msgId = opts?.headers?.get("Nats-Msg-Id") ?? "";
    const token = isToken ? tokenOf(subject, data, msgId) : null;
    if (token) {
      inFlight.set(opts!.reply!, { msgId, ...token });
      if (inFlight.size > 50_000) inFlight.clear();
    }
    if (token && armed === "blocked") {
      armed = null;
      void new Promise<void>((r) => {
        resume = r;
        send({ type: "published", namespace, msgId, how: "blocked", ...token });
      }).then(() => publish(subject, data, opts));
      return;
    }
    publish(subject, data, opts);
  };
  const subs = nc.protocol?.subscriptions?.subs;
  let hooked = 0;
  for (const sub of subs?.values() ?? []) {
    if (!/^_INBOX\.[^.]+\.\*$/.test(sub.subject) || typeof sub.callback !== "function") continue;
    const callback = sub.callback.bind(sub);
    sub.callback = (err, msg) => {
      callback(err, msg);
      const published = err ? undefined : inFlight.get(msg.subject);
      if (published === undefined) return;
      inFlight.delete(msg.subject);
      if (armed !== "self") return;
      let ack: { stream?: string; seq?: number; error?: unknown; duplicate?: boolean };
      try {
        ack = JSON.parse(Buffer.from(msg.data).toString("utf8")) as typeof ack;
      } catch {
        return;
      }
      if (ack.error || ack.stream !== stream || typeof ack.seq !== "number" || ack.duplicate) return;
      armed = null;
      writeFileSync(config!.killFile, JSON.stringify({ type: "published", namespace, msgId: published.msgId, identity: published.identity, rowId: published.rowId, how: "self" }));
      process.kill(process.pid, "SIGKILL");
    };
    hooked++;
  }
  if (hooked === 0) hookFailures++;
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
      // dmm logs a run whose finish was refused without the error that ended it; keep it.
      (bucket as unknown as { onRunEnd?: (e: { identity: string; outcome: string; durationMs: number; error?: Error }) => void }).onRunEnd = (e) => {
        if (e.outcome === "lost") logger.warn("chaos:run-lost", { namespace, key: e.identity, durationMs: Math.round(e.durationMs), err: e.error?.message ?? null });
      };
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
