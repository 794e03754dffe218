import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useState } from "react";
import { useApi } from "../api/context";
import type { Notification } from "../gen/aivera/training/v1/notifications_pb.js";
import { useI18n } from "../i18n/i18n";
import { ErrorBanner } from "./ErrorBanner";

const RECONNECT_MS = 3000;

/** Where a notification leads in the console. */
function linkOf(n: Notification): string {
  if (n.jobId) return `#/studio/jobs/${n.jobId}`;
  if (n.datasetId) return "#/studio/datasets";
  if (n.modelId) return "#/studio/models";
  return "#/studio";
}

/** A bell with the unread count: the list once, then WatchNotifications live (reattached
 *  after a lost stream). */
export function NotificationBell() {
  const { notifications } = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const [open, setOpen] = useState(false);
  const list = useQuery({
    queryKey: ["notifications"],
    queryFn: () => notifications.listNotifications({ pageSize: 20 }),
    retry: false,
  });
  useEffect(() => {
    const abort = new AbortController();
    void (async () => {
      while (!abort.signal.aborted) {
        try {
          for await (const e of notifications.watchNotifications({}, { signal: abort.signal })) {
            if (e.event.case === "notification") void qc.invalidateQueries({ queryKey: ["notifications"] });
          }
        } catch {
          if (abort.signal.aborted) return;
        }
        await new Promise((r) => setTimeout(r, RECONNECT_MS));
      }
    })();
    return () => abort.abort();
  }, [notifications, qc]);
  const markAll = useMutation({
    mutationFn: () => notifications.markRead({ all: true }),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["notifications"] }),
  });
  const items = list.data?.notifications ?? [];
  const unread = items.filter((n) => !n.read).length;
  return (
    <div className="bell">
      <button
        type="button"
        aria-label={t("notifications")}
        aria-expanded={open}
        onClick={() => setOpen((v) => !v)}
        data-testid="bell"
      >
        <svg className="icon" width="18" height="18" viewBox="0 0 24 24" aria-hidden="true">
          <path d="M6 8a6 6 0 0 1 12 0c0 7 3 9 3 9H3s3-2 3-9M10.3 21a1.94 1.94 0 0 0 3.4 0" />
        </svg>
        {unread > 0 && (
          <span className="badge" data-testid="unread">
            {unread}
          </span>
        )}
      </button>
      {open && (
        <div className="dropdown" data-testid="notifications">
          <div className="row">
            <strong>{t("notifications")}</strong>
            <span className="spacer" />
            {unread > 0 && (
              <button type="button" className="link" onClick={() => markAll.mutate()}>
                {t("markAllRead")}
              </button>
            )}
          </div>
          {list.error && <ErrorBanner error={list.error} onRetry={() => void list.refetch()} />}
          {items.length === 0 && <p className="muted small">{t("noNotifications")}</p>}
          <ul className="plain">
            {items.map((n) => (
              <li key={n.id} className={n.read ? "muted" : ""} data-testid="notification">
                <a href={linkOf(n)} onClick={() => setOpen(false)}>
                  <strong>{n.title}</strong>
                </a>
                <div className="small">{n.body}</div>
              </li>
            ))}
          </ul>
        </div>
      )}
    </div>
  );
}
