/** Databases of a test's own, beside the file's database: empty, cloned, or of another locale. */
import { randomBytes } from "node:crypto";
import postgres from "postgres";
import { TEST_DB_PREFIX, urlFor } from "./env.js";

/**
 * Creates a database named after this run (so leftovers are recognised and cleaned), runs `fn`
 * with its URL and drops it afterwards, also when `fn` fails. `create` is what follows
 * `CREATE DATABASE "<name>"`: empty for an empty database, `template "<db>"` for a clone,
 * locale options for another collation.
 */
export async function withScratchDatabase(label: string, create: string, fn: (url: string) => Promise<void>): Promise<void> {
  const name = `${TEST_DB_PREFIX}${label}_${randomBytes(4).toString("hex")}`;
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  await admin.unsafe(`create database "${name}" ${create}`);
  try {
    await fn(urlFor(name));
  } finally {
    await admin.unsafe(`drop database if exists "${name}" with (force)`);
    await admin.end();
  }
}
