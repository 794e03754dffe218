import { createRouterTransport } from "@connectrpc/connect";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { render } from "@testing-library/react";
import type { ReactNode } from "react";
import { apiOver, type Api } from "../src/api/clients";
import { ApiProvider } from "../src/api/context";
import { memoryStore, Session } from "../src/auth/session";
import { I18nProvider } from "../src/i18n/i18n";

export type Routes = Parameters<typeof createRouterTransport>[0];

/** Every client over an in-memory router of the given service implementations. */
export function apiFor(routes: Routes, session = new Session(memoryStore())): Api {
  const transport = createRouterTransport(routes, { transport: { interceptors: [session.interceptor()] } });
  session.bind(transport);
  return apiOver(session, transport);
}

/** Renders `children` in Russian with a fresh query client (no retries) and `api`. */
export function mount(children: ReactNode, api: Api) {
  const qc = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  return render(
    <I18nProvider initial="ru">
      <QueryClientProvider client={qc}>
        <ApiProvider api={api}>{children}</ApiProvider>
      </QueryClientProvider>
    </I18nProvider>,
  );
}
