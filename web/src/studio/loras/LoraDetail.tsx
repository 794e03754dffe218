import { useMutation, useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState } from "react";
import { useApi } from "../../api/context";
import { ErrorBanner } from "../../components/ErrorBanner";
import {
  ImageLoraExecutor,
  ImageLoraKind,
  ImageLoraStatus,
  type ImageLora,
  type ReferenceImage,
} from "../../gen/aivera/training/v1/image_loras_pb.js";
import type { JobStatus } from "../../gen/aivera/training/v1/jobs_pb.js";
import { useI18n } from "../../i18n/i18n";
import { bytes } from "../format";
import { TERMINAL } from "../jobState";
import { useJobEvents } from "../useJobEvents";
import { ExecutorSelect } from "./ExecutorSelect";
import { useGentlePoll } from "./follow";
import { GeneratePanel, GENERATE_PROMPT_ID } from "./GeneratePanel";
import { LoraStatus } from "./ImageLorasPage";
import { LoraTraining } from "./LoraTraining";
import { PendingImages, usePendingImages } from "./PendingImages";
import { EDITABLE, enoughImages, executorName, MAX_IMAGES, MIN_IMAGES, RUNNING } from "./rules";

/** One image LoRA: status and progress (followed while it trains), its images, start or
 *  retry with an executor, cancel, delete; once READY, the generate panel and gallery.
 *
 *  A LOCAL or SIMULATE training is a job on the mesh (`job_id`): its WatchJob events are
 *  followed (steps, loss, log) and the LoRA is read again once, when the job ends. A
 *  REPLICATE training's progress arrives by webhook on the server, which the page cannot
 *  watch: it asks GetImageLora gently instead (3 s, slowing to 15 s; not while hidden). */
export function LoraDetail({ loraId }: { loraId: string }) {
  const { imageLoras } = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const lora = useQuery({
    queryKey: ["image-lora", loraId],
    queryFn: () => imageLoras.getImageLora({ id: loraId }),
  });
  const changed = (l: ImageLora) => {
    qc.setQueryData(["image-lora", loraId], l);
    void qc.invalidateQueries({ queryKey: ["image-loras"] });
  };
  const refresh = () => {
    void qc.invalidateQueries({ queryKey: ["image-lora", loraId] });
    void qc.invalidateQueries({ queryKey: ["image-loras"] });
  };
  const [executor, setExecutor] = useState<ImageLoraExecutor>(ImageLoraExecutor.UNSPECIFIED);
  const [steps, setSteps] = useState("");
  const start = useMutation({
    mutationFn: () => imageLoras.startTraining({ imageLora: loraId, executor, steps: Number(steps) || 0 }),
    onSuccess: changed,
  });
  const cancel = useMutation({ mutationFn: () => imageLoras.cancelTraining({ imageLora: loraId }), onSuccess: changed });
  const remove = useMutation({
    mutationFn: () => imageLoras.deleteImageLora({ id: loraId }),
    onSuccess: () => {
      void qc.invalidateQueries({ queryKey: ["image-loras"] });
      window.location.hash = "#/studio/loras";
    },
  });
  const l = lora.data;
  const running = l !== undefined && RUNNING.has(l.status);
  const jobKey = l?.jobId ? `${l.jobId}:${l.attempt}` : "";
  const statusNow = useRef(l?.status);
  statusNow.current = l?.status;
  // The job's end, once per job and attempt, and only if the LoRA was still training
  // (a replay of a finished job changes nothing). Until the LoRA shows the end too, the
  // gentle poll takes over.
  const refreshedFor = useRef("");
  const [jobEnded, setJobEnded] = useState("");
  const onJobStatus = (s: JobStatus) => {
    if (!TERMINAL.has(s) || !jobKey || refreshedFor.current === jobKey) return;
    if (statusNow.current === undefined || !RUNNING.has(statusNow.current)) return;
    refreshedFor.current = jobKey;
    setJobEnded(jobKey);
    refresh();
  };
  const job = useJobEvents(l?.jobId ?? "", onJobStatus, l?.attempt ?? 0);
  useGentlePoll(running && (!jobKey || jobEnded === jobKey), () => lora.refetch(), `${l?.status}:${l?.progress}`);
  const jobStep = job.points[job.points.length - 1]?.step ?? 0;
  const shown = l && running && jobKey && l.trainingSteps > 0 && jobStep > 0
    ? { ...l, progress: Math.max(l.progress, Math.min(1, jobStep / l.trainingSteps)) }
    : l;
  // The list shows the status too: refresh it when this page sees the status change.
  const status = l?.status;
  useEffect(() => {
    if (status !== undefined) void qc.invalidateQueries({ queryKey: ["image-loras"] });
  }, [qc, status]);
  const error = start.error ?? cancel.error ?? remove.error;
  return (
    <section className="page" data-testid="lora-detail" data-status={l ? ImageLoraStatus[l.status] : ""}>
      <a href="#/studio/loras" className="small" data-testid="back-to-loras">
        ← {t("lorasTitle")}
      </a>
      {lora.error && <ErrorBanner error={lora.error} onRetry={() => void lora.refetch()} />}
      {l && (
        <>
          <div className="row">
            <h2>{l.name}</h2>
            <LoraStatus lora={shown ?? l} />
            <span className="spacer" />
            {RUNNING.has(l.status) && (
              <button type="button" className="danger" onClick={() => cancel.mutate()} disabled={cancel.isPending} data-testid="cancel-lora">
                {t("cancelTraining")}
              </button>
            )}
            <button
              type="button"
              className="danger"
              disabled={remove.isPending}
              onClick={() => window.confirm(t("confirmDeleteLora", { name: l.name })) && remove.mutate()}
              data-testid="delete-lora"
            >
              {t("delete")}
            </button>
          </div>
          {l.status === ImageLoraStatus.READY && (
            <p className="row callout" data-testid="lora-ready">
              <span>{t("loraReadyHint")}</span>
              <button type="button" className="primary" onClick={focusGenerate} data-testid="generate-cta">
                {t("generateCta")}
              </button>
            </p>
          )}
          {error && <ErrorBanner error={error} onDismiss={() => (start.reset(), cancel.reset(), remove.reset())} />}
          {l.status === ImageLoraStatus.FAILED && l.error && (
            <p className="danger" data-testid="lora-error">
              {l.error}
            </p>
          )}
          <dl className="stats">
            <dt>{t("loraKind")}</dt>
            <dd>{t(`kind${ImageLoraKind[l.kind]}` as "kindSTYLE")}</dd>
            <dt>{t("triggerWord")}</dt>
            <dd>
              <code data-testid="lora-trigger-word">{l.triggerWord}</code>
            </dd>
            <dt>{t("executor")}</dt>
            <dd data-testid="lora-executor-name">
              {l.executor ? t(`executor${executorName(l.executor)}` as "executorSIMULATE") : "—"}
            </dd>
            {l.attempt > 0 && (
              <>
                <dt>{t("attempts")}</dt>
                <dd>{l.attempt}</dd>
              </>
            )}
            {l.trainingSteps > 0 && (
              <>
                <dt>{t("steps")}</dt>
                <dd>{l.trainingSteps}</dd>
              </>
            )}
            {l.weightsSizeBytes > 0n && (
              <>
                <dt>{t("weights")}</dt>
                <dd>{bytes(l.weightsSizeBytes)}</dd>
              </>
            )}
            {l.jobId && (
              <>
                <dt>{t("trainingJob")}</dt>
                <dd>
                  <a href={`#/studio/jobs/${l.jobId}`}>{l.jobId.slice(0, 8)}</a>
                </dd>
              </>
            )}
          </dl>
          {l.jobId && <LoraTraining view={job} totalSteps={l.trainingSteps} />}
          {EDITABLE.has(l.status) && (
            <form
              className="row"
              onSubmit={(e) => {
                e.preventDefault();
                start.mutate();
              }}
            >
              <ExecutorSelect value={executor} onChange={setExecutor} />
              <label>
                {t("trainingSteps")}
                <input
                  type="number"
                  min={1}
                  max={6000}
                  placeholder={t("serverDefault")}
                  value={steps}
                  onChange={(e) => setSteps(e.target.value)}
                  data-testid="lora-steps"
                />
              </label>
              <button
                type="submit"
                className="primary"
                disabled={start.isPending || !enoughImages(l.referenceImages.length)}
                data-testid="start-lora"
              >
                {l.status === ImageLoraStatus.DRAFT ? t("startLoraTraining") : t("retryTraining")}
              </button>
              {!enoughImages(l.referenceImages.length) && (
                <span className="muted small">{t("needImages", { min: MIN_IMAGES, max: MAX_IMAGES })}</span>
              )}
            </form>
          )}
          {l.status === ImageLoraStatus.READY && <GeneratePanel lora={l} />}
          <h3>
            {t("referenceImages")} <span className="muted small">{t("imageCount", { n: l.referenceImages.length })}</span>
          </h3>
          <ul className="thumbs" data-testid="reference-images">
            {l.referenceImages.map((img) => (
              <ReferenceThumb key={img.id} loraId={l.id} image={img} editable={EDITABLE.has(l.status)} onChange={changed} />
            ))}
          </ul>
          {EDITABLE.has(l.status) && <AddImages lora={l} onAdded={refresh} />}
        </>
      )}
    </section>
  );
}

/** Brings the generate panel's prompt into view and puts the cursor in it. */
function focusGenerate() {
  const prompt = document.getElementById(GENERATE_PROMPT_ID);
  if (!prompt) return;
  prompt.scrollIntoView?.({ behavior: "smooth", block: "center" });
  prompt.focus({ preventScroll: true });
}

function ReferenceThumb({
  loraId,
  image,
  editable,
  onChange,
}: {
  loraId: string;
  image: ReferenceImage;
  editable: boolean;
  onChange: (l: ImageLora) => void;
}) {
  const { storage, imageLoras } = useApi();
  const { t } = useI18n();
  // A signed, short-lived URL on this origin (/files/…): no token in it.
  const url = useQuery({
    queryKey: ["file-url", image.fileId],
    queryFn: () => storage.createDownloadUrl({ id: image.fileId }),
    staleTime: 30 * 60 * 1000,
  });
  const remove = useMutation({
    mutationFn: () => imageLoras.removeReferenceImage({ imageLora: loraId, referenceImage: image.id }),
    onSuccess: onChange,
  });
  return (
    <li className="thumb" data-testid="reference-image">
      {url.data ? <img src={url.data.url} alt={image.caption || image.id} /> : <span className="placeholder" />}
      <span className="small muted">
        {image.width}×{image.height} · {bytes(image.sizeBytes)}
      </span>
      {image.caption && <span className="small">{image.caption}</span>}
      {editable && (
        <button type="button" className="link" onClick={() => remove.mutate()} disabled={remove.isPending}>
          {t("removeImage")}
        </button>
      )}
      {remove.error && <ErrorBanner error={remove.error} />}
    </li>
  );
}

function AddImages({ lora, onAdded }: { lora: ImageLora; onAdded: () => void }) {
  const { t } = useI18n();
  const images = usePendingImages(lora.referenceImages.length);
  const send = async () => {
    await images.send(lora.id);
    images.clearAdded();
    onAdded();
  };
  return (
    <div className="card wide">
      <PendingImages state={images} />
      {images.waiting > 0 && (
        <div className="row">
          <button type="button" className="primary" disabled={images.busy} onClick={() => void send()} data-testid="upload-images">
            {t("uploadImages", { n: images.waiting })}
          </button>
        </div>
      )}
    </div>
  );
}
