import { describe, expect, it } from "vitest";
import { planMessages, relayMessages } from "../../src/relay/batches.js";
import { batchBody, batchSubject, parseBatchBody, parseBatchSubject, parseTokenSubject } from "../../src/nats/subjects.js";

const rows = (kind: string, n: number, from = 0) =>
  Array.from({ length: n }, (_, i) => ({ id: from + i + 1, kind, identity: `${kind}-${from + i}`, bumps: 0, born: "1700000000000000" }));

describe("a relay round's messages", () => {
  it("are one token per identity while a kind has fewer rows than the batch minimum", () => {
    const planned = planMessages(rows("k", 31), { min: 32, max: 128, maxBytes: 48_000 });
    expect(planned).toHaveLength(31);
    expect(planned.every((m) => !m.batch && m.rows.length === 1)).toBe(true);
  });

  it("are batches of near-equal size for a kind with a backlog, every row in exactly one, in order", () => {
    const planned = planMessages(rows("k", 500), { min: 32, max: 128, maxBytes: 48_000 });
    expect(planned.map((m) => m.rows.length)).toEqual([125, 125, 125, 125]);
    expect(planned.flatMap((m) => m.rows)).toEqual(Array.from({ length: 500 }, (_, i) => i));
  });

  it("cut a batch of long identities where its body would outgrow the byte limit", () => {
    const long = Array.from({ length: 100 }, (_, i) => ({ id: i + 1, kind: "k", identity: `${i}`.padStart(500, "x"), bumps: 0, born: "1" }));
    const planned = planMessages(long, { min: 32, max: 128, maxBytes: 10_000 });
    expect(planned.length).toBeGreaterThan(5);
    expect(planned.flatMap((m) => m.rows)).toEqual([...Array(100).keys()]);
    for (const m of relayMessages("ns", long, { min: 32, max: 128, maxBytes: 10_000 }).messages) {
      expect("batch" in m).toBe(true);
      if ("batch" in m) expect(batchBody(m.batch).length).toBeLessThanOrEqual(10_000);
    }
  });

  it("decide per kind: a backlog of one kind does not batch the few rows of another", () => {
    const round = [...rows("a", 40), ...rows("b", 3), ...rows("a", 10, 40)];
    const planned = planMessages(round, { min: 32, max: 128, maxBytes: 48_000 });
    expect(planned.filter((m) => m.batch)).toEqual([{ rows: [...Array(40).keys(), ...Array.from({ length: 10 }, (_, i) => 43 + i)], batch: true }]);
    expect(planned.filter((m) => !m.batch).map((m) => m.rows[0])).toEqual([40, 41, 42]);
  });

  it("name a batch by a digest of its rows, so that a retry of the same round is a duplicate and a bumped row is not", () => {
    const round = rows("k", 40);
    const a = relayMessages("ns", round).messages;
    const b = relayMessages("ns", round).messages;
    expect(a).toHaveLength(1);
    expect(a[0]).toMatchObject({ kind: "k", batch: round.map((r) => ({ identity: r.identity, row: r.id, bumps: 0 })) });
    expect(b[0]!.msgId).toBe(a[0]!.msgId);
    const bumped = round.map((r, i) => (i === 7 ? { ...r, bumps: 1 } : r));
    expect(relayMessages("ns", bumped).messages[0]!.msgId).not.toBe(a[0]!.msgId);
    expect(relayMessages("other", round).messages[0]!.msgId).not.toBe(a[0]!.msgId);
  });

  it("spread each message's result over its rows; a batch found pending counts as dispatched, a single token as refused", () => {
    const round = [...rows("a", 40), ...rows("b", 2)];
    const plan = relayMessages("ns", round);
    expect(plan.messages).toHaveLength(3);
    expect(plan.perRow(["busy", "busy", "error"])).toEqual([...Array(40).fill("ok"), "busy", "error"]);
    expect(plan.perRow(["error", "ok", "ok"])).toEqual([...Array(40).fill("error"), "ok", "ok"]);
  });
});

describe("batch token subjects and bodies", () => {
  it("round-trip the kind, and are never read as an identity's token", () => {
    const subject = batchSubject("ns", "kind", "AbC_-9");
    expect(parseBatchSubject("ns", subject)).toEqual({ kind: "kind" });
    expect(parseTokenSubject("ns", subject)).toBeNull();
    for (const s of ["dmm.ns.kind.batch", "dmm.ns.kind.batch.", "dmm.ns.kind.batch.a.b", "dmm.ns.kind.batch.a!", "dmm.other.kind.batch.x", "dmm.ns.kind.YQ"]) {
      expect(parseBatchSubject("ns", s), s).toBeNull();
    }
  });

  it("accept a JSON array of [identity, row id, bumps] with distinct identities dmm would accept, and nothing else", () => {
    const entries = ["a", "b.c", "日本語", "x".repeat(512)].map((identity, i) => ({ identity, row: i + 1, bumps: i }));
    expect(parseBatchBody(Buffer.from(batchBody(entries)))).toEqual(entries);
    const enc = (v: unknown) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v));
    const bad: unknown[] = [
      [],
      [["a", 1, 0], ["a", 2, 0]],
      [["", 1, 0]],
      [["a\u0000", 1, 0]],
      [["x".repeat(513), 1, 0]],
      [["\ud800", 1, 0]],
      [[1, 1, 0]],
      [["a", 0, 0]],
      [["a", 1.5, 0]],
      [["a", 1, -1]],
      [["a", "1", 0]],
      [["a", 1, 0, "extra"]],
      [["a", 1]],
      ["a"],
      { a: 1 },
      "not json",
      Array.from({ length: 257 }, (_, i) => [`k${i}`, i + 1, 0]),
    ];
    for (const b of bad) expect(parseBatchBody(enc(b)), JSON.stringify(b).slice(0, 40)).toBeNull();
  });
});
