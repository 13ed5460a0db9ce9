import { describe, expect, it } from "vitest";
import { parseTokenSubject, tokenSubject } from "../../src/nats/subjects.js";

describe("token subjects", () => {
  it("round-trip identities with dots, wildcards, spaces and any Unicode", () => {
    for (const id of ["plain", "a.b", "*", ">", "with space", "tab\t", "日本語", "🎵", "=/+", "x".repeat(512)]) {
      const subject = tokenSubject("ns", "kind", id);
      expect(subject).toMatch(/^dmm\.ns\.kind\.[A-Za-z0-9_-]+$/);
      expect(parseTokenSubject("ns", subject)).toEqual({ kind: "kind", identity: id });
    }
  });

  it("reject subjects dmm did not write", () => {
    for (const s of ["dmm.other.kind.YQ", "dmm.ns.kind", "dmm.ns.kind.a.b", "dmm.ns.kind.***", "dmm.ns..YQ", "dmm.ns.kind.YR"]) {
      expect(parseTokenSubject("ns", s), s).toBeNull();
    }
  });
});
