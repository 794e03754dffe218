import { useInfiniteQuery, useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { useApi } from "../api/context";
import { uploadDocument } from "../api/upload";
import { useTurn } from "../chat/useTurn";
import {
  AttachmentStatus,
  MessageOrder,
  MessageRole,
  MessageStatus,
  type Message,
  type SearchResultRef,
} from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n } from "../i18n/i18n";
import { ErrorBanner } from "./ErrorBanner";
import { LiveTurn, MessageItem } from "./MessageItem";
import { SourceViewer } from "./SourceViewer";

type Upload = { key: number; name: string; fraction: number; error?: unknown };
let uploadKeys = 0;

export function ChatView({ chatId }: { chatId: string }) {
  const api = useApi();
  const { chat } = api;
  const { t } = useI18n();
  const queryClient = useQueryClient();
  const [source, setSource] = useState<SearchResultRef | null>(null);
  const [uploads, setUploads] = useState<Upload[]>([]);
  const [text, setText] = useState("");

  const details = useQuery({
    queryKey: ["chat", chatId],
    queryFn: () => chat.getChat({ id: chatId }),
    // Ingestion progress: poll while an attachment is being processed.
    refetchInterval: (q) =>
      q.state.data?.attachments.some((a) => a.status === AttachmentStatus.INGESTING) ? 1000 : false,
  });
  const history = useInfiniteQuery({
    queryKey: ["messages", chatId],
    queryFn: ({ pageParam }) =>
      chat.listMessages({ chatId, order: MessageOrder.TAIL, pageSize: 30, pageToken: pageParam }),
    initialPageParam: "",
    // Tail pages: the next token leads to older messages.
    getNextPageParam: (last) => last.nextPageToken || undefined,
  });
  const refresh = useCallback(
    () =>
      Promise.all([
        queryClient.invalidateQueries({ queryKey: ["messages", chatId] }),
        queryClient.invalidateQueries({ queryKey: ["chat", chatId] }),
        queryClient.invalidateQueries({ queryKey: ["chats"] }),
      ]),
    [queryClient, chatId],
  );
  const live = useTurn(chatId, refresh);

  const messages: Message[] = (history.data?.pages ?? [])
    .slice()
    .reverse()
    .flatMap((p) => p.messages);
  const lastMessage = messages[messages.length - 1];

  // After a reload: a turn still running on the server is followed again.
  const reattached = useRef(false);
  useEffect(() => {
    if (reattached.current || live.running || !lastMessage) return;
    if (lastMessage.role === MessageRole.ASSISTANT && lastMessage.status === MessageStatus.IN_PROGRESS) {
      reattached.current = true;
      void live.reattach(lastMessage.id);
    }
  }, [lastMessage, live]);

  // Older history loads when the top of the list scrolls into view.
  const top = useRef<HTMLDivElement | null>(null);
  const { hasNextPage, isFetchingNextPage, fetchNextPage } = history;
  useEffect(() => {
    const el = top.current;
    if (!el || !hasNextPage || typeof IntersectionObserver === "undefined") return;
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && !isFetchingNextPage) void fetchNextPage();
    });
    io.observe(el);
    return () => io.disconnect();
  }, [hasNextPage, isFetchingNextPage, fetchNextPage]);

  // New text keeps the newest message in view.
  const bottom = useRef<HTMLDivElement | null>(null);
  useEffect(() => {
    bottom.current?.scrollIntoView?.({ block: "end" });
  }, [messages.length, live.turn?.text]);

  const attach = useMutation({
    mutationFn: async (file: File) => {
      const key = ++uploadKeys;
      setUploads((u) => [...u, { key, name: file.name, fraction: 0 }]);
      const update = (patch: Partial<Upload>) =>
        setUploads((u) => u.map((x) => (x.key === key ? { ...x, ...patch } : x)));
      try {
        const stored = await uploadDocument(api, file, (fraction) => update({ fraction }));
        await chat.attachFile({ chatId, fileId: stored.id });
        setUploads((u) => u.filter((x) => x.key !== key));
      } catch (err) {
        update({ error: err });
        throw err;
      }
    },
    onSettled: () => void queryClient.invalidateQueries({ queryKey: ["chat", chatId] }),
  });

  const submit = (e: FormEvent) => {
    e.preventDefault();
    const value = text.trim();
    if (!value || live.running) return;
    setText("");
    void live.send(value);
  };

  // The in-progress message the live turn is drawing is not listed twice.
  const shown = live.turn?.turnId ? messages.filter((m) => m.id !== live.turn?.turnId) : messages;
  const pendingUser =
    live.running && live.turn && !live.turn.userMessage ? live.turn : null;

  return (
    <section className="chatview">
      <header className="row chat-head">
        <h2>{details.data?.title ?? ""}</h2>
      </header>
      <Attachments chatId={chatId} uploads={uploads} />
      {details.error && <ErrorBanner error={details.error} onRetry={() => void details.refetch()} />}
      <div className="messages" data-testid="messages">
        <div ref={top} />
        {history.isFetchingNextPage && <p className="muted">{t("loading")}</p>}
        {history.hasNextPage && !history.isFetchingNextPage && (
          <button type="button" className="link" onClick={() => void history.fetchNextPage()}>
            {t("loadOlder")}
          </button>
        )}
        {history.error && <ErrorBanner error={history.error} onRetry={() => void history.refetch()} />}
        {shown.map((m) => (
          <MessageItem key={m.id} message={m} onSource={setSource} />
        ))}
        {live.turn?.userMessage && !shown.some((m) => m.id === live.turn?.userMessage?.id) && (
          <MessageItem message={live.turn.userMessage} onSource={setSource} />
        )}
        {pendingUser && <p className="bubble user pending">{t("thinking")}</p>}
        {live.turn && <LiveTurn turn={live.turn} onSource={setSource} />}
        <div ref={bottom} />
      </div>
      {live.error !== null && <ErrorBanner error={live.error} onDismiss={live.clearError} />}
      {attach.error && <ErrorBanner error={attach.error} onDismiss={() => attach.reset()} />}
      <form className="composer" onSubmit={submit}>
        <label className="attach button" title={t("attachFile")}>
          <svg viewBox="0 0 24 24" width="18" height="18" aria-hidden="true" className="icon">
            <path d="M16.5 6.5 8.6 14.4a2 2 0 0 0 2.8 2.8l8-7.9a4 4 0 0 0-5.7-5.7l-8 8a6 6 0 0 0 8.5 8.5l6.3-6.4" />
          </svg>
          <span className="sr-only">{t("attachFile")}</span>
          <input
            type="file"
            data-testid="attach-input"
            accept=".pdf,.md,.html,.htm,.json,.txt,application/pdf,text/markdown,text/html,application/json,text/plain"
            onChange={(e) => {
              const f = e.target.files?.[0];
              if (f) attach.mutate(f);
              e.target.value = "";
            }}
          />
        </label>
        <textarea
          data-testid="composer"
          value={text}
          placeholder={t("messagePlaceholder")}
          onChange={(e) => setText(e.target.value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey) {
              e.preventDefault();
              e.currentTarget.form?.requestSubmit();
            }
          }}
          rows={2}
        />
        {live.running ? (
          <button key="stop" type="button" className="danger" data-testid="stop" onClick={() => void live.stop()}>
            {t("stop")}
          </button>
        ) : (
          <button key="send" type="submit" className="primary" data-testid="send" disabled={!text.trim()}>
            {t("send")}
          </button>
        )}
      </form>
      {source && <SourceViewer source={source} onClose={() => setSource(null)} />}
    </section>
  );
}

function Attachments({ chatId, uploads }: { chatId: string; uploads: Upload[] }) {
  const { chat } = useApi();
  const { t } = useI18n();
  const { data } = useQuery({ queryKey: ["chat", chatId], queryFn: () => chat.getChat({ id: chatId }) });
  const attachments = data?.attachments ?? [];
  if (attachments.length === 0 && uploads.length === 0) return null;
  return (
    <div className="attachments" aria-label={t("attachments")}>
      {attachments.map((a) => (
        <span key={a.id} className={`chip status-${AttachmentStatus[a.status]}`} data-testid="attachment" data-status={AttachmentStatus[a.status]}>
          {a.filename} · {t(`status${AttachmentStatus[a.status] as "READY" | "INGESTING" | "FAILED"}`)}
          {a.status === AttachmentStatus.FAILED && a.errorMessage ? ` (${a.errorMessage})` : ""}
        </span>
      ))}
      {uploads.map((u) => (
        <span key={u.key} className="chip" data-testid="upload">
          {u.error ? t("uploadFailed", { name: u.name }) : t("uploading", { name: u.name, percent: Math.round(u.fraction * 100) })}
          <progress max={1} value={u.fraction} />
        </span>
      ))}
    </div>
  );
}
