import { LogLevel } from "../../gen/aivera/training/v1/jobs_pb.js";
import { useI18n } from "../../i18n/i18n";
import type { JobView } from "../jobState";
import { LossChart } from "../LossChart";

/** The steps done of the LoRA's training job, a small loss chart (the job monitor's) and
 *  the job's log lines, as WatchJob brings them. */
export function LoraTraining({ view, totalSteps }: { view: JobView; totalSteps: number }) {
  const { t } = useI18n();
  const total = totalSteps || Number(view.job?.progress?.steps?.total ?? 0n);
  const done = view.points[view.points.length - 1]?.step ?? Number(view.job?.progress?.steps?.done ?? 0n);
  return (
    <section className="lora-training" data-testid="lora-training">
      <p className="row" data-testid="lora-job-steps">
        <span>{t("stepOf", { done, total: total || "—" })}</span>
        {total > 0 && <progress max={total} value={Math.min(done, total)} />}
      </p>
      <div className="chart-small">
        <LossChart points={view.points} totalSteps={total} />
      </div>
      {view.logs.length > 0 && (
        <pre className="logs" data-testid="lora-job-logs">
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
