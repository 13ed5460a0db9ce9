/** What the numbers were measured on, recorded in every result file. */
import os from "node:os";
import type postgres from "postgres";
import { connect as natsConnect } from "@nats-io/transport-node";
import { NATS_URL } from "./db.js";

/** The `machine` object of a result file. */
export interface Machine {
  cpus: number;
  model: string;
  memGiB: number;
  node: string;
  postgres: string;
  nats: string;
}

/** Postgres settings that change what the numbers mean (fsync, autovacuum, …). */
export type PostgresSettings = Record<string, string>;

/** Collects CPU, memory, Node, Postgres and NATS server versions. */
export async function machineInfo(admin: postgres.Sql): Promise<Machine> {
  const [pg] = await admin<{ v: string }[]>`SELECT current_setting('server_version') AS v`;
  return {
    cpus: os.cpus().length,
    model: os.cpus()[0]?.model.trim() ?? "unknown",
    memGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
    node: process.version,
    postgres: pg!.v,
    nats: await natsVersion(),
  };
}

/** Server settings worth knowing when reading the results. */
export async function postgresSettings(admin: postgres.Sql): Promise<PostgresSettings> {
  const rows = await admin<{ name: string; setting: string; unit: string | null }[]>`
    SELECT name, setting, unit FROM pg_settings
     WHERE name IN ('synchronous_commit', 'fsync', 'autovacuum', 'shared_buffers', 'wal_level',
                    'full_page_writes', 'max_connections', 'commit_delay')
     ORDER BY name`;
  return Object.fromEntries(rows.map((r) => [r.name, r.unit ? `${r.setting} (${r.unit})` : r.setting]));
}

/** The NATS server's version from its INFO, or a note why it is unknown. */
async function natsVersion(): Promise<string> {
  try {
    const nc = await natsConnect({ servers: NATS_URL, timeout: 2_000, reconnect: false });
    const version = nc.info?.version ?? "unknown";
    await nc.close();
    return version;
  } catch (err) {
    return `unreachable (${err instanceof Error ? err.message : String(err)})`;
  }
}
