import { useState, type FormEvent } from "react";
import { useApi } from "../api/context";
import { useI18n } from "../i18n/i18n";
import { ErrorBanner } from "./ErrorBanner";
import { LanguageSwitch } from "./LanguageSwitch";

export function SignIn() {
  const { session } = useApi();
  const { t } = useI18n();
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<unknown>(null);

  const submit = async (e?: FormEvent) => {
    e?.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await session.signIn(token.trim());
      setToken(""); // the static token is not kept anywhere
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  return (
    <div className="signin">
      <form onSubmit={(e) => void submit(e)} className="card" autoComplete="off">
        <div className="row">
          <h1>{t("signInTitle")}</h1>
          <span className="spacer" />
          <LanguageSwitch />
        </div>
        {session.expired && <p className="banner">{t("sessionExpired")}</p>}
        <p className="muted">{t("signInHint")}</p>
        <label>
          {t("staticToken")}
          <input
            type="password"
            name="static-token"
            value={token}
            onChange={(e) => setToken(e.target.value)}
            autoFocus
            spellCheck={false}
          />
        </label>
        {error !== null && <ErrorBanner error={error} onRetry={() => void submit()} />}
        <button type="submit" disabled={busy || token.trim() === ""} className="primary">
          {busy ? t("signingIn") : t("signIn")}
        </button>
      </form>
    </div>
  );
}
