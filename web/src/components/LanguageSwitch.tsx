import { useI18n, type Locale } from "../i18n/i18n";

export function LanguageSwitch() {
  const { locale, setLocale, t } = useI18n();
  return (
    <label className="lang">
      <span className="sr-only">{t("language")}</span>
      <select value={locale} onChange={(e) => setLocale(e.target.value as Locale)} aria-label={t("language")}>
        <option value="ru">RU</option>
        <option value="en">EN</option>
      </select>
    </label>
  );
}
