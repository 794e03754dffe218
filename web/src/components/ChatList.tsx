import { useInfiniteQuery, useMutation, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useApi } from "../api/context";
import { ArchivedFilter, type Chat } from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n } from "../i18n/i18n";
import { ErrorBanner } from "./ErrorBanner";

export function ChatList({ selected, onSelect }: { selected: string | null; onSelect: (id: string | null) => void }) {
  const { chat } = useApi();
  const { t } = useI18n();
  const queryClient = useQueryClient();
  const [archived, setArchived] = useState(false);
  const chats = useInfiniteQuery({
    queryKey: ["chats", archived],
    queryFn: ({ pageParam }) =>
      chat.listChats({
        pageSize: 50,
        pageToken: pageParam,
        archivedFilter: archived ? ArchivedFilter.ARCHIVED : ArchivedFilter.ACTIVE,
      }),
    initialPageParam: "",
    getNextPageParam: (last) => last.nextPageToken || undefined,
  });
  const invalidate = () => queryClient.invalidateQueries({ queryKey: ["chats"] });
  const create = useMutation({
    mutationFn: () => chat.createChat({}),
    onSuccess: (created) => {
      void invalidate();
      onSelect(created.id);
    },
  });
  const list = chats.data?.pages.flatMap((p) => p.chats) ?? [];

  return (
    <nav className="sidebar" aria-label={t("chats")}>
      <div className="row">
        <button type="button" className="primary" onClick={() => create.mutate()} disabled={create.isPending} data-testid="new-chat">
          {t("newChat")}
        </button>
        <span className="spacer" />
        <button type="button" className="link" onClick={() => setArchived((v) => !v)}>
          {archived ? t("showActive") : t("showArchived")}
        </button>
      </div>
      {create.error && <ErrorBanner error={create.error} onRetry={() => create.mutate()} onDismiss={() => create.reset()} />}
      {chats.error && <ErrorBanner error={chats.error} onRetry={() => void chats.refetch()} />}
      {chats.isPending && <p className="muted">{t("loading")}</p>}
      {!chats.isPending && list.length === 0 && <p className="muted">{t("noChats")}</p>}
      <ul className="chats">
        {list.map((c) => (
          <ChatRow key={c.id} chat={c} active={c.id === selected} onSelect={onSelect} onChanged={invalidate} />
        ))}
      </ul>
      {chats.hasNextPage && (
        <button type="button" className="link" onClick={() => void chats.fetchNextPage()} disabled={chats.isFetchingNextPage}>
          {chats.isFetchingNextPage ? t("loading") : t("moreChats")}
        </button>
      )}
    </nav>
  );
}

function ChatRow({
  chat: c,
  active,
  onSelect,
  onChanged,
}: {
  chat: Chat;
  active: boolean;
  onSelect: (id: string | null) => void;
  onChanged: () => Promise<void>;
}) {
  const { chat } = useApi();
  const { t } = useI18n();
  const [editing, setEditing] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const [title, setTitle] = useState(c.title);
  const update = useMutation({
    mutationFn: (change: { title?: string; archived?: boolean }) =>
      chat.updateChat({
        chat: { id: c.id, ...change },
        updateMask: { paths: Object.keys(change) },
      }),
    onSuccess: () => {
      setEditing(false);
      void onChanged();
    },
  });
  const remove = useMutation({
    mutationFn: () => chat.deleteChat({ id: c.id }),
    onSuccess: () => {
      if (active) onSelect(null);
      void onChanged();
    },
  });
  const error = update.error ?? remove.error;

  return (
    <li className={active ? "chat active" : "chat"} data-testid="chat-row">
      {editing ? (
        <form
          className="row"
          onSubmit={(e) => {
            e.preventDefault();
            update.mutate({ title: title.trim() });
          }}
        >
          <input value={title} onChange={(e) => setTitle(e.target.value)} aria-label={t("renamePrompt")} autoFocus />
          <button type="submit">{t("save")}</button>
          <button type="button" className="link" onClick={() => setEditing(false)}>
            {t("cancel")}
          </button>
        </form>
      ) : (
        <button type="button" className="chat-title" onClick={() => onSelect(c.id)} aria-current={active}>
          {c.title}
        </button>
      )}
      {active && !editing && (
        <div className="row small">
          <button type="button" className="link" onClick={() => setEditing(true)}>
            {t("rename")}
          </button>
          <button type="button" className="link" onClick={() => update.mutate({ archived: !c.archived })}>
            {c.archived ? t("unarchive") : t("archive")}
          </button>
          {confirming ? (
            <>
              <span>{t("confirmDelete", { title: c.title })}</span>
              <button type="button" className="danger" onClick={() => remove.mutate()}>
                {t("delete")}
              </button>
              <button type="button" className="link" onClick={() => setConfirming(false)}>
                {t("cancel")}
              </button>
            </>
          ) : (
            <button type="button" className="link danger" onClick={() => setConfirming(true)}>
              {t("delete")}
            </button>
          )}
        </div>
      )}
      {error && <ErrorBanner error={error} onDismiss={() => (update.reset(), remove.reset())} />}
    </li>
  );
}
