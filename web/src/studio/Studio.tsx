import { useI18n } from "../i18n/i18n";
import type { StudioRoute } from "./route";
import { ClonesPage } from "./ClonesPage";
import { DatasetsPage } from "./DatasetsPage";
import { JobMonitor, JobsList } from "./JobMonitor";
import { ModelsPage } from "./ModelsPage";
import { TrainPage } from "./TrainPage";

const TABS = ["datasets", "train", "jobs", "models", "clones"] as const;

/** The training studio (lazy-loaded: the chat's first load does not carry it). */
export default function Studio({ route }: { route: StudioRoute }) {
  const { t } = useI18n();
  return (
    <div className="studio">
      <nav className="tabs" aria-label={t("studio")}>
        {TABS.map((tab) => (
          <a key={tab} href={`#/studio/${tab}`} className={route.page === tab ? "tab active" : "tab"} data-testid={`tab-${tab}`}>
            {t(`tab_${tab}`)}
          </a>
        ))}
      </nav>
      <div className="studio-body">
        {route.page === "datasets" && <DatasetsPage />}
        {route.page === "train" && <TrainPage key={route.datasetId ?? ""} datasetId={route.datasetId} />}
        {route.page === "jobs" && (
          <div className="split">
            <JobsList selected={route.jobId} />
            {route.jobId ? <JobMonitor key={route.jobId} jobId={route.jobId} /> : <p className="muted center">{t("pickJob")}</p>}
          </div>
        )}
        {route.page === "models" && <ModelsPage />}
        {route.page === "clones" && <ClonesPage />}
      </div>
    </div>
  );
}
