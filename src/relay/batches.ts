/**
 * How a relay round's rows become messages: one token per identity while the outbox holds a
 * few rows of a kind (the common, latency-bound case: each token occupies its identity's
 * subject, so a second one is refused while the first is pending), batch tokens of many
 * identities once a kind has a backlog (the throughput-bound case: one publish, one delivery
 * and one ack per batch instead of per identity).
 */
import { createHash } from "node:crypto";

/** A message as the publisher takes it: one identity's token, or a batch token of one kind. */
export type TokenMessage =
  | { kind: string; identity: string; msgId: string }
  | { kind: string; batch: { identity: string; row: number; bumps: number }[]; msgId: string };

/** When a round batches a kind's rows, and how many identities one batch names. */
export interface BatchPolicy {
  /** A kind with at least this many rows in one round is sent as batch tokens. Default 32. */
  min: number;
  /** Most identities per batch token. Default 128. */
  max: number;
  /**
   * Most bytes of a batch token's body (well under NATS's smallest usual `max_payload` of
   * 64 KiB, so that long identities never make a batch the server refuses). Default 48 000.
   */
  maxBytes: number;
}

/** The default policy: batches only for backlogs, of at most 128 identities and 48 000 bytes. */
export const DEFAULT_BATCH_POLICY: BatchPolicy = { min: 32, max: 128, maxBytes: 48_000 };

/** One message to publish: the indexes of the round's rows it carries, and whether it is a batch. */
export interface PlannedMessage {
  rows: number[];
  batch: boolean;
}

/**
 * Plans a round's messages. Rows keep their order within a kind; a batched kind is split into
 * batches of near-equal size (500 rows with max 128: four of 125, not three of 128 and one of 116).
 */
export function planMessages(rows: readonly { kind: string; identity: string }[], policy: BatchPolicy = DEFAULT_BATCH_POLICY): PlannedMessage[] {
  const byKind = new Map<string, number[]>();
  rows.forEach((row, i) => {
    const list = byKind.get(row.kind);
    if (list) list.push(i);
    else byKind.set(row.kind, [i]);
  });
  const planned: PlannedMessage[] = [];
  for (const indexes of byKind.values()) {
    if (indexes.length < Math.max(2, policy.min)) {
      for (const i of indexes) planned.push({ rows: [i], batch: false });
      continue;
    }
    const batches = Math.ceil(indexes.length / Math.max(1, policy.max));
    const size = Math.ceil(indexes.length / batches);
    for (let at = 0; at < indexes.length; at += size) {
      // Long identities: cut the batch further where its body would outgrow maxBytes.
      let part: number[] = [];
      let bytes = 2;
      for (const i of indexes.slice(at, at + size)) {
        const entry = entryBytes(rows[i]!.identity);
        if (part.length > 0 && bytes + entry > policy.maxBytes) {
          planned.push({ rows: part, batch: true });
          part = [];
          bytes = 2;
        }
        part.push(i);
        bytes += entry;
      }
      planned.push({ rows: part, batch: true });
    }
  }
  return planned;
}

/** An upper bound of one entry's bytes in a batch body: `["identity",row id,bumps],`. */
function entryBytes(identity: string): number {
  return Buffer.byteLength(JSON.stringify(identity), "utf8") + 2 * 20 + 5;
}

/**
 * A round's rows as token messages, and how to spread the messages' publish results back over
 * the rows. A row's msgID is unique per enqueue (row id, bumps, creation time: a bumped row is
 * a new token, and a database re-created with the same namespace never collides with the old
 * one's tokens within JetStream's duplicate window); a batch's is a digest of its rows' msgIDs.
 * A dead relay's rows come back after their in-flight time and may be grouped differently then:
 * a new msgID, so a second token, which costs a look-up (the identity is found idle), not a run.
 */
export function relayMessages(
  namespace: string,
  rows: readonly { id: number; kind: string; identity: string; bumps: number; born: string }[],
  policy: BatchPolicy = DEFAULT_BATCH_POLICY,
): { messages: TokenMessage[]; perRow<R extends string>(results: readonly R[]): (R | "ok")[] } {
  const rowMsgId = (r: (typeof rows)[number]) => `${namespace}:${r.id}:${r.bumps}:${r.born}`;
  const planned = planMessages(rows, policy);
  const messages = planned.map((m): TokenMessage => {
    const first = rows[m.rows[0]!]!;
    if (!m.batch) return { kind: first.kind, identity: first.identity, msgId: rowMsgId(first) };
    const digest = createHash("sha256");
    for (const i of m.rows) digest.update(rowMsgId(rows[i]!)).update("\n");
    const batch = m.rows.map((i) => ({ identity: rows[i]!.identity, row: rows[i]!.id, bumps: rows[i]!.bumps }));
    return { kind: first.kind, batch, msgId: `${namespace}:b:${digest.digest("base64url")}` };
  });
  return {
    messages,
    perRow<R extends string>(results: readonly R[]) {
      const out = new Array<R | "ok">(rows.length);
      planned.forEach((m, j) => {
        // A batch's subject is its own: "busy" there means this very batch is already pending.
        const r = results[j]!;
        for (const i of m.rows) out[i] = m.batch && r === "busy" ? "ok" : r;
      });
      return out;
    },
  };
}
