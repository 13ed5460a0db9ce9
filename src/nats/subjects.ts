/**
 * Token subjects: `dmm.<namespace>.<kind>.<identity as base64url>`. Identities may hold any
 * Unicode, dots, `*`, `>` and spaces, none of which may appear raw in a subject token; base64url
 * is reversible, subject-safe and keeps one subject per identity (the per-subject limit needs it).
 * A batch token (one message naming many identities of a kind, for backlogs) has its own subject
 * `dmm.<namespace>.<kind>.batch.<id>` and the identities as a JSON array in its body.
 */

/** The stream of a bucket's tokens. */
export function streamName(namespace: string): string {
  return `dmm_${namespace}`;
}

/** The consumer that the workers of one kind share. */
export function consumerName(kind: string): string {
  return `dmm_${kind}`;
}

/** All subjects of a bucket. */
export function bucketSubjects(namespace: string): string {
  return `dmm.${namespace}.>`;
}

/** All subjects of one kind. */
export function kindSubjects(namespace: string, kind: string): string {
  return `dmm.${namespace}.${kind}.>`;
}

/** The subject of one identity's token. */
export function tokenSubject(namespace: string, kind: string, identity: string): string {
  return `dmm.${namespace}.${kind}.${Buffer.from(identity, "utf8").toString("base64url")}`;
}

/** Most identities a batch token may name (the relay writes at most 128: room for a later policy). */
export const MAX_BATCH_IDENTITIES = 256;

/** The subject of one batch token; `id` ([A-Za-z0-9_-], at most 64) makes it unique. */
export function batchSubject(namespace: string, kind: string, id: string): string {
  return `dmm.${namespace}.${kind}.batch.${id}`;
}

/** The kind of a batch token's subject; null for anything else. */
export function parseBatchSubject(namespace: string, subject: string): { kind: string } | null {
  const prefix = `dmm.${namespace}.`;
  if (!subject.startsWith(prefix)) return null;
  const m = /^([^.]+)\.batch\.[A-Za-z0-9_-]{1,64}$/.exec(subject.slice(prefix.length));
  return m ? { kind: m[1]! } : null;
}

/** One identity of a batch token, with the outbox row (id and bump count) it was relayed from. */
export interface BatchEntry {
  identity: string;
  row: number;
  bumps: number;
}

/**
 * The entries of a batch token's body: a JSON array of 1 to MAX_BATCH_IDENTITIES
 * `[identity, row id, bumps]` with distinct identities dmm would accept; null for anything dmm
 * did not write.
 */
export function parseBatchBody(body: Uint8Array): BatchEntry[] | null {
  let list: unknown;
  try {
    list = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8"));
  } catch {
    return null;
  }
  if (!Array.isArray(list) || list.length === 0 || list.length > MAX_BATCH_IDENTITIES) return null;
  const entries: BatchEntry[] = [];
  const seen = new Set<string>();
  for (const e of list) {
    if (!Array.isArray(e) || e.length !== 3) return null;
    const [identity, row, bumps] = e as unknown[];
    if (!acceptable(identity) || seen.has(identity)) return null;
    if (!Number.isSafeInteger(row) || (row as number) < 1 || !Number.isSafeInteger(bumps) || (bumps as number) < 0) return null;
    seen.add(identity);
    entries.push({ identity, row: row as number, bumps: bumps as number });
  }
  return entries;
}

/** The body of a batch token (see parseBatchBody). */
export function batchBody(entries: readonly BatchEntry[]): string {
  return JSON.stringify(entries.map((e) => [e.identity, e.row, e.bumps]));
}

/** What dmm accepts as an identity: non-empty, well-formed Unicode, no NUL, at most 512 bytes. */
function acceptable(id: unknown): id is string {
  return (
    typeof id === "string" &&
    id.length > 0 &&
    !id.includes("\u0000") &&
    Buffer.byteLength(id, "utf8") <= 512 &&
    id.isWellFormed()
  );
}

/** Parses a token subject back into kind and identity; null for anything dmm did not write. */
export function parseTokenSubject(namespace: string, subject: string): { kind: string; identity: string } | null {
  const prefix = `dmm.${namespace}.`;
  if (!subject.startsWith(prefix)) return null;
  const rest = subject.slice(prefix.length);
  const dot = rest.indexOf(".");
  if (dot <= 0 || rest.indexOf(".", dot + 1) !== -1) return null;
  const kind = rest.slice(0, dot);
  const encoded = rest.slice(dot + 1);
  if (!/^[A-Za-z0-9_-]+$/.test(encoded)) return null;
  const identity = Buffer.from(encoded, "base64url").toString("utf8");
  if (identity.length === 0 || Buffer.from(identity, "utf8").toString("base64url") !== encoded) return null;
  // Nothing dmm would refuse as an identity can be a real token: NUL, or over 512 bytes.
  if (identity.includes("\u0000") || Buffer.byteLength(identity, "utf8") > 512) return null;
  return { kind, identity };
}
