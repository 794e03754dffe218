import { describeError } from "../api/errors";
import { useI18n } from "../i18n/i18n";

/** A failed call in the user's language; a retry button where retrying may help. */
export function ErrorBanner({
  error,
  onRetry,
  onDismiss,
}: {
  error: unknown;
  onRetry?: () => void;
  onDismiss?: () => void;
}) {
  const { locale, t } = useI18n();
  const view = describeError(error, locale);
  return (
    <div className={view.offline ? "banner offline" : "banner error"} role="alert" data-testid="error">
      <span>{view.text}</span>
      {view.retryable && onRetry && (
        <button type="button" onClick={onRetry}>
          {t("retry")}
        </button>
      )}
      {onDismiss && (
        <button type="button" className="link" onClick={onDismiss}>
          {t("dismiss")}
        </button>
      )}
    </div>
  );
}
