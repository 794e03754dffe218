import { create } from "@bufbuild/protobuf";
import { useMutation, useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import { DatasetStatus } from "../gen/aivera/training/v1/datasets_pb.js";
import {
  CreateJobRequestSchema,
  HyperparametersSchema,
  TrainingMethod,
  type CreateJobRequest,
  type JobEstimate,
} from "../gen/aivera/training/v1/jobs_pb.js";
import { useI18n } from "../i18n/i18n";
import { bytes, count, duration, money } from "./format";

/** The form's hyperparameters: an empty field means the server's effective default. */
export type HyperForm = {
  epochs: string;
  maxSteps: string;
  learningRate: string;
  loraRank: string;
  loraAlpha: string;
  batchSize: string;
  maxSeqLength: string;
};

const EMPTY: HyperForm = { epochs: "", maxSteps: "", learningRate: "", loraRank: "", loraAlpha: "", batchSize: "", maxSeqLength: "" };

const int = (v: string) => (v.trim() === "" ? 0 : Math.trunc(Number(v)));

/** The CreateJob request of the form (the same one EstimateJob prices). */
export function jobRequest(
  name: string,
  datasetId: string,
  baseModel: string,
  method: TrainingMethod,
  h: HyperForm,
): CreateJobRequest {
  const hyper = create(HyperparametersSchema, {
    learningRate: h.learningRate.trim() === "" ? 0 : Number(h.learningRate),
    loraRank: int(h.loraRank),
    loraAlpha: int(h.loraAlpha),
    batchSize: int(h.batchSize),
    maxSeqLength: int(h.maxSeqLength),
  });
  if (int(h.maxSteps) > 0) hyper.duration = { case: "maxSteps", value: int(h.maxSteps) };
  else if (int(h.epochs) > 0) hyper.duration = { case: "epochs", value: int(h.epochs) };
  return create(CreateJobRequestSchema, { name, datasetId, baseModel, method, hyperparameters: hyper });
}

/** Configure training: dataset, base model from the catalogue, LoRA/QLoRA,
 *  hyperparameters (blank = the server's default, shown once estimated), estimate, start. */
export function TrainPage({ datasetId: initialDataset }: { datasetId: string | null }) {
  const api = useApi();
  const { t, locale } = useI18n();
  const [datasetId, setDatasetId] = useState(initialDataset ?? "");
  const [baseModel, setBaseModel] = useState("");
  const [method, setMethod] = useState(TrainingMethod.LORA);
  const [name, setName] = useState("");
  const [hyper, setHyper] = useState<HyperForm>(EMPTY);
  const [estimate, setEstimate] = useState<JobEstimate | null>(null);
  const datasets = useQuery({
    queryKey: ["datasets", "ready"],
    queryFn: () => api.datasets.listDatasets({ pageSize: 100, status: DatasetStatus.READY }),
  });
  const models = useQuery({ queryKey: ["base-models"], queryFn: () => api.catalogue.listBaseModels({ pageSize: 100 }) });
  const chosenDataset = datasetId || datasets.data?.datasets[0]?.id || "";
  const catalogue = models.data?.baseModels ?? [];
  const chosenModel = baseModel || catalogue.find((m) => m.isDefault)?.name || catalogue[0]?.name || "";
  const modelInfo = catalogue.find((m) => m.name === chosenModel);
  const request = () => jobRequest(name, chosenDataset, chosenModel, method, hyper);
  const estimateCall = useMutation({
    mutationFn: () => api.jobs.estimateJob({ job: request() }),
    onSuccess: setEstimate,
  });
  const start = useMutation({
    mutationFn: () => api.jobs.createJob(request()),
    onSuccess: (job) => {
      window.location.hash = `#/studio/jobs/${job.id}`;
    },
  });
  const change = (patch: Partial<HyperForm>) => {
    setHyper((h) => ({ ...h, ...patch }));
    setEstimate(null);
  };
  const eff = estimate?.hyperparameters;
  const field = (key: keyof HyperForm, label: string, placeholder: string | number | undefined, step = "1") => (
    <label>
      {label}
      <input
        type="number"
        step={step}
        min="0"
        value={hyper[key]}
        placeholder={placeholder === undefined || placeholder === 0 || placeholder === "" ? t("serverDefault") : String(placeholder)}
        data-testid={`hp-${key}`}
        onChange={(e) => change({ [key]: e.target.value })}
      />
    </label>
  );
  const ready = chosenDataset !== "" && chosenModel !== "";
  return (
    <section className="page" data-testid="train-page">
      <h2>{t("configureTraining")}</h2>
      {datasets.error && <ErrorBanner error={datasets.error} onRetry={() => void datasets.refetch()} />}
      {models.error && <ErrorBanner error={models.error} onRetry={() => void models.refetch()} />}
      {datasets.data?.datasets.length === 0 && <p className="muted">{t("noReadyDatasets")}</p>}
      <div className="form-grid">
        <label>
          {t("dataset")}
          <select value={chosenDataset} data-testid="train-dataset" onChange={(e) => { setDatasetId(e.target.value); setEstimate(null); }}>
            {datasets.data?.datasets.map((d) => (
              <option key={d.id} value={d.id}>
                {d.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          {t("baseModel")}
          <select value={chosenModel} data-testid="train-model" onChange={(e) => { setBaseModel(e.target.value); setEstimate(null); }}>
            {catalogue.map((m) => (
              <option key={m.name} value={m.name}>
                {m.displayName || m.name}
              </option>
            ))}
          </select>
        </label>
        <label>
          {t("jobName")}
          <input value={name} onChange={(e) => setName(e.target.value)} data-testid="job-name" />
        </label>
      </div>
      {modelInfo && (
        <p className="muted small">
          {t("modelInfo", {
            params: count(modelInfo.parameterCount, locale),
            context: modelInfo.contextLength,
            license: modelInfo.license || "—",
          })}
        </p>
      )}
      <fieldset className="row">
        <legend>{t("method")}</legend>
        {[TrainingMethod.LORA, TrainingMethod.QLORA].map((m) => (
          <label key={m} className="radio">
            <input
              type="radio"
              name="method"
              checked={method === m}
              disabled={modelInfo !== undefined && modelInfo.methods.length > 0 && !modelInfo.methods.includes(m)}
              onChange={() => { setMethod(m); setEstimate(null); }}
            />
            {TrainingMethod[m]}
          </label>
        ))}
      </fieldset>
      <fieldset>
        <legend>{t("hyperparameters")}</legend>
        <div className="form-grid">
          {field("epochs", t("hpEpochs"), eff?.duration.case === "epochs" ? eff.duration.value : undefined)}
          {field("maxSteps", t("hpMaxSteps"), eff?.duration.case === "maxSteps" ? eff.duration.value : undefined)}
          {field("learningRate", t("hpLearningRate"), eff?.learningRate, "any")}
          {field("loraRank", t("hpLoraRank"), eff?.loraRank)}
          {field("loraAlpha", t("hpLoraAlpha"), eff?.loraAlpha)}
          {field("batchSize", t("hpBatchSize"), eff?.batchSize)}
          {field("maxSeqLength", t("hpMaxSeqLength"), eff?.maxSeqLength)}
        </div>
      </fieldset>
      <div className="row">
        <button type="button" disabled={!ready || estimateCall.isPending} onClick={() => estimateCall.mutate()} data-testid="estimate">
          {t("estimate")}
        </button>
        <button
          type="button"
          className="primary"
          disabled={!ready || estimate === null || start.isPending}
          onClick={() => start.mutate()}
          data-testid="start-job"
        >
          {t("startTraining")}
        </button>
      </div>
      {estimateCall.error && <ErrorBanner error={estimateCall.error} />}
      {start.error && <ErrorBanner error={start.error} />}
      {estimate && <EstimateView estimate={estimate} />}
    </section>
  );
}

export function EstimateView({ estimate: e }: { estimate: JobEstimate }) {
  const { t, locale } = useI18n();
  return (
    <dl className="stats" data-testid="estimate-view">
      <dt>{t("estExamples")}</dt>
      <dd>
        {count(e.trainExamples, locale)} / {count(e.evalExamples, locale)}
      </dd>
      <dt>{t("estTokens")}</dt>
      <dd>{count(e.totalTokens, locale)}</dd>
      <dt>{t("estSteps")}</dt>
      <dd data-testid="est-steps">{count(e.totalSteps, locale)}</dd>
      <dt>{t("estTime")}</dt>
      <dd>{duration(e.expectedSeconds)}</dd>
      <dt>{t("estCost")}</dt>
      <dd>{money(e.expectedCostMicros, e.currencyCode, locale)}</dd>
      <dt>{t("estMemory")}</dt>
      <dd className={e.fitsInMemory ? "ok" : "danger"}>
        {bytes(e.memoryRequiredBytes)} / {bytes(e.memoryAvailableBytes)} — {e.fitsInMemory ? t("fits") : t("doesNotFit")}
      </dd>
      <dt>{t("hardware")}</dt>
      <dd>{e.hardwareClass}</dd>
      {!e.withinQuota && (
        <>
          <dt className="danger">{t("quota")}</dt>
          <dd className="danger">{e.quotaMessage}</dd>
        </>
      )}
    </dl>
  );
}
