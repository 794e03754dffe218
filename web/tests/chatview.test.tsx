import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, createRouterTransport } from "@connectrpc/connect";
import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { apiOver, type Api } from "../src/api/clients";
import { ApiProvider } from "../src/api/context";
import { memoryStore, Session } from "../src/auth/session";
import { ChatView } from "../src/components/ChatView";
import {
  ChatEventSchema,
  ChatService,
  MessageRole,
  MessageSchema,
  MessageStatus,
  type ChatEvent,
  type Message,
  type WatchTurnRequest,
} from "../src/gen/aivera/chat/v1/chat_pb.js";
import { I18nProvider } from "../src/i18n/i18n";

afterEach(cleanup);

const TURN = "turn-7";
const ev = (seq: number, event: ChatEvent["event"]) => create(ChatEventSchema, { messageId: TURN, seq: BigInt(seq), event });
const tok = (seq: number, text: string) => ev(seq, { case: "llmToken", value: { text, model: "flash" } as never });
const msg = (id: string, role: MessageRole, content: string, status = MessageStatus.COMPLETE) =>
  create(MessageSchema, { id, chatId: "c1", role, content, status });

/** An in-memory ChatService whose SendMessage stream breaks after three events (as when a
 *  gateway restarts); WatchTurn then delivers the rest of the turn. */
function chatServer() {
  const state = {
    history: [] as Message[],
    watched: [] as WatchTurnRequest[],
    cancelled: [] as string[],
    release: null as null | (() => void),
  };
  const transport = createRouterTransport(({ service }) => {
    service(ChatService, {
      getChat: () => ({ id: "c1", title: "Чертежи" }),
      listMessages: () => ({ messages: state.history }),
      async *sendMessage(req) {
        yield ev(1, { case: "accepted", value: { userMessage: msg("u1", MessageRole.USER, req.text) } as never });
        yield tok(2, "Hel");
        yield tok(3, "lo ");
        await new Promise<void>((resolve) => (state.release = resolve));
        throw new ConnectError("gateway restarted", Code.Unavailable);
      },
      async *watchTurn(req) {
        state.watched.push(req);
        const all = [tok(2, "Hel"), tok(3, "lo "), tok(4, "world")];
        for (const e of all) if (e.seq > req.afterSeq) yield e;
        state.history = [msg("u1", MessageRole.USER, "Привет"), msg(TURN, MessageRole.ASSISTANT, "Hello world")];
        yield ev(5, { case: "final", value: { message: state.history[1] } as never });
      },
      cancelTurn: (req) => {
        state.cancelled.push(req.turnId);
        return {};
      },
    });
  });
  const session = new Session(memoryStore());
  const api: Api = apiOver(session, transport);
  return { state, api };
}

function mount(api: Api) {
  const qc = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  render(
    <I18nProvider initial="ru">
      <QueryClientProvider client={qc}>
        <ApiProvider api={api}>
          <ChatView chatId="c1" />
        </ApiProvider>
      </QueryClientProvider>
    </I18nProvider>,
  );
}

describe("ChatView streaming", () => {
  it("shows tokens as they come and, when the stream breaks, reattaches after the last seq", async () => {
    const { state, api } = chatServer();
    mount(api);
    fireEvent.change(screen.getByTestId("composer"), { target: { value: "Привет" } });
    fireEvent.click(screen.getByTestId("send"));
    await waitFor(() => expect(screen.getByTestId("live-text").textContent).toBe("Hello "));
    expect(screen.getByTestId("stop")).toBeTruthy();
    state.release?.(); // the stream breaks: UNAVAILABLE before the terminal event
    await waitFor(() => expect(screen.queryByTestId("live-turn")).toBeNull(), { timeout: 3000 });
    expect(state.watched.map((w) => [w.turnId, w.afterSeq])).toEqual([[TURN, 3n]]);
    const answers = screen.getAllByTestId("message").filter((m) => m.dataset.role === "assistant");
    expect(answers.map((a) => a.querySelector(".content")?.textContent)).toEqual(["Hello world"]);
  });

  it("Stop cancels the running turn on the server", async () => {
    const { state, api } = chatServer();
    mount(api);
    fireEvent.change(screen.getByTestId("composer"), { target: { value: "Привет" } });
    fireEvent.click(screen.getByTestId("send"));
    await waitFor(() => expect(screen.getByTestId("live-text").textContent).toBe("Hello "));
    fireEvent.click(screen.getByTestId("stop"));
    await waitFor(() => expect(state.cancelled).toEqual([TURN]));
    state.release?.();
  });

  it("after a reload, follows a turn still running (the last message IN_PROGRESS)", async () => {
    const { state, api } = chatServer();
    state.history = [msg("u1", MessageRole.USER, "Привет"), msg(TURN, MessageRole.ASSISTANT, "Hel", MessageStatus.IN_PROGRESS)];
    mount(api);
    await waitFor(() => expect(state.watched.map((w) => [w.turnId, w.afterSeq])).toEqual([[TURN, 0n]]));
    await waitFor(() => expect(screen.queryByTestId("live-turn")).toBeNull());
    expect(screen.getAllByTestId("message").map((m) => m.querySelector(".content")?.textContent)).toEqual([
      "Привет",
      "Hello world",
    ]);
  });
});
