/**
 * `dmm touch`: requests a run of one matter, keeping its cache, without the app's classes. The
 * same store verb as `bucket.touch()`: the generation is bumped and the outbox trigger enqueues
 * the matter in the same statement; any running worker of the namespace picks it up.
 */
import { checkIdentity, checkName } from "../codec.js";
import { checkSchemaVersion } from "../store/migrate.js";
import { readMatter } from "../store/matter.js";
import { touchMatters } from "../store/notify.js";
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

/** The text of `dmm touch --help`. */
export const TOUCH_HELP = `Usage: dmm touch [options] KIND IDENTITY

Requests a run of the matter (KIND, IDENTITY) in the namespace, keeping its cache: bumps its
generation, which enqueues it for the namespace's workers (and clears a parked state or a
pending backoff, like bucket.touch()). Needs no app code and no NATS: running workers pick it up.

Options:
  -n, --namespace NAME   The bucket's namespace (required; defaults to $DMM_NAMESPACE).
${DATABASE_HELP}
      --create           Create the matter (with an empty cache) if it does not exist.
                         Without it, touching a missing matter fails (a typo stays harmless).
  -h, --help             Show this help.

Exit codes: 0 touched, 1 failure (including: no such matter without --create), 2 usage error,
3 schema version mismatch.
`;

/** Runs `dmm touch` with `args`; returns the exit code. */
export async function touchCommand(args: string[], io: Io): Promise<number> {
  const { values, positionals, help } = parse(
    args,
    { ...DATABASE_OPTION, ...HELP_OPTION, namespace: { type: "string", short: "n" }, create: { type: "boolean" } },
    { min: 2, max: 2 },
  );
  if (help) {
    io.out.write(TOUCH_HELP);
    return EXIT.ok;
  }
  const url = databaseUrl(values.database, io.env);
  const namespace = values.namespace ?? (io.env.DMM_NAMESPACE || undefined);
  if (namespace === undefined) throw new UsageError("dmm touch needs a namespace: pass -n NAME or set DMM_NAMESPACE.");
  const [kind, identity] = positionals as [string, string];
  try {
    checkName("namespace", namespace);
    checkName("kind", kind);
    checkIdentity(kind, identity);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  return withDatabase(url, async (db) => {
    await checkSchemaVersion(db.client);
    const before = await readMatter(db.db, namespace, kind, identity);
    if (!before && !values.create) {
      throw new CommandError(
        `No matter ${kind} ${JSON.stringify(identity)} in namespace ${namespace}. Check the kind and identity ("dmm status -n ${namespace}"), or pass --create to create it with an empty cache.`,
      );
    }
    await touchMatters(db.db, namespace, [{ kind, identity }]);
    const after = await readMatter(db.db, namespace, kind, identity);
    io.out.write(
      `${before ? "Touched" : "Created and touched"} ${kind} ${JSON.stringify(identity)} in namespace ${namespace}: generation ${after?.generation ?? "?"} (observed ${after?.observedGeneration ?? "?"}).\n`,
    );
    return EXIT.ok;
  });
}
