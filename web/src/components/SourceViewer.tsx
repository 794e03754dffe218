import { useQuery } from "@tanstack/react-query";
import { useEffect } from "react";
import { useApi } from "../api/context";
import { boxPercent } from "../chat/turn";
import type { SearchResultRef } from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n } from "../i18n/i18n";
import { ErrorBanner } from "./ErrorBanner";

/** A source block on its page: the stored page image with the block's box drawn over it
 *  (an SVG in the page's pixel space, so the box scales with the image). */
export function SourceViewer({ source, onClose }: { source: SearchResultRef; onClose: () => void }) {
  const { rag, storage } = useApi();
  const { t } = useI18n();
  const page = useQuery({
    queryKey: ["page", source.documentId, source.page],
    queryFn: () =>
      rag.getDocument({ id: source.documentId, firstPage: source.page, lastPage: source.page, blockPageSize: 1 }),
    staleTime: Infinity,
  });
  const info = page.data?.pages.find((p) => p.number === source.page) ?? page.data?.pages[0];
  const fileId = info?.imageFileId ?? "";
  const url = useQuery({
    queryKey: ["download-url", fileId],
    queryFn: () => storage.createDownloadUrl({ id: fileId, ttlSeconds: 3600 }),
    enabled: fileId !== "",
    staleTime: 30 * 60 * 1000,
  });

  useEffect(() => {
    const onKey = (e: KeyboardEvent) => e.key === "Escape" && onClose();
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [onClose]);

  const width = info?.widthPx || 1000;
  const height = info?.heightPx || 1414;
  const box = source.box?.normalized;
  const rect = box ? boxPercent(box) : null;
  const error = page.error ?? url.error;

  return (
    <div className="modal" role="dialog" aria-modal="true" aria-label={t("sourceTitle", { page: source.page })} data-testid="source-viewer">
      <div className="modal-body">
        <div className="row">
          <h3>{t("sourceTitle", { page: source.page })}</h3>
          <span className="spacer" />
          <button type="button" onClick={onClose} data-testid="close-source">
            {t("close")}
          </button>
        </div>
        {error && <ErrorBanner error={error} onRetry={() => void (page.error ? page.refetch() : url.refetch())} />}
        {page.isPending && <p className="muted">{t("loading")}</p>}
        {page.data && fileId === "" && (
          <>
            <p className="muted">{t("noPageImage")}</p>
            <blockquote>{source.text}</blockquote>
          </>
        )}
        {url.data && (
          <svg className="page" viewBox={`0 0 ${width} ${height}`} data-testid="page-image" role="img">
            <image href={url.data.url} x={0} y={0} width={width} height={height} />
            {rect && (
              <rect
                data-testid="source-box"
                className="source-box"
                x={(rect.x / 100) * width}
                y={(rect.y / 100) * height}
                width={(rect.width / 100) * width}
                height={(rect.height / 100) * height}
              />
            )}
          </svg>
        )}
        {fileId !== "" && <blockquote className="small">{source.text}</blockquote>}
      </div>
    </div>
  );
}
