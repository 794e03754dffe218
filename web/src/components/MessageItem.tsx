import { useQuery } from "@tanstack/react-query";
import { useMemo } from "react";
import { useApi } from "../api/context";
import { citationTargets } from "../chat/markdown";
import { uniqueSources, type TurnView } from "../chat/turn";
import {
  MessageRole,
  MessageStatus,
  Phase,
  type Message,
  type MessageImage,
  type SearchResultRef,
} from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n, type Key } from "../i18n/i18n";
import { Markdown } from "./Markdown";

export function MessageItem({ message: m, onSource }: { message: Message; onSource: (s: SearchResultRef) => void }) {
  const { t } = useI18n();
  const user = m.role === MessageRole.USER;
  const sources = uniqueSources(m.searchResults);
  const citations = useMemo(() => citationTargets(m), [m]);
  return (
    <article className={user ? "bubble user" : "bubble assistant"} data-testid="message" data-role={user ? "user" : "assistant"}>
      <div className="who">{user ? t("you") : t("assistant")}</div>
      {/* Answers are markdown; what the user wrote is shown as typed. */}
      {user ? (
        <div className="content">{m.content}</div>
      ) : (
        <div className="content md">
          <Markdown text={m.content} citations={citations} onCite={onSource} />
        </div>
      )}
      {m.images.length > 0 && (
        <div className="images">
          {m.images.map((img) => (
            <StoredImage key={img.id} image={img} />
          ))}
        </div>
      )}
      {m.status === MessageStatus.INCOMPLETE && <p className="warn">{m.error?.reason === "CANCELLED" ? t("cancelled") : t("incomplete")}</p>}
      {m.error && m.status === MessageStatus.ERROR && <p className="warn">{m.error.message}</p>}
      {!user && m.modelsUsed.length > 0 && <p className="muted small">{t("models", { models: m.modelsUsed.join(", ") })}</p>}
      {!user && sources.length > 0 && <Sources sources={sources} citations={citations} onSource={onSource} />}
    </article>
  );
}

function Sources({
  sources,
  citations,
  onSource,
}: {
  sources: SearchResultRef[];
  citations: ReadonlyMap<number, SearchResultRef>;
  onSource: (s: SearchResultRef) => void;
}) {
  const { t } = useI18n();
  const key = (s: SearchResultRef) => `${s.documentId}/${s.blockId}/${s.page}`;
  // The markers the answer cites each source by, so that `[n]` in the text and its chip match.
  const markers = new Map<string, number[]>();
  for (const [n, s] of citations) markers.set(key(s), [...(markers.get(key(s)) ?? []), n]);
  return (
    <div className="sources">
      <span className="muted small">{t("sources")}:</span>
      {sources.map((s) => (
        <button
          type="button"
          key={key(s)}
          className="chip source"
          data-testid="source"
          title={s.text}
          onClick={() => onSource(s)}
        >
          {markers.has(key(s)) && <span className="marker">[{markers.get(key(s))?.join(", ")}]</span>}
          {t("sourceLabel", { page: s.page })} · {s.text.slice(0, 48)}
          {s.text.length > 48 ? "…" : ""}
        </button>
      ))}
    </div>
  );
}

/** A stored image of an answer (zoom crops, pages): a signed URL on demand. */
function StoredImage({ image }: { image: MessageImage }) {
  const { storage } = useApi();
  const { data } = useQuery({
    queryKey: ["download-url", image.fileId],
    queryFn: () => storage.createDownloadUrl({ id: image.fileId, ttlSeconds: 3600 }),
    staleTime: 30 * 60 * 1000,
  });
  return data ? <img src={data.url} alt={image.description} width={image.width || undefined} className="crop" /> : null;
}

/** The answer being written: the phase as a progress line, tokens as they come, tool
 *  calls and zoom crops inline. */
export function LiveTurn({ turn, onSource }: { turn: TurnView; onSource?: (s: SearchResultRef) => void }) {
  const { t } = useI18n();
  // Citations are known once the turn's final message arrives.
  const citations = useMemo(() => citationTargets(turn.final), [turn.final]);
  const phaseKey = turn.phase !== null ? (`phase${Phase[turn.phase]}` as Key) : null;
  const progress = turn.progress;
  return (
    <article className="bubble assistant live" data-testid="live-turn" aria-live="polite">
      <div className="who">{t("assistant")}</div>
      {phaseKey && (
        <div className="phase" data-testid="phase">
          <span>{turn.phaseText || t(phaseKey)}</span>
          {progress && progress.total > 0n ? (
            <progress max={Number(progress.total)} value={Number(progress.done)} />
          ) : (
            <progress />
          )}
        </div>
      )}
      {turn.tools.length > 0 && (
        <div className="tools">
          {turn.tools.map((tc) => (
            <span key={tc.id} className="chip tool">
              {t("toolCall", { name: tc.name })}
            </span>
          ))}
        </div>
      )}
      {turn.images.length > 0 && (
        <div className="images">
          {turn.images.map(({ image, url }) => (
            <img key={image.id} src={url} alt={image.description} className="crop" />
          ))}
        </div>
      )}
      {!turn.text && !phaseKey && <div className="muted">{t("thinking")}</div>}
      <div className="content md" data-testid="live-text">
        <Markdown text={turn.text} streaming={turn.final === null} citations={citations} onCite={onSource} />
      </div>
      {turn.warnings.map((w, i) => (
        <p key={i} className="warn small">
          {w}
        </p>
      ))}
    </article>
  );
}
