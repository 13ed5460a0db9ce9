/**
 * Runs once per `vitest run`: drops test databases left by earlier runs and builds a fresh,
 * migrated template database that every test file clones.
 */
import postgres from "postgres";
import { migrate } from "../../src/bucket.js";
import { TEST_DB_PATTERN, urlFor } from "./env.js";

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

export default async function setup(): Promise<() => Promise<void>> {
  process.env.DMM_TEST_RUN = String(process.pid);
  const template = `dmm_tpl_${process.pid}`;
  const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
  try {
    const all = await admin<{ datname: string }[]>`select datname from pg_database where datname like 'dmm\_%'`;
    for (const { datname } of all) {
      const m = TEST_DB_PATTERN.exec(datname);
      if (m && !alive(Number(m[1]))) await admin.unsafe(`drop database if exists "${datname}" with (force)`);
    }
    await admin.unsafe(`drop database if exists "${template}" with (force)`);
    await admin.unsafe(`create database "${template}"`);
  } finally {
    await admin.end();
  }
  await migrate(urlFor(template));
  return async () => {
    const end = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
    try {
      await end.unsafe(`drop database if exists "${template}" with (force)`);
    } finally {
      await end.end();
    }
  };
}
