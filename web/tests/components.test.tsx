import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { act, cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import type { ReactNode } from "react";
import { afterEach, describe, expect, it } from "vitest";
import { App } from "../src/App";
import { apiOver, type Api } from "../src/api/clients";
import { ApiProvider } from "../src/api/context";
import { memoryStore, Session } from "../src/auth/session";
import { emptyTurn } from "../src/chat/turn";
import { ErrorBanner } from "../src/components/ErrorBanner";
import { LiveTurn } from "../src/components/MessageItem";
import { AuthService } from "../src/gen/aivera/auth/v1/auth_pb.js";
import { ChatService, Phase } from "../src/gen/aivera/chat/v1/chat_pb.js";
import { LocalizedMessageSchema } from "../src/gen/google/rpc/error_details_pb.js";
import { toBinary } from "@bufbuild/protobuf";
import { I18nProvider, type Locale } from "../src/i18n/i18n";

afterEach(cleanup);

function wrap(children: ReactNode, api: Api, locale: Locale = "ru") {
  const qc = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  return (
    <I18nProvider initial={locale}>
      <QueryClientProvider client={qc}>
        <ApiProvider api={api}>{children}</ApiProvider>
      </QueryClientProvider>
    </I18nProvider>
  );
}

/** The console's clients over an in-memory mesh answering what these screens call. */
function memoryApi(): Api {
  const session = new Session(memoryStore());
  const transport = createRouterTransport(
    ({ service }) => {
      service(AuthService, {
        exchangeStaticToken: (req) => {
          if (req.staticToken !== "avs_good") {
            const err = new ConnectError("bad", Code.Unauthenticated);
            const msg = create(LocalizedMessageSchema, { locale: "ru", message: "Неверный статический токен" });
            err.details.push({ type: LocalizedMessageSchema.typeName, value: toBinary(LocalizedMessageSchema, msg) });
            throw err;
          }
          return { accessToken: "a", refreshToken: "avr_1", expiresIn: 3600n, user: { username: "anna" } };
        },
      });
      service(ChatService, {
        listChats: (_req, ctx) => {
          if (ctx.requestHeader.get("authorization") !== "Bearer a") throw new ConnectError("no", Code.Unauthenticated);
          return { chats: [{ id: "c1", title: "Отчёт за май" }] };
        },
      });
    },
    { transport: { interceptors: [session.interceptor()] } },
  );
  session.bind(transport);
  return apiOver(session, transport);
}

describe("sign-in screen", () => {
  it("shows the service's localized error for a wrong token, then signs in and lists chats", async () => {
    const api = memoryApi();
    render(wrap(<App />, api));
    const input = screen.getByLabelText("Статический токен");
    fireEvent.change(input, { target: { value: "avs_bad" } });
    fireEvent.click(screen.getByRole("button", { name: "Войти" }));
    expect(await screen.findByRole("alert")).toHaveProperty("textContent", "Неверный статический токен");
    fireEvent.change(input, { target: { value: "avs_good" } });
    fireEvent.click(screen.getByRole("button", { name: "Войти" }));
    expect(await screen.findByText("Вы вошли как anna")).toBeTruthy();
    expect(await screen.findByText("Отчёт за май")).toBeTruthy();
    // The static token is not kept in the page once used.
    expect(document.body.innerHTML).not.toContain("avs_good");
  });
});

describe("ErrorBanner", () => {
  it("offers a retry for UNAVAILABLE, in the chosen language", async () => {
    let retried = 0;
    render(wrap(<ErrorBanner error={new ConnectError("x", Code.Unavailable)} onRetry={() => retried++} />, memoryApi(), "en"));
    expect(screen.getByRole("alert").textContent).toContain("The service is temporarily unavailable.");
    await act(async () => fireEvent.click(screen.getByRole("button", { name: "Retry" })));
    expect(retried).toBe(1);
  });

  it("offers no retry for a user's mistake", () => {
    render(wrap(<ErrorBanner error={new ConnectError("x", Code.InvalidArgument)} onRetry={() => undefined} />, memoryApi()));
    expect(screen.queryByRole("button", { name: "Повторить" })).toBeNull();
  });
});

describe("LiveTurn", () => {
  it("shows the phase as a progress line and the text so far", async () => {
    const turn = { ...emptyTurn("t"), phase: Phase.FLASH_CALL, progress: { done: 1n, total: 4n, unit: "steps" }, text: "Ответ пишется" };
    render(wrap(<LiveTurn turn={turn} />, memoryApi()));
    await waitFor(() => expect(screen.getByTestId("phase").textContent).toContain("Модель flash"));
    expect(screen.getByTestId("live-text").textContent).toBe("Ответ пишется");
    expect(screen.getByTestId("phase").querySelector("progress")?.getAttribute("max")).toBe("4");
  });
});
