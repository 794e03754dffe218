import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import type { ModelArtifact, ModelDownloadUrl } from "../gen/aivera/training/v1/models_pb.js";
import { TrainingMethod } from "../gen/aivera/training/v1/jobs_pb.js";
import { useI18n } from "../i18n/i18n";
import { bytes, loss } from "./format";
import { useState } from "react";

/** Trained adapters with their metrics; download through signed URLs; delete. */
export function ModelsPage() {
  const { models } = useApi();
  const { t } = useI18n();
  const list = useQuery({ queryKey: ["models"], queryFn: () => models.listModels({ pageSize: 100 }) });
  return (
    <section className="page" data-testid="models-page">
      <h2>{t("modelsTitle")}</h2>
      {list.error && <ErrorBanner error={list.error} onRetry={() => void list.refetch()} />}
      {list.data?.models.length === 0 && <p className="muted">{t("noModels")}</p>}
      {list.data && list.data.models.length > 0 && (
        <table className="table">
          <thead>
            <tr>
              <th>{t("name")}</th>
              <th>{t("baseModel")}</th>
              <th>{t("method")}</th>
              <th>{t("steps")}</th>
              <th>{t("loss")}</th>
              <th>{t("evalLoss")}</th>
              <th>{t("size")}</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {list.data.models.map((m) => (
              <ModelRow key={m.id} model={m} />
            ))}
          </tbody>
        </table>
      )}
    </section>
  );
}

function ModelRow({ model: m }: { model: ModelArtifact }) {
  const { models } = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const [urls, setUrls] = useState<ModelDownloadUrl[] | null>(null);
  const download = useMutation({
    mutationFn: () => models.createModelDownloadUrl({ id: m.id }),
    onSuccess: (r) => setUrls(r.urls),
  });
  const remove = useMutation({
    mutationFn: () => models.deleteModel({ id: m.id }),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["models"] }),
  });
  return (
    <>
      <tr data-testid="model" data-id={m.id}>
        <td>
          {m.name || m.id.slice(0, 8)} {m.simulated && <span className="chip small">{t("simulated")}</span>}
        </td>
        <td className="small">{m.baseModel}</td>
        <td>{TrainingMethod[m.method]}</td>
        <td>{String(m.steps)}</td>
        <td>{loss(m.finalLoss)}</td>
        <td>{loss(m.finalEvalLoss)}</td>
        <td>{bytes(m.sizeBytes)}</td>
        <td className="row">
          <button type="button" onClick={() => download.mutate()} disabled={download.isPending} data-testid="model-download">
            {t("download")}
          </button>
          <button
            type="button"
            className="danger"
            onClick={() => window.confirm(t("confirmDeleteModel", { name: m.name || m.id })) && remove.mutate()}
            disabled={remove.isPending}
          >
            {t("delete")}
          </button>
        </td>
      </tr>
      {(urls || download.error || remove.error) && (
        <tr>
          <td colSpan={8}>
            {download.error && <ErrorBanner error={download.error} />}
            {remove.error && <ErrorBanner error={remove.error} />}
            {urls && (
              <ul className="plain" data-testid="download-links">
                {urls.map((u) => (
                  // Signed, short-lived URLs on this origin (/files/…): no token in them.
                  <li key={u.name}>
                    <a href={u.url} download={u.name}>
                      {u.name}
                    </a>{" "}
                    <span className="muted small">{bytes(u.sizeBytes)}</span>
                  </li>
                ))}
              </ul>
            )}
          </td>
        </tr>
      )}
    </>
  );
}
