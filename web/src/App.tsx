import { useQueryClient } from "@tanstack/react-query";
import { lazy, Suspense, useEffect, useRef, useState } from "react";
import { useApi, useSession } from "./api/context";
import { ChatList } from "./components/ChatList";
import { ChatView } from "./components/ChatView";
import { ErrorBanner } from "./components/ErrorBanner";
import { LanguageSwitch } from "./components/LanguageSwitch";
import { NotificationBell } from "./components/NotificationBell";
import { Role } from "./gen/aivera/auth/v1/auth_pb.js";
import { parseStudio, type StudioRoute } from "./studio/route";
import { SettingsPanel } from "./components/SettingsPanel";
import { SignIn } from "./components/SignIn";
import { useI18n } from "./i18n/i18n";

// The studio and the administration are separate chunks: the chat's first load does not
// carry them.
const Studio = lazy(() => import("./studio/Studio"));
const Admin = lazy(() => import("./admin/Admin"));

/** The selected chat lives in the location hash (#/chat/<id>): ids only, never tokens. */
function chatFromHash(): string | null {
  const m = /^#\/chat\/([\w-]+)$/.exec(window.location.hash);
  return m?.[1] ?? null;
}

type View = { kind: "chat"; chatId: string | null } | { kind: "studio"; route: StudioRoute } | { kind: "admin" };

function viewFromHash(): View {
  const studio = parseStudio(window.location.hash);
  if (studio) return { kind: "studio", route: studio };
  if (window.location.hash === "#/admin") return { kind: "admin" };
  return { kind: "chat", chatId: chatFromHash() };
}

export function App() {
  const session = useSession();
  const { t } = useI18n();
  const [restoring, setRestoring] = useState(() => !session.signedIn && session.hasRefreshToken);
  const [restoreError, setRestoreError] = useState<unknown>(null);

  const restore = () => {
    setRestoreError(null);
    setRestoring(true);
    session
      .refresh()
      .catch((err: unknown) => setRestoreError(err))
      .finally(() => setRestoring(false));
  };
  // A reload keeps the tab's session: rotate the refresh token for a new access token
  // (once, on the first render).
  const started = useRef(false);
  useEffect(() => {
    if (started.current) return;
    started.current = true;
    if (restoring) restore();
  });

  if (restoreError !== null) return <ErrorBanner error={restoreError} onRetry={restore} />;
  if (restoring) return <p className="center muted">{t("loading")}</p>;
  if (!session.signedIn) return <SignIn />;
  return <Shell />;
}

function Shell() {
  const { session } = useApi();
  const { t } = useI18n();
  const queryClient = useQueryClient();
  const [view, setView] = useState<View>(viewFromHash);
  const [settingsOpen, setSettingsOpen] = useState(false);
  // Administration is shown to admins only (the admin services refuse anyone else anyway).
  const isAdmin = session.user?.role === Role.ADMIN;
  const chatId = view.kind === "chat" ? view.chatId : null;

  useEffect(() => {
    const onHash = () => setView(viewFromHash());
    window.addEventListener("hashchange", onHash);
    return () => window.removeEventListener("hashchange", onHash);
  }, []);

  const select = (id: string | null) => {
    window.location.hash = id ? `#/chat/${id}` : "";
    setView({ kind: "chat", chatId: id });
  };

  const signOut = async () => {
    try {
      await session.signOut();
    } finally {
      queryClient.clear();
      window.location.hash = "";
    }
  };

  const online = useOnline();

  return (
    <div className="shell">
      {!online && (
        <div className="banner offline" role="status" data-testid="offline">
          <span>{t("offline")}</span>
          <button type="button" onClick={() => void queryClient.refetchQueries({ type: "active" })}>
            {t("retry")}
          </button>
        </div>
      )}
      <header className="topbar">
        <span className="brand">{t("appName")}</span>
        <span className="muted" data-testid="whoami">
          {t("signedInAs", { name: session.user?.username ?? "" })}
        </span>
        <nav className="sections">
          <a href={chatId ? `#/chat/${chatId}` : "#/"} className={view.kind === "chat" ? "active" : ""} data-testid="nav-chats">
            {t("chats")}
          </a>
          <a href="#/studio" className={view.kind === "studio" ? "active" : ""} data-testid="nav-studio">
            {t("studio")}
          </a>
          {isAdmin && (
            <a href="#/admin" className={view.kind === "admin" ? "active" : ""} data-testid="nav-admin">
              {t("administration")}
            </a>
          )}
        </nav>
        <span className="spacer" />
        <NotificationBell />
        <LanguageSwitch />
        <button type="button" onClick={() => setSettingsOpen((v) => !v)} aria-expanded={settingsOpen}>
          {t("settings")}
        </button>
        <button type="button" onClick={() => void signOut()} data-testid="sign-out">
          {t("signOut")}
        </button>
      </header>
      <div className="body">
        {view.kind === "chat" && <ChatList selected={chatId} onSelect={select} />}
        <main className="main">
          <Suspense fallback={<p className="center muted">{t("loading")}</p>}>
            {view.kind === "chat" &&
              (chatId ? <ChatView key={chatId} chatId={chatId} /> : <p className="center muted">{t("selectChat")}</p>)}
            {view.kind === "studio" && <Studio route={view.route} />}
            {view.kind === "admin" &&
              (isAdmin ? <Admin /> : <p className="center muted" data-testid="not-admin">{t("errorPermission")}</p>)}
          </Suspense>
        </main>
        {settingsOpen && <SettingsPanel onClose={() => setSettingsOpen(false)} />}
      </div>
    </div>
  );
}

/** Whether the browser believes it is online (the offline banner). */
function useOnline(): boolean {
  const [online, setOnline] = useState(() => navigator.onLine !== false);
  useEffect(() => {
    const up = () => setOnline(true);
    const down = () => setOnline(false);
    window.addEventListener("online", up);
    window.addEventListener("offline", down);
    return () => {
      window.removeEventListener("online", up);
      window.removeEventListener("offline", down);
    };
  }, []);
  return online;
}
