/**
 * The status views of `dmm status` and the example's `debug` command: a one-line-per-matter
 * table and a detail page for one matter. Pure functions of the matters and the clock, so the
 * same text comes out of the CLI, an app's own debug command and the unit tests; `watchStatus`
 * is the one piece that does I/O (it repaints a terminal).
 */
import type { MatterState, MatterView } from "../types.js";

/**
 * A matter as the status views read it: what `bucket.matters()` returns (the CLI reads the
 * same fields from the rows). `dueReason` and `parked` may be left out by hand-made values.
 */
export type StatusMatter = Omit<MatterView, "dueReason" | "parked"> & Partial<Pick<MatterView, "dueReason" | "parked">>;

/** How the views render. */
export interface StatusOptions {
  /**
   * ANSI colours (states, headers, errors). Defaults to false: plain text, which is what pipes
   * and files want. Use `useColor(process.stdout)` to decide like the CLI does.
   */
  color?: boolean;
  /** The clock for relative times ("in 1.2s"). Defaults to the current time. */
  now?: Date;
  /**
   * Width of the terminal in columns: the list view cuts the last-error column to fit. Defaults
   * to no limit (each error is still cut to its first line).
   */
  width?: number;
}

/** One line of the list view, as plain strings, in column order. */
export interface StatusRow {
  kind: string;
  identity: string;
  state: MatterState;
  /** `generation/observed`, e.g. `4/3` while a newer notify waits for its run. */
  generation: string;
  attempts: string;
  /** When the next scheduled run is due, relative to `now` (e.g. `retry in 1.2s`), or `-`. */
  nextDue: string;
  /** The first line of the last error, or empty. */
  lastError: string;
}

const HEADERS: Record<keyof StatusRow, string> = {
  kind: "KIND",
  identity: "IDENTITY",
  state: "STATE",
  generation: "GEN/OBS",
  attempts: "ATTEMPTS",
  nextDue: "NEXT DUE",
  lastError: "LAST ERROR",
};
const COLUMNS = Object.keys(HEADERS) as (keyof StatusRow)[];

/** Every state, in the order the summary line lists them. */
export const MATTER_STATES: readonly MatterState[] = ["ok", "pending", "running", "failing", "parked"];

const ANSI = {
  reset: "\x1b[0m",
  bold: "\x1b[1m",
  dim: "\x1b[2m",
  red: "\x1b[31m",
  green: "\x1b[32m",
  yellow: "\x1b[33m",
  magenta: "\x1b[35m",
  cyan: "\x1b[36m",
} as const;

const STATE_COLOR: Record<MatterState, string> = {
  ok: ANSI.green,
  pending: ANSI.yellow,
  running: ANSI.cyan,
  failing: ANSI.red,
  parked: ANSI.magenta,
};

/** The list view's rows as plain strings (for tests, JSON output or an app's own table). */
export function statusRows(matters: readonly StatusMatter[], options: Pick<StatusOptions, "now"> = {}): StatusRow[] {
  const now = options.now ?? new Date();
  return matters.map((m) => ({
    kind: m.kind,
    identity: m.identity,
    state: m.state,
    generation: `${m.generation}/${m.observedGeneration}`,
    attempts: String(m.attempts),
    nextDue: m.dueAt ? `${m.dueReason ? `${m.dueReason} ` : ""}${relative(m.dueAt, now)}` : "-",
    lastError: firstLine(m.lastError),
  }));
}

/**
 * The list view: an aligned table of every matter (kind, identity, state, generation/observed,
 * attempts, next due, last error on one line), then a summary line counting states.
 */
export function renderStatusList(matters: readonly StatusMatter[], options: StatusOptions = {}): string {
  const rows = statusRows(matters, options);
  const paint = painter(options.color ?? false);
  const widths = COLUMNS.map((c) => Math.max(HEADERS[c].length, ...rows.map((r) => r[c].length)));
  const lastIndex = COLUMNS.length - 1;
  // The error column takes what the terminal has left, so one matter stays one line.
  const fixed = widths.slice(0, lastIndex).reduce((a, w) => a + w + 2, 0);
  const errorRoom = options.width ? Math.max(options.width - fixed, 12) : Infinity;
  const line = (cells: string[], colorOf: (i: number) => string | undefined) =>
    cells
      .map((cell, i) => {
        const text = i === lastIndex ? clip(cell, errorRoom) : cell.padEnd(widths[i]!);
        return paint(text, colorOf(i));
      })
      .join("  ")
      .trimEnd();
  const out = [line(COLUMNS.map((c) => HEADERS[c]), () => ANSI.bold)];
  for (const r of rows) {
    out.push(
      line(
        COLUMNS.map((c) => r[c]),
        (i) => (COLUMNS[i] === "state" ? STATE_COLOR[r.state] : COLUMNS[i] === "lastError" ? ANSI.red : undefined),
      ),
    );
  }
  out.push(paint(statusSummary(matters), ANSI.dim));
  return out.join("\n");
}

/** "3 matters: 2 ok, 1 failing" (states with zero matters are left out). */
export function statusSummary(matters: readonly StatusMatter[]): string {
  const counts = new Map<MatterState, number>();
  for (const m of matters) counts.set(m.state, (counts.get(m.state) ?? 0) + 1);
  const parts = MATTER_STATES.filter((s) => counts.has(s)).map((s) => `${counts.get(s)} ${s}`);
  const noun = matters.length === 1 ? "matter" : "matters";
  return parts.length ? `${matters.length} ${noun}: ${parts.join(", ")}` : `0 matters`;
}

/**
 * The detail view of one matter: state, generations, attempts and backoff, the lease (holder,
 * epoch, expiry), timestamps, the cache as indented JSON and the full last error.
 */
export function renderStatusDetail(matter: StatusMatter, options: StatusOptions = {}): string {
  const now = options.now ?? new Date();
  const paint = painter(options.color ?? false);
  const m = matter;
  const pending = m.generation - m.observedGeneration;
  const lease =
    m.leaseOwner === null
      ? `free (epoch ${m.leaseEpoch})`
      : `held by ${m.leaseOwner}, epoch ${m.leaseEpoch}, until ${iso(m.leaseUntil)} (${m.leaseUntil ? relative(m.leaseUntil, now, "expired") : "?"})`;
  const backoff =
    m.attempts === 0
      ? "none"
      : `${m.attempts} failed attempt${m.attempts === 1 ? "" : "s"} since the last success`;
  const fields: [string, string][] = [
    ["kind", m.kind],
    ["identity", m.identity],
    ["state", paint(m.state, STATE_COLOR[m.state])],
    ["generation", `${m.generation} (observed ${m.observedGeneration}${pending > 0 ? `, ${pending} behind` : ""})`],
    ["attempts", String(m.attempts)],
    ["backoff", backoff],
    ["next due", m.dueAt ? `${m.dueReason ? `${m.dueReason} ` : ""}${relative(m.dueAt, now)} (${iso(m.dueAt)})` : "-"],
    ["lease", lease],
    ["created", iso(m.createdAt)],
    ["updated", iso(m.updatedAt)],
  ];
  const width = Math.max(...fields.map(([k]) => k.length), "last error".length);
  const out = fields.map(([k, v]) => `${paint(k.padEnd(width), ANSI.bold)}  ${v}`);
  out.push(`${paint("cache".padEnd(width), ANSI.bold)}  ${indent(JSON.stringify(m.cache, null, 2), width + 2)}`);
  const error = m.lastError === null ? "-" : paint(indent(m.lastError, width + 2), ANSI.red);
  out.push(`${paint("last error".padEnd(width), ANSI.bold)}  ${error}`);
  return out.join("\n");
}

/** The list view for an array, the detail view for one matter. */
export function renderStatus(input: readonly StatusMatter[] | StatusMatter, options: StatusOptions = {}): string {
  return isList(input) ? renderStatusList(input, options) : renderStatusDetail(input, options);
}

function isList(input: readonly StatusMatter[] | StatusMatter): input is readonly StatusMatter[] {
  return Array.isArray(input);
}

/**
 * Whether to colour output written to `stream`: on a terminal, unless `NO_COLOR` is set;
 * `FORCE_COLOR` (not `0`) forces it on.
 */
export function useColor(stream: { isTTY?: boolean } = process.stdout): boolean {
  const force = process.env.FORCE_COLOR;
  if (force !== undefined && force !== "" && force !== "0") return true;
  if (process.env.NO_COLOR !== undefined && process.env.NO_COLOR !== "") return false;
  return stream.isTTY === true;
}

/** Options of `watchStatus`. */
export interface WatchOptions {
  /** Time between repaints. Defaults to 1 000 ms. */
  intervalMs?: number;
  /** Stops watching (the returned promise resolves) when aborted. */
  signal?: AbortSignal;
  /** Where to write. Defaults to `process.stdout`. */
  out?: { write(text: string): unknown; isTTY?: boolean };
}

/**
 * Prints `render()` every `intervalMs` until `signal` aborts. On a terminal each frame replaces
 * the last in place (cursor home, clear); piped, frames follow each other separated by a blank
 * line, so a log of the output stays readable. An error from `render` is shown in the frame and
 * watching goes on (the database may come back).
 */
export async function watchStatus(render: () => Promise<string>, options: WatchOptions = {}): Promise<void> {
  const out = options.out ?? process.stdout;
  const intervalMs = options.intervalMs ?? 1_000;
  const signal = options.signal;
  const tty = out.isTTY === true;
  let first = true;
  while (!signal?.aborted) {
    let frame: string;
    try {
      frame = await render();
    } catch (err) {
      frame = `error: ${err instanceof Error ? err.message : String(err)}`;
    }
    if (signal?.aborted) break;
    const stamp = `${new Date().toISOString()}  (every ${intervalMs} ms; Ctrl-C to stop)`;
    if (tty) out.write(`\x1b[H\x1b[2J${stamp}\n${frame}\n`);
    else out.write(`${first ? "" : "\n"}${stamp}\n${frame}\n`);
    first = false;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, intervalMs);
      signal?.addEventListener("abort", done, { once: true });
      function done() {
        clearTimeout(timer);
        signal?.removeEventListener("abort", done);
        resolve();
      }
    });
  }
}

function painter(color: boolean): (text: string, code: string | undefined) => string {
  return (text, code) => (color && code && text !== "" ? `${code}${text}${ANSI.reset}` : text);
}

/** "in 1.2s", "3m ago", "now"; `past` replaces "… ago" (e.g. "expired"). */
function relative(at: Date, now: Date, past?: string): string {
  const ms = at.getTime() - now.getTime();
  if (Math.abs(ms) < 50) return "now";
  const text = duration(Math.abs(ms));
  if (ms > 0) return `in ${text}`;
  return past ? `${past} ${text} ago` : `${text} ago`;
}

/** A short human duration: 850ms, 1.2s, 45s, 3m10s, 2h5m, 3d4h. */
export function duration(ms: number): string {
  if (ms < 1_000) return `${Math.round(ms)}ms`;
  if (ms < 10_000) return `${(Math.floor(ms / 100) / 10).toFixed(1)}s`;
  const s = Math.floor(ms / 1_000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${s % 60 ? `${s % 60}s` : ""}`;
  const h = Math.floor(m / 60);
  if (h < 24) return `${h}h${m % 60 ? `${m % 60}m` : ""}`;
  const d = Math.floor(h / 24);
  return `${d}d${h % 24 ? `${h % 24}h` : ""}`;
}

function firstLine(text: string | null): string {
  if (!text) return "";
  const line = text.split("\n", 1)[0]!.trim();
  return text.includes("\n") ? `${line} …` : line;
}

function clip(text: string, room: number): string {
  if (text.length <= room) return text;
  return `${text.slice(0, Math.max(0, room - 1))}…`;
}

function indent(text: string, by: number): string {
  return text.split("\n").join(`\n${" ".repeat(by)}`);
}

function iso(d: Date | null): string {
  return d ? d.toISOString() : "-";
}
