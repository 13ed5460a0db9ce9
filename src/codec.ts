/**
 * Validation and encoding of what users hand to dmm: names, identities and caches. Pure
 * functions, so every bad input is refused before anything is written.
 */
import { CacheTooLargeError, InvalidCacheError, InvalidIdentityError, InvalidNameError } from "./errors.js";

/** Namespaces and kinds end up in table rows, NATS subjects and stream names: keep them plain. */
const NAME = /^[a-z0-9_-]{1,64}$/;

/** The longest identity, in UTF-8 bytes. Longer keys make subjects and indexes unwieldy. */
export const MAX_IDENTITY_BYTES = 512;

/** Deepest nesting a cache may have; deeper structures are refused, not stack-overflowed. */
export const MAX_CACHE_DEPTH = 512;

/**
 * Makes any text storable in Postgres text and jsonb: lone surrogates become U+FFFD, NUL
 * becomes the visible escape `\u0000`, and text past `maxChars` is cut (never inside a
 * surrogate pair) with an ellipsis. For error messages and logs, which must always be recorded.
 */
export function storableText(text: string, maxChars = 8_000): string {
  let t = text.length > maxChars ? `${text.slice(0, maxChars)}…` : text;
  t = t.toWellFormed();
  return t.includes("\u0000") ? t.replaceAll("\u0000", "\\u0000") : t;
}

/** Checks a namespace or kind; `what` names it in the error ("namespace", "kind"). */
export function checkName(what: "namespace" | "kind", value: unknown): string {
  if (typeof value !== "string" || !NAME.test(value)) {
    throw new InvalidNameError(
      `The ${what} ${describe(value)} is not valid: use 1 to 64 characters from a-z, 0-9, "_" and "-" (for example "music").`,
    );
  }
  return value;
}

/** Checks an identity: a non-empty, well-formed string of at most 512 UTF-8 bytes without NUL. */
export function checkIdentity(kind: string, value: unknown): string {
  if (typeof value !== "string") {
    throw new InvalidIdentityError(
      `The identity of kind "${kind}" must be a string; got ${describe(value)}. Make identity() return the key as a string.`,
    );
  }
  if (value.length === 0) {
    throw new InvalidIdentityError(
      `The identity of kind "${kind}" is empty. Set the identity field before notifying (identity() returned "").`,
    );
  }
  if (!value.isWellFormed()) {
    throw new InvalidIdentityError(
      `The identity ${describe(value)} of kind "${kind}" contains a lone UTF-16 surrogate and cannot be stored as text. Use well-formed Unicode.`,
    );
  }
  if (value.includes("\u0000")) {
    throw new InvalidIdentityError(
      `The identity ${describe(value)} of kind "${kind}" contains a NUL character, which Postgres text cannot hold. Remove it or encode the key.`,
    );
  }
  const bytes = Buffer.byteLength(value, "utf8");
  if (bytes > MAX_IDENTITY_BYTES) {
    throw new InvalidIdentityError(
      `The identity of kind "${kind}" is ${bytes} bytes long (starting ${describe(value.slice(0, 40))}); the limit is ${MAX_IDENTITY_BYTES} bytes. Use a shorter key, such as a hash of it.`,
    );
  }
  return value;
}

/**
 * Serializes a materializer's own enumerable fields to JSON text, refusing anything that would
 * not come back as the same value: bigint, functions, symbols, Date and other class instances,
 * non-finite numbers, cycles, NUL characters and lone surrogates (which Postgres jsonb rejects).
 * Fields whose value is `undefined` are omitted, as JSON does. Throws `CacheTooLargeError` past
 * `maxBytes`.
 */
export function encodeCache(kind: string, identity: string, instance: object, maxBytes: number): string {
  return flatFieldsOnly(instance) ? sized(kind, identity, JSON.stringify({ ...instance }), maxBytes) : encodeDeep(kind, identity, instance, maxBytes);
}

/**
 * True when every own enumerable field is a well-formed string without NUL, a finite number, a
 * boolean, null or undefined, under an ordinary field name: the common cache, which needs no
 * walk (and none of its allocations) to be stored as it is.
 */
function flatFieldsOnly(instance: object): boolean {
  for (const key in instance) {
    if (!Object.hasOwn(instance, key)) return false;
    if (key === "__proto__" || !jsonbSafe(key)) return false;
    const value = (instance as Record<string, unknown>)[key];
    switch (typeof value) {
      case "string":
        if (!jsonbSafe(value)) return false;
        break;
      case "number":
        if (!Number.isFinite(value)) return false;
        break;
      case "boolean":
      case "undefined":
        break;
      default:
        if (value !== null) return false;
    }
  }
  return true;
}

/** Text jsonb can hold: no NUL character, no lone surrogate. */
function jsonbSafe(s: string): boolean {
  return s.isWellFormed() && !s.includes("\u0000");
}

function sized(kind: string, identity: string, text: string, maxBytes: number): string {
  // A UTF-16 code unit is at most 3 bytes of UTF-8: short texts need no count.
  const bytes = text.length * 3 <= maxBytes ? 0 : Buffer.byteLength(text, "utf8");
  if (bytes > maxBytes) {
    throw new CacheTooLargeError(
      `The cache of ${kind} ${describe(identity)} is ${bytes} bytes of JSON; the limit is ${maxBytes} bytes. Keep only what the materializer needs to compare with reality, or raise the bucket's maxCacheBytes.`,
    );
  }
  return text;
}

function encodeDeep(kind: string, identity: string, instance: object, maxBytes: number): string {
  const seen = new Set<object>();
  let depth = 0;
  const check = (value: unknown, path: string): void => {
    switch (typeof value) {
      case "string":
        if (!jsonbSafe(value)) {
          throw invalid(kind, identity, path, "a string with a NUL character or a lone surrogate", "remove or escape those characters");
        }
        return;
      case "number":
        if (!Number.isFinite(value)) {
          throw invalid(kind, identity, path, String(value), "store a finite number, or null");
        }
        return;
      case "boolean":
        return;
      case "undefined":
        return;
      case "bigint":
        throw invalid(kind, identity, path, `the bigint ${String(value)}n`, "store it as a string (value.toString())");
      case "function":
        throw invalid(kind, identity, path, "a function", "keep functions on the class (methods), not in fields");
      case "symbol":
        throw invalid(kind, identity, path, "a symbol", "store a string instead");
    }
    if (value === null) return;
    const obj = value as object;
    if (seen.has(obj)) {
      throw invalid(kind, identity, path, "a reference cycle", "store plain data without back-references");
    }
    if (depth >= MAX_CACHE_DEPTH) {
      throw invalid(kind, identity, path, `data nested more than ${MAX_CACHE_DEPTH} levels deep`, "flatten it");
    }
    depth++;
    try {
      if (Array.isArray(obj)) {
        seen.add(obj);
        for (let i = 0; i < obj.length; i++) {
          if (!(i in obj) || obj[i] === undefined) {
            throw invalid(kind, identity, `${path}[${i}]`, "undefined (or a hole) inside an array", "use null");
          }
          check(obj[i], `${path}[${i}]`);
        }
        seen.delete(obj);
        return;
      }
      checkObject(obj, path);
    } finally {
      depth--;
    }
  };
  const checkObject = (obj: object, path: string): void => {
    const proto = Object.getPrototypeOf(obj);
    if (proto !== Object.prototype && proto !== null && path !== "") {
      const name = (obj as { constructor?: { name?: string } }).constructor?.name ?? "object";
      const hint = obj instanceof Date ? "store date.toISOString() and parse it when you read it" : "store a plain object with its data";
      throw invalid(kind, identity, path, `a ${name} instance`, hint);
    }
    seen.add(obj);
    for (const key of Object.keys(obj)) {
      if (path === "" && key === "__proto__") {
        throw invalid(kind, identity, key, "a field named __proto__", "rename the field (restoring it would replace the instance's prototype)");
      }
      if (!jsonbSafe(key)) {
        throw invalid(kind, identity, `${path}.${key}`, "a field name with a NUL character or a lone surrogate", "rename the field");
      }
      check((obj as Record<string, unknown>)[key], path === "" ? key : `${path}.${key}`);
    }
    seen.delete(obj);
  };
  check(instance, "");
  return sized(kind, identity, JSON.stringify({ ...instance }), maxBytes);
}

function invalid(kind: string, identity: string, path: string, what: string, fix: string): InvalidCacheError {
  return new InvalidCacheError(
    `The cache of ${kind} ${describe(identity)} cannot be stored as JSON: field "${path || "(root)"}" holds ${what}; ${fix}.`,
  );
}

/** A short, quoted rendering of a value for error messages. */
export function describe(value: unknown): string {
  if (typeof value === "string") {
    const shown = value.length > 60 ? `${value.slice(0, 60)}…` : value;
    return JSON.stringify(shown);
  }
  if (typeof value === "bigint") return `${value}n`;
  if (value === undefined) return "undefined";
  if (typeof value === "function") return "a function";
  if (typeof value === "symbol") return value.toString();
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return Object.prototype.toString.call(value);
  }
}
