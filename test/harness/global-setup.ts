/**
 * Runs once per `vitest run`: drops test databases left by earlier runs and builds a fresh,
 * migrated template database that every test file clones.
 */
import postgres from "postgres";
import { migrate } from "../../src/bucket.js";
import { TEMPLATE_DB, TEST_DB_PREFIX, urlFor } from "./env.js";

export default async function setup(): Promise<void> {
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    const old = await admin<{ datname: string }[]>`
      select datname from pg_database where datname like ${`${TEST_DB_PREFIX}%`} or datname = ${TEMPLATE_DB}`;
    for (const { datname } of old) await admin.unsafe(`drop database if exists "${datname}" with (force)`);
    await admin.unsafe(`create database "${TEMPLATE_DB}"`);
  } finally {
    await admin.end();
  }
  await migrate(urlFor(TEMPLATE_DB));
}
