import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import { DocumentStatus } from "../gen/aivera/rag/v1/rag_pb.js";
import { Bucket } from "../gen/aivera/storage/v1/storage_pb.js";
import type { Clone } from "../gen/aivera/training/v1/clones_pb.js";
import { useI18n } from "../i18n/i18n";
import { useUpload } from "./useUpload";

/** A clone's knowledge: documents in its knowledge base, with their ingestion status
 *  (polled while any is being processed); add (signed upload, then AddKnowledge), remove. */
export function CloneKnowledge({ clone }: { clone: Clone }) {
  const api = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const key = ["clone-knowledge", clone.knowledgeBaseId];
  const { upload, progress, error, setError } = useUpload(Bucket.DOCUMENTS, "clone");
  const docs = useQuery({
    queryKey: key,
    enabled: clone.knowledgeBaseId !== "",
    queryFn: () => api.rag.listDocuments({ knowledgeBaseId: clone.knowledgeBaseId, pageSize: 100 }),
    refetchInterval: (q) => (q.state.data?.documents.some((d) => d.status === DocumentStatus.PROCESSING) ? 1500 : false),
  });
  const add = async (file: File) => {
    const stored = await upload(file);
    if (stored === null) return;
    try {
      await api.clones.addKnowledge({ id: clone.id, fileId: stored.id });
    } catch (err) {
      setError(err);
    }
    await qc.invalidateQueries({ queryKey: ["clones"] });
    await qc.invalidateQueries({ queryKey: key });
  };
  const remove = useMutation({
    mutationFn: (documentId: string) => api.clones.removeKnowledge({ id: clone.id, documentId }),
    onSuccess: () => qc.invalidateQueries({ queryKey: key }),
  });
  return (
    <div className="knowledge" data-testid="clone-knowledge">
      <div className="row">
        <strong className="small">{t("knowledge")}</strong>
        <label className="button attach small">
          {t("addKnowledge")}
          <input
            type="file"
            data-testid="knowledge-input"
            disabled={progress !== null}
            onChange={(e) => {
              const file = e.target.files?.[0];
              e.target.value = "";
              if (file) void add(file);
            }}
          />
        </label>
      </div>
      {progress && (
        <p className="phase">
          {t("uploading", { name: progress.name, percent: Math.round(progress.fraction * 100) })}
          <progress max={1} value={progress.fraction} />
        </p>
      )}
      {[error, docs.error, remove.error].map((e, i) => (e ? <ErrorBanner key={i} error={e} onDismiss={i === 0 ? () => setError(null) : undefined} /> : null))}
      <ul className="plain">
        {docs.data?.documents.map((d) => {
          const status = DocumentStatus[d.status] ?? "UNSPECIFIED";
          return (
            <li key={d.id} className="row" data-testid="knowledge-doc" data-status={status}>
              <span>{d.filename}</span>
              <span className={`small status-${status}`}>
                {d.status === DocumentStatus.PROCESSING ? t("statusINGESTING") : d.status === DocumentStatus.READY ? t("statusREADY") : d.status === DocumentStatus.FAILED ? t("statusFAILED") : ""}
              </span>
              {d.error && <span className="small danger">{d.error}</span>}
              <button type="button" className="link danger" onClick={() => remove.mutate(d.id)}>
                {t("delete")}
              </button>
            </li>
          );
        })}
      </ul>
    </div>
  );
}
