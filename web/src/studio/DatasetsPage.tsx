import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import { Bucket } from "../gen/aivera/storage/v1/storage_pb.js";
import { DatasetStatus, type Dataset } from "../gen/aivera/training/v1/datasets_pb.js";
import { useI18n } from "../i18n/i18n";
import { bytes, count } from "./format";
import { DatasetPreview } from "./Preview";
import { useUpload } from "./useUpload";

export const datasetStatusName = (s: DatasetStatus) => DatasetStatus[s] ?? "UNSPECIFIED";

/** Datasets: upload (signed URL, progress), validation as it runs, line-numbered errors,
 *  token statistics, delete. */
export function DatasetsPage() {
  const { datasets } = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const { upload, progress, error, setError } = useUpload(Bucket.DATASETS, "dataset");
  const list = useQuery({
    queryKey: ["datasets"],
    queryFn: () => datasets.listDatasets({ pageSize: 100 }),
    // Validation runs on the server: poll while any dataset is still being checked.
    refetchInterval: (q) =>
      q.state.data?.datasets.some((d) => d.status === DatasetStatus.VALIDATING) ? 1000 : false,
  });
  const create = async (file: File) => {
    const stored = await upload(file);
    if (stored === null) return;
    try {
      await datasets.createDataset({ name: file.name.replace(/\.jsonl?$/i, ""), fileId: stored.id });
    } catch (err) {
      setError(err);
    }
    await qc.invalidateQueries({ queryKey: ["datasets"] });
  };
  return (
    <section className="page" data-testid="datasets-page">
      <div className="row">
        <h2>{t("datasets")}</h2>
        <span className="spacer" />
        <label className="button attach">
          {t("uploadDataset")}
          <input
            type="file"
            accept=".jsonl,.json,application/json"
            data-testid="dataset-input"
            disabled={progress !== null}
            onChange={(e) => {
              const file = e.target.files?.[0];
              e.target.value = "";
              if (file) void create(file);
            }}
          />
        </label>
      </div>
      <p className="muted small">{t("datasetHint")}</p>
      {progress && (
        <p className="phase" data-testid="dataset-progress">
          {t("uploading", { name: progress.name, percent: Math.round(progress.fraction * 100) })}
          <progress max={1} value={progress.fraction} />
        </p>
      )}
      {error !== null && <ErrorBanner error={error} onDismiss={() => setError(null)} />}
      {list.error && <ErrorBanner error={list.error} onRetry={() => void list.refetch()} />}
      {list.data?.datasets.length === 0 && <p className="muted">{t("noDatasets")}</p>}
      {list.data?.datasets.map((d) => <DatasetCard key={d.id} dataset={d} />)}
    </section>
  );
}

export function DatasetCard({ dataset: d }: { dataset: Dataset }) {
  const { datasets } = useApi();
  const { t, locale } = useI18n();
  const qc = useQueryClient();
  const remove = useMutation({
    mutationFn: () => datasets.deleteDataset({ id: d.id }),
    onSuccess: () => qc.invalidateQueries({ queryKey: ["datasets"] }),
  });
  const [previewing, setPreviewing] = useState(false);
  const status = datasetStatusName(d.status);
  const s = d.stats;
  return (
    <article className="card wide" data-testid="dataset" data-status={status} data-name={d.name}>
      <div className="row">
        <strong>{d.name}</strong>
        <span className={`chip status-${status}`}>{t(`dataset${status}` as "datasetREADY")}</span>
        <span className="muted small">{bytes(d.sizeBytes)}</span>
        <span className="muted small">{d.baseModel}</span>
        <span className="spacer" />
        {d.status !== DatasetStatus.VALIDATING && (
          <button type="button" onClick={() => setPreviewing((v) => !v)} aria-expanded={previewing} data-testid="preview">
            {t("preview")}
          </button>
        )}
        {d.status === DatasetStatus.READY && (
          <a className="button" href={`#/studio/train/${d.id}`}>
            {t("trainOnIt")}
          </a>
        )}
        <button
          type="button"
          className="danger"
          disabled={remove.isPending}
          onClick={() => window.confirm(t("confirmDeleteDataset", { name: d.name })) && remove.mutate()}
        >
          {t("delete")}
        </button>
      </div>
      {remove.error && <ErrorBanner error={remove.error} />}
      {s && d.status === DatasetStatus.READY && (
        <dl className="stats" data-testid="dataset-stats">
          <dt>{t("examples")}</dt>
          <dd>{count(s.exampleCount, locale)}</dd>
          <dt>{t("totalTokens")}</dt>
          <dd>{count(s.totalTokens, locale)}</dd>
          <dt>{t("trainedTokens")}</dt>
          <dd>{count(s.trainedTokens, locale)}</dd>
          <dt>{t("tokensPerExample")}</dt>
          <dd>
            {s.minTokens} / {s.meanTokens.toFixed(1)} / {s.maxTokens}
          </dd>
          {s.examplesOverMaxLength > 0n && (
            <>
              <dt className="warn">{t("overMaxLength")}</dt>
              <dd className="warn">{count(s.examplesOverMaxLength, locale)}</dd>
            </>
          )}
        </dl>
      )}
      {previewing && <DatasetPreview datasetId={d.id} />}
      {d.errors.length > 0 && (
        <div data-testid="dataset-errors">
          <p className="danger small">{t("datasetErrorCount", { count: d.errorCount })}</p>
          <ul className="errors">
            {d.errors.map((e, i) => (
              <li key={i} data-testid="dataset-error" data-line={e.line}>
                <span className="line">{t("lineN", { line: e.line })}</span> {e.message}
              </li>
            ))}
          </ul>
        </div>
      )}
    </article>
  );
}
