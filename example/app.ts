/**
 * What every example command shares: settings from flags and the environment, the app's
 * database with its own migrations, dmm's migrations, and the bucket with the `music` kind.
 */
import { fileURLToPath } from "node:url";
import postgres from "postgres";
import { drizzle, type PostgresJsDatabase } from "drizzle-orm/postgres-js";
import { migrate as migrateApp } from "drizzle-orm/postgres-js/migrator";
import { createConsoleLogger, migrate as migrateDmm, open, type Bucket, type LogLevel, type WorkStream } from "dmm";
import * as schema from "./schema.js";
import { Music } from "./music.js";

/** The example's namespace: its matters are (example, music, <player id>). */
export const NAMESPACE = "example";
export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/test";
const MIGRATIONS_FOLDER = fileURLToPath(new URL("./migrations", import.meta.url));
/** Advisory lock key that serializes the app's own migrators (drizzle's migrate() takes none). */
const APP_MIGRATE_LOCK = 0x6d757369; // "musi"

export type AppDatabase = PostgresJsDatabase<typeof schema>;

/** The example's open database and bucket. */
export interface App {
  readonly db: AppDatabase;
  readonly client: postgres.Sql;
  readonly bucket: Bucket;
  readonly music: WorkStream<Music>;
  close(): Promise<void>;
}

/** How to reach the servers. */
export interface AppSettings {
  databaseUrl: string;
  /** NATS URL for JetStream dispatch; undefined for Postgres-only dispatch. */
  natsUrl?: string;
  namespace?: string;
  /** dmm's log level. Defaults to DMM_LOG_LEVEL, else info. */
  logLevel?: LogLevel;
  /** Options of open() the demo tunes (sweep and poll intervals). */
  tuning?: { sweepIntervalMs?: number; pollIntervalMs?: number; shutdownGraceMs?: number };
}

/**
 * Opens the app: runs the app's own migrations (example/migrations, under an advisory lock),
 * then dmm's migrate(), then opens the bucket on the same connection pool and registers `music`.
 */
export async function openApp(settings: AppSettings): Promise<App> {
  const client = postgres(settings.databaseUrl, { max: 10, onnotice: () => {}, connection: { application_name: "dmm-example" } });
  const db = drizzle(client, { schema });
  try {
    await migrateAppSchema(client, db);
    await migrateDmm(db);
    const bucket = await open(settings.namespace ?? NAMESPACE, {
      database: db,
      nats: settings.natsUrl,
      // Without a level: DMM_LOG_LEVEL, else info.
      logger: createConsoleLogger(settings.logLevel),
      ...settings.tuning,
    });
    const music = bucket.register("music", Music, { backoffBaseMs: 200, backoffMaxMs: 10_000, timeoutMs: 30_000 });
    return {
      db,
      client,
      bucket,
      music,
      async close() {
        await bucket.close();
        await client.end({ timeout: 5 });
      },
    };
  } catch (err) {
    await client.end({ timeout: 1 }).catch(() => {});
    throw err;
  }
}

async function migrateAppSchema(client: postgres.Sql, db: AppDatabase): Promise<void> {
  const lock = await client.reserve();
  try {
    await lock`select pg_advisory_lock(${APP_MIGRATE_LOCK})`;
    try {
      await migrateApp(db, { migrationsFolder: MIGRATIONS_FOLDER, migrationsTable: "example_migrations", migrationsSchema: "drizzle" });
    } finally {
      await lock`select pg_advisory_unlock(${APP_MIGRATE_LOCK})`;
    }
  } finally {
    lock.release();
  }
}
