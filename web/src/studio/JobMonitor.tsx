import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useState } from "react";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import { JobStatus, LogLevel, type TrainingJob } from "../gen/aivera/training/v1/jobs_pb.js";
import { useI18n } from "../i18n/i18n";
import { duration, loss, money } from "./format";
import { TERMINAL } from "./jobState";
import { LossChart } from "./LossChart";
import { useJobEvents } from "./useJobEvents";

export const jobStatusName = (s: JobStatus) => JobStatus[s] ?? "UNSPECIFIED";

/** The job monitor: live status and steps, the loss chart, learning rate and throughput,
 *  log lines, checkpoints, cost so far; cancel and retry. */
export function JobMonitor({ jobId }: { jobId: string }) {
  const { jobs } = useApi();
  const { t, locale } = useI18n();
  const qc = useQueryClient();
  const job = useQuery({ queryKey: ["job", jobId], queryFn: () => jobs.getJob({ id: jobId }) });
  const refresh = () => {
    void qc.invalidateQueries({ queryKey: ["job", jobId] });
    void qc.invalidateQueries({ queryKey: ["jobs"] });
  };
  // A retry runs the same job again (a new attempt): follow it from the start again.
  const [generation, setGeneration] = useState(0);
  const view = useJobEvents(jobId, refresh, generation);
  const cancel = useMutation({ mutationFn: () => jobs.cancelJob({ id: jobId }), onSuccess: refresh });
  const retry = useMutation({
    mutationFn: () => jobs.retryJob({ id: jobId }),
    onSuccess: (j: TrainingJob) => {
      refresh();
      if (j.id === jobId) setGeneration((g) => g + 1);
      else window.location.hash = `#/studio/jobs/${j.id}`;
    },
  });
  const j = view.job ?? job.data;
  // The stream's live cost while it runs, the final job's once it ended.
  const cost = view.job?.cost ?? view.cost ?? job.data?.cost;
  const status = view.status !== JobStatus.UNSPECIFIED ? view.status : (j?.status ?? JobStatus.UNSPECIFIED);
  const lastPoint = view.points[view.points.length - 1];
  const total = Number(view.job?.progress?.steps?.total || job.data?.progress?.steps?.total || 0n);
  const done = lastPoint?.step ?? Number(j?.progress?.steps?.done ?? 0n);
  const name = jobStatusName(status);
  return (
    <section className="page" data-testid="job-monitor" data-status={name}>
      {job.error && <ErrorBanner error={job.error} onRetry={() => void job.refetch()} />}
      <div className="row">
        <h2>{j?.name || jobId}</h2>
        <span className={`chip status-${name}`} data-testid="job-status">
          {t(`job${name}` as "jobRUNNING")}
        </span>
        <span className="muted small">{j?.baseModel}</span>
        <span className="spacer" />
        {!TERMINAL.has(status) && (
          <button type="button" className="danger" onClick={() => cancel.mutate()} disabled={cancel.isPending} data-testid="cancel-job">
            {t("cancel")}
          </button>
        )}
        {(status === JobStatus.FAILED || status === JobStatus.CANCELLED) && (
          <button type="button" onClick={() => retry.mutate()} disabled={retry.isPending} data-testid="retry-job">
            {t("retryJob")}
          </button>
        )}
      </div>
      {cancel.error && <ErrorBanner error={cancel.error} />}
      {retry.error && <ErrorBanner error={retry.error} />}
      {view.message && status === JobStatus.FAILED && <p className="danger">{view.message}</p>}
      <p className="row" data-testid="job-steps">
        <span>{t("stepOf", { done, total: total || "—" })}</span>
        {total > 0 && <progress max={total} value={done} />}
        {view.attempt > 1 && <span className="muted small">{t("attemptN", { n: view.attempt })}</span>}
      </p>
      <LossChart points={view.points} totalSteps={total} />
      <dl className="stats">
        <dt>{t("loss")}</dt>
        <dd data-testid="last-loss">{loss(lastPoint?.loss)}</dd>
        <dt>{t("evalLoss")}</dt>
        <dd>{loss(lastPoint?.evalLoss)}</dd>
        <dt>{t("learningRate")}</dt>
        <dd>{lastPoint ? lastPoint.lr.toExponential(2) : "—"}</dd>
        <dt>{t("throughput")}</dt>
        <dd>{lastPoint ? t("tokensPerSecond", { n: Math.round(lastPoint.tps) }) : "—"}</dd>
        {j?.progress && j.progress.etaSeconds > 0n && !TERMINAL.has(status) && (
          <>
            <dt>{t("eta")}</dt>
            <dd>{duration(j.progress.etaSeconds)}</dd>
          </>
        )}
        <dt>{t("costSoFar")}</dt>
        <dd data-testid="job-cost">{cost ? money(cost.amountMicros, cost.currencyCode, locale) : "—"}</dd>
        {j?.modelId && (
          <>
            <dt>{t("model")}</dt>
            <dd>
              <a href="#/studio/models">{j.modelId}</a>
            </dd>
          </>
        )}
      </dl>
      {view.checkpoints.length > 0 && (
        <>
          <h3>{t("checkpoints")}</h3>
          <ul className="plain" data-testid="checkpoints">
            {view.checkpoints.map((c) => (
              <li key={c.id}>
                {t("stepOf", { done: Number(c.step), total: total || "—" })} · {t("loss")} {loss(c.loss)}
              </li>
            ))}
          </ul>
        </>
      )}
      <h3>{t("logs")}</h3>
      {view.logs.length === 0 ? (
        <p className="muted small" data-testid="job-logs">{t("noLogs")}</p>
      ) : (
        <pre className="logs" data-testid="job-logs">
          {view.logs.map((l) => (
            <div key={l.seq} className={`log-${LogLevel[l.level] ?? "INFO"}`}>
              {l.text}
            </div>
          ))}
        </pre>
      )}
    </section>
  );
}

/** The caller's jobs, newest first; a click opens the monitor. */
export function JobsList({ selected }: { selected: string | null }) {
  const { jobs } = useApi();
  const { t } = useI18n();
  const list = useQuery({
    queryKey: ["jobs"],
    queryFn: () => jobs.listJobs({ pageSize: 50 }),
    refetchInterval: (q) => (q.state.data?.jobs.some((j) => !TERMINAL.has(j.status)) ? 3000 : false),
  });
  return (
    <nav className="joblist">
      <h3>{t("jobs")}</h3>
      {list.error && <ErrorBanner error={list.error} onRetry={() => void list.refetch()} />}
      {list.data?.jobs.length === 0 && <p className="muted small">{t("noJobs")}</p>}
      <ul className="plain">
        {list.data?.jobs.map((j) => (
          <li key={j.id} className={j.id === selected ? "active" : ""}>
            <a href={`#/studio/jobs/${j.id}`} data-testid="job-link">
              {j.name || j.id.slice(0, 8)}
            </a>{" "}
            <span className={`small status-${jobStatusName(j.status)}`}>{t(`job${jobStatusName(j.status)}` as "jobRUNNING")}</span>
          </li>
        ))}
      </ul>
    </nav>
  );
}
