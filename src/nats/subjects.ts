/**
 * Token subjects: `dmm.<namespace>.<kind>.<identity as base64url>`. Identities may hold any
 * Unicode, dots, `*`, `>` and spaces, none of which may appear raw in a subject token; base64url
 * is reversible, subject-safe and keeps one subject per identity (the per-subject limit needs it).
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
