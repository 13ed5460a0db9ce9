/**
 * dmm's use of NATS JetStream: one work-queue stream per bucket holding at most one token per
 * identity, one shared pull consumer per kind, publishing tokens and fetching them.
 */
import { connect, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
import {
  AckPolicy,
  DiscardPolicy,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  type StreamConfig,
} from "@nats-io/jetstream";
import { ConfigError, ConnectionError } from "../errors.js";
import { bucketSubjects, consumerName, kindSubjects, parseTokenSubject, streamName, tokenSubject } from "./subjects.js";

/** JetStream's "maximum messages per subject exceeded": a token is already pending or running. */
export const ERR_SUBJECT_FULL = 10077;

/** Accepted forms of the `nats` option. */
export type NatsInput = string | NatsConnection | (NodeConnectionOptions & { servers: string | string[] });

/** A token as the worker sees it. */
export interface Token {
  kind: string;
  identity: string;
  /** Done: the subject is free for the next token. */
  ack(): void;
  /** Redeliver after `ms` (0: now). */
  nak(ms: number): void;
  /** Tell JetStream the run is still going (extends the ack wait). */
  working(): void;
}

/** Result of publishing one token. */
export type PublishResult = "ok" | "busy" | "error";

/** The NATS side of a bucket. */
export interface Tokens {
  readonly connection: NatsConnection;
  /** Creates or updates the bucket's stream. */
  ensureStream(): Promise<void>;
  /** Creates or updates the shared consumer of `kind`. */
  ensureConsumer(kind: string): Promise<void>;
  /** Publishes one token per key; duplicates (same msgID in the window) count as ok. */
  publish(keys: { kind: string; identity: string; msgId: string }[]): Promise<{ results: PublishResult[]; errors: unknown[] }>;
  /**
   * Pulls up to `max` tokens of `kind`, waiting at most `expiresMs` for them. Messages that are
   * not dmm tokens are acked away and reported through `onGarbage`.
   */
  fetch(kind: string, max: number, expiresMs: number, onGarbage: (subject: string) => void, signal?: AbortSignal): AsyncIterable<Token>;
  /** Deletes every token of the bucket (tests and the chaos run use it to lose tokens on purpose). */
  purge(): Promise<void>;
  /** Calls `listener(false)` when the connection drops or goes stale, `listener(true)` when it is back. */
  onConnectivity(listener: (up: boolean) => void): void;
  /** True when the server answers JetStream requests for the bucket's stream within `timeoutMs`. */
  healthy(timeoutMs: number): Promise<boolean>;
  /** Closes the connection if dmm opened it. */
  close(): Promise<void>;
}

/** Options for the stream and consumers. */
export interface TokenOptions {
  /** How long a delivered token may go without ack or `working()` before redelivery. */
  ackWaitMs: number;
  /** How long JetStream remembers a msgID to drop a relay's duplicate publish. */
  duplicateWindowMs: number;
}

/** Connects (or adopts a connection) and returns the bucket's token API. */
export async function openTokens(input: NatsInput, namespace: string, opts: TokenOptions): Promise<Tokens> {
  let nc: NatsConnection;
  let owned = false;
  if (typeof input === "string" || (typeof input === "object" && input !== null && "servers" in input && !("publish" in input))) {
    const options: NodeConnectionOptions =
      typeof input === "string" ? { servers: input.split(",") } : (input as NodeConnectionOptions);
    try {
      // Pings every 2 s, three unanswered ones mean stale: a half-open connection is noticed in
      // seconds rather than the client's default minutes.
      nc = await connect({ name: `dmm:${namespace}`, maxReconnectAttempts: -1, reconnectTimeWait: 500, pingInterval: 2_000, maxPingOut: 3, ...options });
    } catch (err) {
      throw new ConnectionError(
        `Could not connect to NATS at ${JSON.stringify(options.servers)}: ${(err as Error).message}. Start nats-server with JetStream (-js), fix the URL, or omit the nats option to dispatch through Postgres only.`,
        { cause: err },
      );
    }
    owned = true;
  } else if (typeof input === "object" && input !== null && typeof (input as NatsConnection).publish === "function") {
    nc = input as NatsConnection;
  } else {
    throw new ConfigError("The nats option must be a nats:// URL, a NatsConnection from @nats-io/transport-node, or connection options with servers.");
  }
  const js: JetStreamClient = jetstream(nc);
  const jsm: JetStreamManager = await jetstreamManager(nc).catch((err: unknown) => {
    throw new ConnectionError(
      `NATS at ${nc.getServer()} has no JetStream: ${(err as Error).message}. Start nats-server with -js, or omit the nats option.`,
      { cause: err },
    );
  });
  const stream = streamName(namespace);

  return {
    connection: nc,
    async ensureStream() {
      const config: Partial<StreamConfig> & { name: string } = {
        name: stream,
        subjects: [bucketSubjects(namespace)],
        retention: RetentionPolicy.Workqueue,
        storage: StorageType.File,
        max_msgs_per_subject: 1,
        discard: DiscardPolicy.New,
        discard_new_per_subject: true,
        duplicate_window: opts.duplicateWindowMs * 1_000_000,
      };
      try {
        await jsm.streams.info(stream);
        await jsm.streams.update(stream, config);
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === 10059) {
          await jsm.streams.add(config);
        } else {
          throw err;
        }
      }
    },
    async ensureConsumer(kind) {
      const config = {
        durable_name: consumerName(kind),
        filter_subject: kindSubjects(namespace, kind),
        ack_policy: AckPolicy.Explicit,
        ack_wait: opts.ackWaitMs * 1_000_000,
        max_deliver: -1,
        max_ack_pending: 20_000,
      };
      try {
        await jsm.consumers.info(stream, config.durable_name);
        await jsm.consumers.update(stream, config.durable_name, { ack_wait: config.ack_wait, max_ack_pending: config.max_ack_pending });
      } catch (err) {
        if (err instanceof JetStreamApiError && err.code === 10014) {
          await jsm.consumers.add(stream, config);
        } else {
          throw err;
        }
      }
    },
    async publish(keys) {
      const errors: unknown[] = [];
      const results = await Promise.all(
        keys.map(async (k): Promise<PublishResult> => {
          try {
            await js.publish(tokenSubject(namespace, k.kind, k.identity), undefined, { msgID: k.msgId, timeout: 5_000 });
            return "ok";
          } catch (err) {
            if (err instanceof JetStreamApiError && err.code === ERR_SUBJECT_FULL) return "busy";
            errors.push(err);
            return "error";
          }
        }),
      );
      return { results, errors };
    },
    async *fetch(kind, max, expiresMs, onGarbage, signal) {
      const consumer = await js.consumers.get(stream, consumerName(kind));
      const iter = await consumer.fetch({ max_messages: max, expires: expiresMs });
      const stop = () => iter.stop();
      signal?.addEventListener("abort", stop, { once: true });
      try {
        for await (const msg of iter) {
          const key = parseTokenSubject(namespace, msg.subject);
          if (!key || key.kind !== kind) {
            msg.ack();
            onGarbage(msg.subject);
            continue;
          }
          yield toToken(key, msg);
        }
      } finally {
        signal?.removeEventListener("abort", stop);
      }
    },
    async purge() {
      await jsm.streams.purge(stream);
    },
    onConnectivity(listener) {
      void (async () => {
        for await (const status of nc.status()) {
          if (status.type === "disconnect" || status.type === "staleConnection") listener(false);
          else if (status.type === "reconnect") listener(true);
        }
      })().catch(() => {});
    },
    async healthy(timeoutMs) {
      if (nc.isClosed()) return false;
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<boolean>((r) => (timer = setTimeout(() => r(false), timeoutMs)));
      try {
        return await Promise.race([jsm.streams.info(stream).then(() => true, () => false), timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
    async close() {
      if (owned && !nc.isClosed()) await nc.drain().catch(() => nc.close());
    },
  };
}

function toToken(key: { kind: string; identity: string }, msg: JsMsg): Token {
  return {
    kind: key.kind,
    identity: key.identity,
    ack: () => msg.ack(),
    nak: (ms) => msg.nak(ms),
    working: () => msg.working(),
  };
}
