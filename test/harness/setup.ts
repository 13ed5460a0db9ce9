/**
 * Per-file isolation for integration tests: a database cloned from the migrated template, fresh
 * namespaces (so fresh NATS streams), and a leak check that fails a test leaving a bucket,
 * client or child process open. A failed file keeps its database for inspection.
 */
import { afterAll, afterEach, beforeAll, expect } from "vitest";
import { randomBytes } from "node:crypto";
import type { ChildProcess } from "node:child_process";
import postgres from "postgres";
import { jetstreamManager } from "@nats-io/jetstream";
import { connect } from "@nats-io/transport-node";
import { open } from "../../src/bucket.js";
import type { Bucket } from "../../src/bucket.js";
import type { OpenOptions } from "../../src/options.js";
import { createConsoleLogger } from "../../src/log.js";
import { NATS_URL, TEMPLATE_DB, TEST_DB_PREFIX, urlFor } from "./env.js";

/** Both dispatch modes, for `describe.each` over behaviour they share. */
export const MODES = ["postgres", "nats"] as const;
export type Mode = (typeof MODES)[number];

interface FileState {
  dbName: string;
  url: string;
  buckets: Set<Bucket>;
  clients: Set<postgres.Sql>;
  children: Set<ChildProcess>;
  namespaces: Set<string>;
  failed: boolean;
}

/**
 * Sets up the calling test file: call once at module level. Returns accessors for the file's
 * database URL and helpers that register what they open for the leak check.
 */
export function useTestEnvironment() {
  const state: FileState = {
    dbName: `${TEST_DB_PREFIX}${randomBytes(5).toString("hex")}`,
    url: "",
    buckets: new Set(),
    clients: new Set(),
    children: new Set(),
    namespaces: new Set(),
    failed: false,
  };
  state.url = urlFor(state.dbName);

  beforeAll(async () => {
    const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(`create database "${state.dbName}" template "${TEMPLATE_DB}"`);
    } finally {
      await admin.end();
    }
  });

  afterEach(async (ctx) => {
    if (ctx.task.result?.state === "fail") state.failed = true;
    const leaked: string[] = [];
    for (const b of state.buckets) {
      leaked.push(`bucket ${b.namespace}`);
      await b.close().catch(() => {});
    }
    state.buckets.clear();
    for (const c of state.clients) {
      leaked.push("postgres client");
      await c.end({ timeout: 1 }).catch(() => {});
    }
    state.clients.clear();
    for (const child of state.children) {
      if (child.exitCode === null && child.signalCode === null) {
        leaked.push(`child process ${child.pid}`);
        child.kill("SIGKILL");
      }
    }
    state.children.clear();
    // A failed test rarely gets to its close() calls; report leaks of passing tests only.
    if (ctx.task.result?.state !== "fail") expect(leaked, "everything a test opens must be closed by the test").toEqual([]);
  });

  afterAll(async () => {
    if (state.namespaces.size > 0) {
      const nc = await connect({ servers: NATS_URL });
      const jsm = await jetstreamManager(nc);
      for (const ns of state.namespaces) await jsm.streams.delete(`dmm_${ns}`).catch(() => {});
      await nc.close();
    }
    if (state.failed) {
      console.error(`test database kept for inspection: ${state.dbName}`);
      return;
    }
    const admin = postgres(urlFor("postgres"), { max: 1, onnotice: () => {} });
    try {
      await admin.unsafe(`drop database if exists "${state.dbName}" with (force)`);
    } finally {
      await admin.end();
    }
  });

  return {
    /** The URL of this file's database. */
    get url() {
      return state.url;
    },
    /** A fresh namespace (and so a fresh NATS stream), removed after the file. */
    namespace(prefix = "t"): string {
      const ns = `${prefix}${randomBytes(4).toString("hex")}`;
      state.namespaces.add(ns);
      return ns;
    },
    /** Opens a bucket in `mode`, tracked by the leak check; close it in the test. */
    async open(mode: Mode, options: Partial<OpenOptions> = {}, namespace?: string): Promise<Bucket> {
      const ns = namespace ?? this.namespace();
      state.namespaces.add(ns);
      const bucket = await open(ns, {
        database: state.url,
        nats: mode === "nats" ? NATS_URL : undefined,
        logger: createConsoleLogger((process.env.DMM_LOG_LEVEL as "debug") ?? "warn"),
        ...options,
      });
      const close = bucket.close.bind(bucket);
      bucket.close = async () => {
        state.buckets.delete(bucket);
        await close();
      };
      state.buckets.add(bucket);
      return bucket;
    },
    /** A postgres.js client on this file's database, tracked by the leak check. */
    sql(options: postgres.Options<Record<string, never>> = {}): postgres.Sql & { close(): Promise<void> } {
      const client = postgres(state.url, { onnotice: () => {}, max: 4, ...options }) as unknown as postgres.Sql & { close(): Promise<void> };
      state.clients.add(client);
      client.close = async () => {
        state.clients.delete(client);
        await client.end({ timeout: 5 });
      };
      return client;
    },
    /** Registers a child process for the leak check (killed if still running after the test). */
    track(child: ChildProcess): ChildProcess {
      state.children.add(child);
      child.once("exit", () => state.children.delete(child));
      return child;
    },
  };
}
