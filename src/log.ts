/**
 * The default logger: quiet, structured, on the console. Start, stop, failures and warnings
 * at info and above; per-run lines at debug, which is off unless `DMM_LOG_LEVEL=debug`.
 */
import type { Logger } from "./types.js";

/** Log levels in increasing severity; `silent` drops everything. */
export type LogLevel = "debug" | "info" | "warn" | "error" | "silent";

const RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40, silent: 99 };

/**
 * Creates a console logger printing `level message key=value …` lines. `level` defaults to
 * `DMM_LOG_LEVEL` or `info`.
 */
export function createConsoleLogger(
  level: LogLevel = (process.env.DMM_LOG_LEVEL as LogLevel | undefined) ?? "info",
  base: Record<string, unknown> = {},
): Logger {
  const min = RANK[level] ?? RANK.info;
  const emit = (lvl: Exclude<LogLevel, "silent">, msg: string, fields?: Record<string, unknown>) => {
    if (RANK[lvl] < min) return;
    const all = { ...base, ...fields };
    const parts = Object.entries(all).map(([k, v]) => `${k}=${format(v)}`);
    const line = `dmm ${lvl} ${msg}${parts.length ? ` ${parts.join(" ")}` : ""}`;
    (lvl === "error" || lvl === "warn" ? console.error : console.log)(line);
  };
  return {
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
    child: (fields) => createConsoleLogger(level, { ...base, ...fields }),
  };
}

function format(value: unknown): string {
  if (value instanceof Error) return JSON.stringify(value.message);
  if (typeof value === "string") return /^[\w.:/@-]*$/.test(value) && value !== "" ? value : JSON.stringify(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/**
 * Wraps a user-supplied logger so that a logger that throws never stops a dmm loop.
 */
export function safeLogger(inner: Logger): Logger {
  const guard =
    (fn: keyof Omit<Logger, "child">) =>
    (msg: string, fields?: Record<string, unknown>) => {
      try {
        inner[fn](msg, fields);
      } catch {
        /* a broken logger must not break the work it reports on */
      }
    };
  return {
    debug: guard("debug"),
    info: guard("info"),
    warn: guard("warn"),
    error: guard("error"),
    child: (fields) => {
      try {
        return safeLogger(inner.child(fields));
      } catch {
        return safeLogger(inner);
      }
    },
  };
}
