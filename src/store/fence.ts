/**
 * The fence of `ctx.transaction`: inside the app's transaction, check that the run still holds
 * its lease and share-lock the matter row until commit, so the lease cannot be taken over (and
 * a zombie's writes cannot commit) while the transaction is open.
 */
import { sql } from "drizzle-orm";
import { rows, type Executor } from "./db.js";

/** True when (owner, epoch) still holds a live lease on the matter; locks the row FOR SHARE. */
export async function holdLease(
  tx: Executor,
  namespace: string,
  lease: { kind: string; identity: string; owner: string; epoch: number },
): Promise<boolean> {
  const r = await rows(
    tx,
    sql`select 1 from dmm.dmm_matter
        where namespace = ${namespace} and kind = ${lease.kind} and identity = ${lease.identity}
          and lease_owner = ${lease.owner} and lease_epoch = ${lease.epoch} and lease_until > now()
        for share`,
  );
  return r.length === 1;
}
