/** `dmm status`: the list and detail views of a namespace's matters, from any shell. */
import { checkIdentity, checkName } from "../codec.js";
import { checkSchemaVersion } from "../store/migrate.js";
import { listMatters, readMatter, type MatterRow } from "../store/matter.js";
import type { Database } from "../store/db.js";
import { duration, renderStatusDetail, renderStatusList, useColor, watchStatus, type StatusOptions } from "../status/index.js";
import { listKinds, listNamespaces, listWorkers, type WorkerRow } from "./queries.js";
import {
  CommandError,
  DATABASE_HELP,
  DATABASE_OPTION,
  EXIT,
  HELP_OPTION,
  UsageError,
  databaseUrl,
  parse,
  withDatabase,
  type Io,
} from "./common.js";

/** The text of `dmm status --help`. */
export const STATUS_HELP = `Usage: dmm status [options] [IDENTITY]

Without IDENTITY: the namespace's registered worker processes, then a table of every matter
(kind, identity, state, generation/observed, attempts, next due, last error on one line) and a
count of states. With IDENTITY:
everything about it (of every kind that has it, or of --kind): state, generations, attempts
and backoff, the lease holder and expiry, timestamps, the cache as JSON and the full last error.

States: ok (last run succeeded, nothing newer), pending (a run is wanted), running (a worker
holds the lease), failing (the last run failed; a retry is scheduled), parked (the last run
threw TerminalError; waits for the next notify or touch).

Options:
  -n, --namespace NAME   The bucket's namespace. Defaults to $DMM_NAMESPACE; without either
                         the command fails and lists the namespaces in the database.
  -k, --kind KIND        Only matters of this kind.
${DATABASE_HELP}
  -w, --watch            Repaint every --interval-ms until Ctrl-C (in place on a terminal).
      --interval-ms N    Repaint period of --watch. Defaults to 1000.
      --limit N          List at most N matters. Defaults to 1000.
      --json             Print JSON instead of the table (one array, or one object per identity).
      --color, --no-color
                         Force colours on or off. Defaults to on when stdout is a terminal
                         and NO_COLOR is unset.
  -h, --help             Show this help.

Exit codes: 0 shown, 1 failure (Postgres unreachable; IDENTITY not found), 2 usage error
(including a missing namespace), 3 schema version mismatch.
`;

/** Runs `dmm status` with `args`; returns the exit code (`--watch` runs until `io.signal` aborts). */
export async function statusCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals, help } = parse(
    args,
    {
      ...DATABASE_OPTION,
      ...HELP_OPTION,
      namespace: { type: "string", short: "n" },
      kind: { type: "string", short: "k" },
      watch: { type: "boolean", short: "w" },
      "interval-ms": { type: "string" },
      limit: { type: "string" },
      json: { type: "boolean" },
      color: { type: "boolean" },
    },
    { min: 0, max: 1 },
  );
  if (help) {
    io.out.write(STATUS_HELP);
    return EXIT.ok;
  }
  const url = databaseUrl(values.database, io.env);
  const kind = values.kind === undefined ? undefined : usage(() => checkName("kind", values.kind));
  const identity = positionals[0];
  if (identity !== undefined) usage(() => checkIdentity(kind ?? "any", identity));
  const limit = integer("--limit", values.limit, 1000, 1, 100_000);
  const intervalMs = integer("--interval-ms", values["interval-ms"], 1000, 100, 3_600_000);
  const namespaceFlag = values.namespace ?? nonEmpty(io.env.DMM_NAMESPACE);
  if (namespaceFlag !== undefined) usage(() => checkName("namespace", namespaceFlag));

  return withDatabase(url, async (db) => {
    await checkSchemaVersion(db.client);
    const namespace = namespaceFlag ?? (await missingNamespace(db));
    const view: StatusOptions = { color: values.color ?? useColor(io.out), width: io.out.isTTY ? io.out.columns : undefined };

    const frame = async (): Promise<{ text: string; found: boolean }> => {
      const now = new Date();
      if (identity === undefined) {
        const matters = await listMatters(db.db, namespace, { kind, limit });
        if (values.json) return { text: JSON.stringify(matters.map(toJson), null, 2), found: true };
        const header = `namespace ${namespace}${kind ? `, kind ${kind}` : ""}; ${workersText(await listWorkers(db.db, namespace), now)}`;
        return { text: `${header}\n${renderStatusList(matters, { ...view, now })}`, found: true };
      }
      const kinds = kind ? [kind] : await listKinds(db.db, namespace);
      const found: MatterRow[] = [];
      for (const k of kinds) {
        const row = await readMatter(db.db, namespace, k, identity);
        if (row) found.push(row);
      }
      if (found.length === 0) {
        const where = `in namespace ${namespace}${kind ? ` (kind ${kind})` : ""}`;
        return { text: `No matter with identity ${JSON.stringify(identity)} ${where}.`, found: false };
      }
      if (values.json) return { text: JSON.stringify(found.length === 1 ? toJson(found[0]!) : found.map(toJson), null, 2), found: true };
      return { text: found.map((m) => renderStatusDetail(m, { ...view, now })).join("\n\n"), found: true };
    };

    if (values.watch) {
      await watchStatus(async () => (await frame()).text, { intervalMs, signal: io.signal, out: io.out });
      return EXIT.ok;
    }
    const { text, found } = await frame();
    if (!found) throw new CommandError(text);
    io.out.write(`${text}\n`);
    return EXIT.ok;
  });
}

/** "no workers registered" or "2 workers: host pid 12 (up 5m), …". */
function workersText(workers: WorkerRow[], now: Date): string {
  if (workers.length === 0) return "no workers registered";
  const list = workers.map((w) => `${w.host} pid ${w.pid} (up ${duration(Math.max(0, now.getTime() - w.startedAt.getTime()))})`);
  return `${workers.length} worker${workers.length === 1 ? "" : "s"}: ${list.join(", ")}`;
}

async function missingNamespace(db: Database): Promise<never> {
  const namespaces = await listNamespaces(db.db);
  const list = namespaces.length ? namespaces.join(", ") : "none yet";
  throw new UsageError(`dmm status needs a namespace: pass -n NAME or set DMM_NAMESPACE. Namespaces in this database: ${list}.`);
}

/** The JSON form of a matter: every field of the row (dates become ISO strings in JSON). */
function toJson(m: MatterRow): Record<string, unknown> {
  const { namespace, kind, identity, state, ...rest } = m;
  return { namespace, kind, identity, state, ...rest };
}

function usage<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === "" ? undefined : v;
}

function integer(flag: string, raw: string | undefined, fallback: number, min: number, max: number): number {
  if (raw === undefined) return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n < min || n > max) throw new UsageError(`${flag} needs a whole number from ${min} to ${max}; got ${JSON.stringify(raw)}.`);
  return n;
}
