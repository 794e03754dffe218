import { createContext, useContext, useSyncExternalStore, type ReactNode } from "react";
import type { Api } from "./clients";

const ApiContext = createContext<Api | null>(null);

export function ApiProvider({ api, children }: { api: Api; children: ReactNode }) {
  return <ApiContext.Provider value={api}>{children}</ApiContext.Provider>;
}

export function useApi(): Api {
  const api = useContext(ApiContext);
  if (api === null) throw new Error("useApi outside ApiProvider");
  return api;
}

/** Re-renders on every session change (sign-in, refresh, sign-out, expiry). */
export function useSession() {
  const { session } = useApi();
  useSyncExternalStore(
    (cb) => session.subscribe(cb),
    () => `${session.signedIn}:${session.accessToken() ?? ""}:${session.expired}`,
  );
  return session;
}
