import { describe, expect, it } from "vitest";
import { sameFlatFields } from "../../src/worker/engine.js";

class Item {
  key = "";
  count = 0;
  note: string | undefined = undefined;
  identity() {
    return this.key;
  }
}

function item(fields: Partial<Item>): Item {
  return Object.assign(new Item(), fields);
}

describe("the unchanged-cache check of a run", () => {
  it("finds flat fields equal to the stored ones unchanged, whatever their order", () => {
    expect(sameFlatFields(item({ key: "a", count: 2 }), JSON.parse('{"count":2,"key":"a"}'))).toBe(true);
    expect(sameFlatFields({ a: null, b: true, c: -0 }, { a: null, b: true, c: 0 })).toBe(true);
  });

  it("sees a changed, added or removed field", () => {
    expect(sameFlatFields(item({ key: "a", count: 3 }), { key: "a", count: 2 })).toBe(false);
    expect(sameFlatFields(item({ key: "a", count: 2, note: "new" }), { key: "a", count: 2 })).toBe(false);
    expect(sameFlatFields(item({ key: "a", count: 2 }), { key: "a", count: 2, gone: 1 })).toBe(false);
    expect(sameFlatFields(item({ key: "a", count: 2, note: undefined }), { key: "a", count: 2, note: "x" })).toBe(false);
  });

  it("leaves nested values and odd fields to the serialized texts", () => {
    const cache = JSON.parse('{"key":"a","tags":["x"]}');
    expect(sameFlatFields({ key: "a", tags: cache.tags }, cache)).toBe(false);
    expect(sameFlatFields({ key: "a", n: Number.NaN }, { key: "a", n: null })).toBe(false);
    const inherited = Object.assign(Object.create({ extra: 1 }), { key: "a" });
    expect(sameFlatFields(inherited, { key: "a" })).toBe(false);
  });
});
