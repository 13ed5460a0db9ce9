/**
 * Reproduction: `stream.work()` rejects (and so stops working the kind for good) when NATS does
 * not answer while it starts, instead of falling back to Postgres dispatch as the bucket does
 * for outages that begin later. The chaos run sees the same for Postgres errors at that moment
 * ("the database system is shutting down", a terminated connection): its worker processes die
 * with "stream.work() rejected" and a supervisor has to restart them.
 *
 * Fixed by 674f5b0 ("work() survives Postgres or NATS being down while it starts"); kept as a
 * regression check: it now prints that work() survived.
 *
 * Run: `npx tsx --conditions=dmm-source chaos/repro/work-rejects-during-outage.ts` (own private
 * Postgres and nats-server).
 */
import { open } from "dmm";
import { startNatsServer, startPostgresServer } from "../lib/index.js";

class Unit {
  id = "";
  identity() {
    return this.id;
  }
  materialize() {}
}

const [pg, nats] = await Promise.all([startPostgresServer(), startNatsServer()]);
const silent = { debug() {}, info() {}, warn() {}, error() {}, child: () => silent };
try {
  const bucket = await open("repro", { database: pg.url, nats: nats.url, migrate: true, logger: silent });
  const stream = bucket.register("unit", Unit);
  await nats.stop(); // NATS goes away after open(), before work()
  const started = Date.now();
  const outcome = await Promise.race([
    stream.work().then(
      () => "work() resolved",
      (err: Error) => `work() REJECTED after ${Date.now() - started} ms: ${err.name}: ${err.message}`,
    ),
    new Promise<string>((r) => setTimeout(() => r("work() still running after 15 s (it survived the outage)"), 15_000)),
  ]);
  console.log(outcome);
  await nats.start();
  await bucket.close();
} finally {
  await nats.dispose();
  await pg.dispose();
}
