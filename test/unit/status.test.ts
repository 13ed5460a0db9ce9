import { describe, expect, it } from "vitest";
import { PassThrough } from "node:stream";
import {
  duration,
  renderStatus,
  renderStatusDetail,
  renderStatusList,
  statusRows,
  statusSummary,
  useColor,
  watchStatus,
  type StatusMatter,
} from "../../src/status/index.js";

const NOW = new Date("2026-01-02T03:04:05.000Z");
const ANSI = /\x1b\[[0-9;]*m/;

function matter(over: Partial<StatusMatter> = {}): StatusMatter {
  return {
    kind: "music",
    identity: "p1",
    cache: { playerId: "p1", song: "So What" },
    generation: 3,
    observedGeneration: 3,
    attempts: 0,
    lastError: null,
    dueAt: null,
    state: "ok",
    leaseOwner: null,
    leaseEpoch: 4,
    leaseUntil: null,
    createdAt: new Date("2026-01-02T03:00:00.000Z"),
    updatedAt: new Date("2026-01-02T03:04:00.000Z"),
    ...over,
  };
}

const failing = matter({
  identity: "player-two",
  state: "failing",
  generation: 5,
  observedGeneration: 4,
  attempts: 2,
  dueAt: new Date(NOW.getTime() + 1_500),
  dueReason: "retry",
  lastError: "Error: GET song failed (HTTP 503)\n    at FleetClient.request (fleet.ts:10:5)",
});

describe("status list view", () => {
  it("aligns every column under its header", () => {
    const text = renderStatusList([matter(), failing], { now: NOW });
    const lines = text.split("\n");
    expect(lines[0]).toMatch(/^KIND\s+IDENTITY\s+STATE\s+GEN\/OBS\s+ATTEMPTS\s+NEXT DUE\s+LAST ERROR$/);
    const col = (name: string) => lines[0]!.indexOf(name);
    expect(lines[1]!.indexOf("ok")).toBe(col("STATE"));
    expect(lines[2]!.indexOf("failing")).toBe(col("STATE"));
    expect(lines[2]!.indexOf("5/4")).toBe(col("GEN/OBS"));
    expect(lines[2]!.indexOf("retry in 1.5s")).toBe(col("NEXT DUE"));
    expect(lines[2]!.indexOf("Error: GET song")).toBe(col("LAST ERROR"));
  });

  it("shows the last error on one line, marking that more lines follow", () => {
    const [, row] = statusRows([matter(), failing], { now: NOW });
    expect(row!.lastError).toBe("Error: GET song failed (HTTP 503) …");
    expect(renderStatusList([failing], { now: NOW })).not.toContain("FleetClient.request");
  });

  it("ends with a summary counting each state", () => {
    const text = renderStatusList([matter(), failing, matter({ identity: "p3" })], { now: NOW });
    expect(text.split("\n").at(-1)).toBe("3 matters: 2 ok, 1 failing");
    expect(statusSummary([])).toBe("0 matters");
    expect(statusSummary([matter({ state: "parked" })])).toBe("1 matter: 1 parked");
  });

  it("is plain text unless colour is asked for", () => {
    expect(renderStatusList([matter(), failing], { now: NOW })).not.toMatch(ANSI);
    const coloured = renderStatusList([matter(), failing], { now: NOW, color: true });
    expect(coloured).toMatch(ANSI);
    expect(coloured).toContain("\x1b[32mok");
    expect(coloured).toContain("\x1b[31mfailing");
  });

  it("keeps coloured columns aligned like plain ones", () => {
    const plain = renderStatusList([matter(), failing], { now: NOW });
    const coloured = renderStatusList([matter(), failing], { now: NOW, color: true });
    expect(coloured.replace(/\x1b\[[0-9;]*m/g, "")).toBe(plain);
  });

  it("cuts the last error to the terminal width so a matter stays one line", () => {
    const long = matter({ state: "failing", attempts: 1, lastError: `Error: ${"x".repeat(300)}` });
    const lines = renderStatusList([long], { now: NOW, width: 100 }).split("\n");
    expect(lines[1]!.length).toBeLessThanOrEqual(100);
    expect(lines[1]!.endsWith("…")).toBe(true);
  });

  it("renders the next due time relative to now, and a dash when nothing is scheduled", () => {
    const rows = statusRows(
      [matter(), matter({ dueAt: new Date(NOW.getTime() + 125_000), dueReason: "resync" }), matter({ dueAt: new Date(NOW.getTime() - 3_000) })],
      { now: NOW },
    );
    expect(rows.map((r) => r.nextDue)).toEqual(["-", "resync in 2m5s", "3.0s ago"]);
  });

  it("lists no rows but the header and summary for an empty namespace", () => {
    expect(renderStatusList([], { now: NOW }).split("\n")).toHaveLength(2);
  });
});

describe("status detail view", () => {
  it("shows the cache as JSON, the lease, the backoff and the full last error", () => {
    const text = renderStatusDetail(
      { ...failing, leaseOwner: "worker-7", leaseEpoch: 9, leaseUntil: new Date(NOW.getTime() + 20_000) },
      { now: NOW },
    );
    expect(text).toMatch(/^kind\s+music$/m);
    expect(text).toMatch(/^state\s+failing$/m);
    expect(text).toMatch(/^generation\s+5 \(observed 4, 1 behind\)$/m);
    expect(text).toMatch(/^backoff\s+2 failed attempts since the last success$/m);
    expect(text).toMatch(/^next due\s+retry in 1\.5s \(2026-01-02T03:04:06\.500Z\)$/m);
    expect(text).toMatch(/^lease\s+held by worker-7, epoch 9, until 2026-01-02T03:04:25\.000Z \(in 20s\)$/m);
    expect(text).toContain('"song": "So What"');
    expect(text).toContain("at FleetClient.request (fleet.ts:10:5)");
    expect(text).not.toMatch(ANSI);
  });

  it("says when the lease is free or expired", () => {
    expect(renderStatusDetail(matter(), { now: NOW })).toMatch(/^lease\s+free \(epoch 4\)$/m);
    const expired = renderStatusDetail(matter({ leaseOwner: "w", leaseUntil: new Date(NOW.getTime() - 2_000) }), { now: NOW });
    expect(expired).toContain("(expired 2.0s ago)");
  });

  it("is chosen by renderStatus for a single matter, the list for an array", () => {
    expect(renderStatus(matter(), { now: NOW })).toMatch(/^cache/m);
    expect(renderStatus([matter()], { now: NOW })).toMatch(/^KIND/);
  });
});

describe("status helpers", () => {
  it("formats durations briefly", () => {
    expect([850, 1_234, 45_000, 190_000, 7_500_000, 3 * 86_400_000 + 3_600_000].map(duration)).toEqual([
      "850ms",
      "1.2s",
      "45s",
      "3m10s",
      "2h5m",
      "3d1h",
    ]);
  });

  it("colours a terminal, not a pipe, and honours NO_COLOR and FORCE_COLOR", () => {
    const saved = { NO_COLOR: process.env.NO_COLOR, FORCE_COLOR: process.env.FORCE_COLOR };
    try {
      delete process.env.NO_COLOR;
      delete process.env.FORCE_COLOR;
      expect(useColor({ isTTY: true })).toBe(true);
      expect(useColor({ isTTY: false })).toBe(false);
      process.env.NO_COLOR = "1";
      expect(useColor({ isTTY: true })).toBe(false);
      process.env.FORCE_COLOR = "1";
      expect(useColor({ isTTY: false })).toBe(true);
    } finally {
      for (const [k, v] of Object.entries(saved)) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  it("watch repaints in place on a terminal and appends frames on a pipe, until aborted", async () => {
    for (const isTTY of [true, false]) {
      const out = Object.assign(new PassThrough(), { isTTY });
      let text = "";
      out.on("data", (d) => (text += String(d)));
      const stop = new AbortController();
      let frames = 0;
      await watchStatus(
        async () => {
          if (++frames === 3) stop.abort();
          return `frame ${frames}`;
        },
        { intervalMs: 1, signal: stop.signal, out },
      );
      expect(text).toContain("frame 1");
      expect(text).toContain("frame 2");
      expect(text.includes("\x1b[H\x1b[2J")).toBe(isTTY);
    }
  });

  it("watch shows a failing render in the frame and keeps going", async () => {
    const out = Object.assign(new PassThrough(), { isTTY: false });
    let text = "";
    out.on("data", (d) => (text += String(d)));
    const stop = new AbortController();
    let calls = 0;
    await watchStatus(
      async () => {
        calls++;
        if (calls === 1) throw new Error("connection refused");
        stop.abort();
        return "back";
      },
      { intervalMs: 1, signal: stop.signal, out },
    );
    expect(text).toContain("error: connection refused");
    expect(calls).toBe(2);
  });
});
