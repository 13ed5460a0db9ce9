/**
 * Claims at the store level: one lease per identity, however a batch names it.
 */
import { describe, expect, it } from "vitest";
import { drizzle } from "drizzle-orm/postgres-js";
import { claimKeys, notifyMatters } from "../../src/store/index.js";
import { useTestEnvironment } from "../harness/setup.js";

const env = useTestEnvironment();

describe("claimKeys", () => {
  it("claims an identity named twice in one batch once, and reports the repeat as idle", async () => {
    const sql = env.sql();
    const db = drizzle(sql);
    const ns = env.namespace();
    await notifyMatters(db, ns, [{ kind: "k", identity: "a", cache: "{}" }, { kind: "k", identity: "b", cache: "{}" }]);
    const statuses = await claimKeys(db, ns, "owner-1", 30_000, "k", ["a", "b", "a"]);
    expect(statuses.map((s) => s.status)).toEqual(["claimed", "claimed", "idle"]);
    const [row] = await sql`select lease_epoch::int as epoch from dmm.dmm_matter where namespace = ${ns} and identity = 'a'`;
    expect(row!.epoch).toBe(1);
    await sql.close();
  });
});
