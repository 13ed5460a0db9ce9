/**
 * Keys are compared byte by byte (`COLLATE "C"`, migration 0011), whatever the database's
 * default collation. On a database whose default is linguistic (ICU en-US: "a" < "B" < "b"),
 * the key columns must still be bytewise, the parameter-typed keys of every statement must
 * still match them (no "could not determine which collation" errors, no missed look-ups), and
 * each identity must run exactly as often as with any other collation.
 */
import { describe, expect, it } from "vitest";
import postgres from "postgres";
import { migrate, open } from "../../src/bucket.js";
import type { Bucket } from "../../src/bucket.js";
import type { Context } from "../../src/types.js";
import { createConsoleLogger } from "../../src/log.js";
import { NATS_URL } from "../harness/env.js";
import { withScratchDatabase } from "../harness/scratch-db.js";
import { MODES, useTestEnvironment } from "../harness/setup.js";
import { quiesce } from "../harness/quiesce.js";
import { waitFor } from "../harness/wait.js";

const env = useTestEnvironment();

/** Identities whose language order differs from their byte order, plus look-alikes. */
const IDENTITIES = ["a", "B", "b", "A", "ä", "Z", "é", "e\u0301", "ß", "ss", "ﬀ", "ff", "😀", "k-10", "k-9", "Ω", "z"];

const runs = new Map<string, number>();
let renotified = false;

class Word {
  text = "";
  seen = 0;
  identity() {
    return this.text;
  }
  async materialize(ctx: Context) {
    runs.set(this.text, (runs.get(this.text) ?? 0) + 1);
    this.seen++;
    // One identity is notified again during its run: its finish puts it back on the outbox.
    if (this.text === "ä" && !renotified) {
      renotified = true;
      ctx.touch(Word, "B");
    }
  }
}

function withIcuDatabase(fn: (url: string) => Promise<void>): Promise<void> {
  return withScratchDatabase("icu", "template template0 locale_provider icu icu_locale 'en-US' locale 'C.UTF-8'", fn);
}

describe.each(MODES)("on a database whose default collation is ICU en-US, with %s dispatch", (mode) => {
  it("keeps the key columns bytewise and runs every identity, however its language order differs", async () => {
    await withIcuDatabase(async (url) => {
      await migrate(url);
      const sql = postgres(url, { max: 1, onnotice: () => {} });
      let bucket: Bucket | null = null;
      try {
        const [order] = await sql`select 'a' < 'B' as linguistic`;
        expect(order!.linguistic, "the database's own order is linguistic").toBe(true);
        const cols = await sql`
          select c.relname as tbl, a.attname as col, co.collname as coll
          from pg_attribute a join pg_class c on c.oid = a.attrelid join pg_namespace n on n.oid = c.relnamespace
          join pg_collation co on co.oid = a.attcollation
          where n.nspname = 'dmm' and c.relname in ('dmm_matter', 'dmm_outbox') and a.attname in ('namespace', 'kind', 'identity')
          order by 1, 2`;
        expect(cols.map((r) => `${r.tbl}.${r.col}:${r.coll}`)).toEqual([
          "dmm_matter.identity:C", "dmm_matter.kind:C", "dmm_matter.namespace:C",
          "dmm_outbox.identity:C", "dmm_outbox.kind:C", "dmm_outbox.namespace:C",
        ]);

        runs.clear();
        renotified = false;
        const namespace = env.namespace();
        bucket = await open(namespace, { database: url, nats: mode === "nats" ? NATS_URL : undefined, logger: createConsoleLogger("warn") });
        const stream = bucket.register("word", Word);
        const work = stream.work({ concurrency: 4 });
        await bucket.notify(IDENTITIES.map((text) => Object.assign(new Word(), { text })));
        // "B" runs twice: once for the notify, once for the touch made during "ä"'s run.
        await waitFor("every identity to run", () => IDENTITIES.every((id) => (runs.get(id) ?? 0) >= (id === "B" ? 2 : 1)));
        await quiesce(bucket, sql);
        expect(Object.fromEntries(runs)).toEqual(Object.fromEntries(IDENTITIES.map((id) => [id, id === "B" ? 2 : 1])));
        for (const id of IDENTITIES) {
          const view = await bucket.matter(Word, id);
          expect(view?.cache.text, `the matter of ${JSON.stringify(id)}`).toBe(id);
        }
        // Listed in byte order, not the database's language order.
        const listed = await sql`select identity from dmm.dmm_matter where namespace = ${namespace} order by identity`;
        const bytewise = [...IDENTITIES].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
        expect(listed.map((r) => r.identity)).toEqual(bytewise);
        await bucket.close();
        bucket = null;
        await work;
      } finally {
        await bucket?.close();
        await sql.end();
      }
    });
  });
});
