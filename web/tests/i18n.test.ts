import { describe, expect, it } from "vitest";
import { en } from "../src/i18n/en";
import { format } from "../src/i18n/i18n";
import { ru } from "../src/i18n/ru";

const placeholders = (s: string) => [...s.matchAll(/\{(\w+)\}/g)].map((m) => m[1]).sort();

describe("catalogues", () => {
  it("have the same keys and the same placeholders in every language", () => {
    expect(Object.keys(en).sort()).toEqual(Object.keys(ru).sort());
    for (const key of Object.keys(ru) as (keyof typeof ru)[]) {
      expect(placeholders(en[key]), key).toEqual(placeholders(ru[key]));
      expect(en[key].length, key).toBeGreaterThan(0);
    }
  });

  it("fills placeholders", () => {
    expect(format("ru", "signedInAs", { name: "anna" })).toBe("Вы вошли как anna");
    expect(format("en", "uploading", { name: "a.pdf", percent: 40 })).toBe("Uploading a.pdf: 40%");
  });
});
