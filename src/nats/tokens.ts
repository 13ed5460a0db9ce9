/**
 * dmm's use of NATS JetStream: one work-queue stream per bucket holding at most one token per
 * identity on the identity's own subject (plus batch tokens, each on a subject of its own, for
 * backlogs), one shared pull consumer per kind, publishing tokens and fetching them.
 */
import { createHash } from "node:crypto";
import { connect, createInbox, headers, type Msg, type NatsConnection, type NodeConnectionOptions } from "@nats-io/transport-node";
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
import { batchBody, batchSubject, bucketSubjects, type BatchEntry, consumerName, kindSubjects, parseBatchBody, parseBatchSubject, parseTokenSubject, streamName, tokenSubject } from "./subjects.js";

/** JetStream's "maximum messages per subject exceeded": a token is already pending or running. */
export const ERR_SUBJECT_FULL = 10077;

/** Accepted forms of the `nats` option. */
export type NatsInput = string | NatsConnection | (NodeConnectionOptions & { servers: string | string[] });

/** A token as the worker sees it. */
export interface Token {
  kind: string;
  identity: string;
  /** Done: the subject is free for the next token (a batch token: once all of its identities are done). */
  ack(): void;
  /** Redeliver after `ms` (0: now); a batch token is redelivered whole once all of its identities are settled. */
  nak(ms: number): void;
  /** Tell JetStream the run is still going (extends the ack wait). */
  working(): void;
  /**
   * Part of a batch token: the message is settled once every identity of it is (acked when all
   * were, redelivered as a whole when any was nak'ed), so a retry of one identity is better kept
   * in memory than nak'ed.
   */
  readonly batched?: boolean;
  /**
   * A batch token's identity: the outbox row it was relayed from (id and bumps). The claim
   * leaves the matter to a newer outbox row of the identity, if there is one (see claimKeys).
   */
  readonly origin?: { row: number; bumps: number };
}

/** What the relay publishes: one identity's token, or a batch token naming many of a kind. */
export type TokenMessage = { kind: string; identity: string; msgId: string } | { kind: string; batch: BatchEntry[]; msgId: string };

/** Result of publishing one token. */
export type PublishResult = "ok" | "busy" | "error";

/** The NATS side of a bucket. */
export interface Tokens {
  readonly connection: NatsConnection;
  /** Creates or updates the bucket's stream. */
  ensureStream(): Promise<void>;
  /** Creates or updates the shared consumer of `kind`. */
  ensureConsumer(kind: string): Promise<void>;
  /**
   * Publishes each message; duplicates (same msgID in the window) count as ok. A batch's subject
   * follows from its msgID, so a relay's retry of the same batch is a duplicate too.
   */
  publish(messages: TokenMessage[]): Promise<{ results: PublishResult[]; errors: unknown[] }>;
  /**
   * Pulls up to `max` messages of `kind`, waiting at most `expiresMs` for them, and yields the
   * tokens of each (one, or a batch token's identities). Messages that are not dmm tokens are
   * acked away and reported through `onGarbage`.
   */
  fetch(kind: string, max: number, expiresMs: number, onGarbage: (subject: string) => void, signal?: AbortSignal): AsyncIterable<Token[]>;
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
    const options: NodeConnectionOptions = typeof input === "string" ? parseNatsUrl(input) : (input as NodeConnectionOptions);
    try {
      // Pings every 2 s, three unanswered ones mean stale: a half-open connection is noticed in
      // seconds rather than the client's default minutes.
      nc = await connect({ name: `dmm:${namespace}`, maxReconnectAttempts: -1, reconnectTimeWait: 500, pingInterval: 2_000, maxPingOut: 3, ...options });
    } catch (err) {
      const refused = /ECONNREFUSED|CONNECTION_REFUSED/i.test(String((err as { code?: string }).code ?? (err as Error).message));
      throw new ConnectionError(
        `Could not connect to NATS at ${redactServers(options.servers)}: ${(err as Error).message}. ${
          refused ? "Start nats-server with JetStream (-js), fix the URL, or omit the nats option to dispatch through Postgres only." : "Check the credentials and TLS settings of the nats option."
        }`,
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
  const acks = createAckCollector(nc);
  // `js.consumers.get` asks the server for the consumer's info on every call: one handle per
  // kind serves every pull instead (dropped when a pull fails, see fetch).
  const consumers = new Map<string, ReturnType<typeof js.consumers.get>>();
  const consumerOf = (kind: string) => {
    let c = consumers.get(kind);
    if (!c) consumers.set(kind, (c = js.consumers.get(stream, consumerName(kind))));
    return c;
  };

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
      consumers.delete(kind);
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
    publish(messages) {
      return acks.publish(
        messages.map((m) =>
          "batch" in m
            ? { subject: batchSubject(namespace, m.kind, batchId(m.msgId)), msgId: m.msgId, body: batchBody(m.batch) }
            : { subject: tokenSubject(namespace, m.kind, m.identity), msgId: m.msgId },
        ),
      );
    },
    async *fetch(kind, max, expiresMs, onGarbage, signal) {
      const handle = consumerOf(kind);
      let stop: (() => void) | undefined;
      try {
        const iter = await (await handle).fetch({ max_messages: max, expires: expiresMs });
        stop = () => iter.stop();
        signal?.addEventListener("abort", stop, { once: true });
        for await (const msg of iter) {
          const key = parseTokenSubject(namespace, msg.subject);
          if (key && key.kind === kind) {
            yield [toToken(key, msg)];
            continue;
          }
          const entries = parseBatchSubject(namespace, msg.subject)?.kind === kind ? parseBatchBody(msg.data) : null;
          if (entries) {
            yield toBatchTokens(kind, entries, msg);
            continue;
          }
          msg.ack();
          onGarbage(msg.subject);
        }
      } catch (err) {
        // The consumer may be gone (deleted, the server restarted): look it up afresh next time.
        if (consumers.get(kind) === handle) consumers.delete(kind);
        throw err;
      } finally {
        if (stop) signal?.removeEventListener("abort", stop);
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

/**
 * Publishes a batch of tokens and counts JetStream's acks on one inbox subscription, instead of
 * a request (and a promise chain) per message: the same guarantee (each token is stored once
 * its PubAck arrives) at about a third of the client CPU. Each message carries `Nats-Msg-Id`,
 * so a relay's retry of an acked-but-unrecorded publish is dropped as a duplicate.
 */
interface PubReply {
  ok: boolean;
  code?: number;
  error?: string;
}

function createAckCollector(nc: NatsConnection) {
  const prefix = createInbox();
  const pending = new Map<number, (reply: PubReply) => void>();
  let seq = 0;
  nc.subscribe(`${prefix}.*`, {
    callback: (err: Error | null, msg: Msg) => {
      if (err) return;
      const id = Number(msg.subject.slice(prefix.length + 1));
      const settle = pending.get(id);
      if (!settle) return;
      pending.delete(id);
      try {
        const body = msg.json<{ error?: { err_code?: number; description?: string } }>();
        if (body.error) settle({ ok: false, code: body.error.err_code, error: body.error.description });
        else settle({ ok: true });
      } catch (e) {
        settle({ ok: false, error: `unreadable PubAck: ${(e as Error).message}` });
      }
    },
  });
  return {
    async publish(batch: { subject: string; msgId: string; body?: string }[]): Promise<{ results: PublishResult[]; errors: unknown[] }> {
      const errors: unknown[] = [];
      const ids: number[] = [];
      const replies = batch.map(({ subject, msgId, body }) => {
        const id = ++seq;
        ids.push(id);
        return new Promise<PubReply>((resolve) => {
          pending.set(id, resolve);
          try {
            const h = headers();
            h.set("Nats-Msg-Id", msgId);
            nc.publish(subject, body, { reply: `${prefix}.${id}`, headers: h });
          } catch (e) {
            pending.delete(id);
            resolve({ ok: false, error: (e as Error).message });
          }
        });
      });
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((r) => (timer = setTimeout(r, 5_000)));
      await Promise.race([Promise.all(replies), timeout]);
      clearTimeout(timer);
      const results = await Promise.all(
        replies.map((p, i): PubReply | Promise<PubReply> => {
          const id = ids[i]!;
          if (!pending.has(id)) return p;
          pending.delete(id);
          return { ok: false, error: "no PubAck within 5 s" };
        }),
      );
      return {
        results: results.map((r) => {
          if (r.ok) return "ok";
          if (r.code === ERR_SUBJECT_FULL) return "busy";
          errors.push(new Error(r.error ?? `JetStream refused the token (${r.code})`));
          return "error";
        }),
        errors,
      };
    },
  };
}

/**
 * Reads a `nats://` URL (or a comma-separated list): credentials in the URL's user info
 * (`nats://user:pass@host`, `nats://token@host`) become the client's `user`/`pass` or `token`
 * options, which the client would otherwise ignore, and the servers keep only host and port.
 */
export function parseNatsUrl(input: string): NodeConnectionOptions {
  const options: NodeConnectionOptions = {};
  const servers: string[] = [];
  for (const part of input.split(",").map((p) => p.trim()).filter(Boolean)) {
    let url: URL;
    try {
      url = new URL(part.includes("://") ? part : `nats://${part}`);
    } catch {
      throw new ConfigError(`The NATS URL ${JSON.stringify(redactServers(part))} is not a URL; use nats://host:4222.`);
    }
    if (url.username && url.password) {
      options.user = decodeURIComponent(url.username);
      options.pass = decodeURIComponent(url.password);
    } else if (url.username) {
      options.token = decodeURIComponent(url.username);
    }
    servers.push(`${url.protocol}//${url.host}`);
  }
  options.servers = servers;
  return options;
}

/** Server list for messages, without credentials. */
function redactServers(servers: unknown): string {
  const list = Array.isArray(servers) ? servers : [servers];
  return JSON.stringify(list.map((s) => String(s).replace(/\/\/[^@/]*@/, "//***@")));
}

/** A batch token's subject id: derived from its msgID, so that a retry lands on the same subject. */
function batchId(msgId: string): string {
  return createHash("sha256").update(msgId).digest("base64url").slice(0, 32);
}

/**
 * The tokens of one batch message. The message is acked once every identity was acked, or
 * nak'ed (as a whole, after the longest delay asked for) once every identity was settled and
 * any of them nak'ed: identities that already ran are then claimed as idle again, which costs
 * a lookup, not a run.
 */
function toBatchTokens(kind: string, entries: BatchEntry[], msg: JsMsg): Token[] {
  let open = entries.length;
  let redeliverMs = -1;
  // Every identity of the batch (its heartbeat, its retries) would tell JetStream the same
  // thing: once a second is plenty against an ack wait of 5 s or more.
  let workingAt = 0;
  const working = () => {
    const now = Date.now();
    if (now - workingAt < 1_000) return;
    workingAt = now;
    msg.working();
  };
  const settle = (nakMs: number | null) => {
    if (nakMs !== null) redeliverMs = Math.max(redeliverMs, nakMs);
    if (--open > 0) return;
    if (redeliverMs >= 0) msg.nak(redeliverMs);
    else msg.ack();
  };
  return entries.map(({ identity, row, bumps }) => {
    let settled = false;
    return {
      kind,
      identity,
      batched: true,
      origin: { row, bumps },
      ack() {
        if (settled) return;
        settled = true;
        settle(null);
      },
      nak(ms: number) {
        if (settled) return;
        settled = true;
        settle(ms);
      },
      working,
    };
  });
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
