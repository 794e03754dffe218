import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { Code, ConnectError } from "@connectrpc/connect";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import { makeApi } from "./api/clients";
import { ApiProvider } from "./api/context";
import { Session, tabStore } from "./auth/session";
import { I18nProvider } from "./i18n/i18n";
import "./styles.css";

const RETRYABLE = new Set([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded]);

const queryClient = new QueryClient({
  defaultOptions: {
    queries: {
      // Retry only what may pass (service or network down); a user's mistake never.
      retry: (count, err) => count < 2 && RETRYABLE.has(ConnectError.from(err).code),
      refetchOnWindowFocus: false,
      staleTime: 5_000,
    },
  },
});

const api = makeApi(new Session(tabStore));
const root = document.getElementById("root");
if (root === null) throw new Error("#root is missing");
createRoot(root).render(
  <StrictMode>
    <I18nProvider>
      <QueryClientProvider client={queryClient}>
        <ApiProvider api={api}>
          <App />
        </ApiProvider>
      </QueryClientProvider>
    </I18nProvider>
  </StrictMode>,
);
