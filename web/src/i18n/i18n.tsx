import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";
import { en } from "./en";
import { ru, type Catalogue } from "./ru";

export type Locale = "ru" | "en";
export type Key = keyof Catalogue;
export const catalogues: Record<Locale, Catalogue> = { ru, en };
const STORAGE_KEY = "aivera.locale";

/** The text of `key` in `locale` with `{name}` placeholders filled. */
export function format(locale: Locale, key: Key, values: Record<string, string | number> = {}): string {
  return catalogues[locale][key].replace(/\{(\w+)\}/g, (_, name: string) =>
    name in values ? String(values[name]) : "—",
  );
}

// The language the services localize errors in (accept-language of every call).
let current: Locale = initialLocale();

export function currentLocale(): Locale {
  return current;
}

function initialLocale(): Locale {
  try {
    const saved = globalThis.localStorage?.getItem(STORAGE_KEY);
    if (saved === "ru" || saved === "en") return saved;
  } catch {
    // storage blocked: the default
  }
  return "ru";
}

type I18n = {
  locale: Locale;
  setLocale: (locale: Locale) => void;
  t: (key: Key, values?: Record<string, string | number>) => string;
};

const I18nContext = createContext<I18n | null>(null);

export function I18nProvider({ children, initial }: { children: ReactNode; initial?: Locale }) {
  const [locale, setState] = useState<Locale>(initial ?? current);
  current = locale;
  const setLocale = useCallback((next: Locale) => {
    current = next;
    try {
      localStorage.setItem(STORAGE_KEY, next);
    } catch {
      // storage blocked: the choice lasts for this page only
    }
    document.documentElement.lang = next;
    setState(next);
  }, []);
  const value = useMemo<I18n>(
    () => ({ locale, setLocale, t: (key, values) => format(locale, key, values) }),
    [locale, setLocale],
  );
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>;
}

export function useI18n(): I18n {
  const ctx = useContext(I18nContext);
  if (ctx === null) throw new Error("useI18n outside I18nProvider");
  return ctx;
}
