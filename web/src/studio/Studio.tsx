import { lazy, Suspense } from "react";
import { useI18n } from "../i18n/i18n";
import type { StudioRoute } from "./route";
import { ClonesPage } from "./ClonesPage";
import { DatasetsPage } from "./DatasetsPage";
import { JobMonitor, JobsList } from "./JobMonitor";
import { ModelsPage } from "./ModelsPage";
import { TrainPage } from "./TrainPage";

// Image LoRAs are a chunk of their own: the text-training pages do not carry them.
const ImageLorasPage = lazy(() => import("./loras/ImageLorasPage"));

const TABS = ["datasets", "train", "jobs", "models", "clones", "loras"] as const;

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
        {route.page === "loras" && (
          <Suspense fallback={<p className="center muted">{t("loading")}</p>}>
            <ImageLorasPage loraId={route.loraId} />
          </Suspense>
        )}
      </div>
    </div>
  );
}
