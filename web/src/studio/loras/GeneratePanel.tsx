import { useQuery, useQueryClient } from "@tanstack/react-query";
import { useEffect, useRef, useState, type FormEvent } from "react";
import { useApi } from "../../api/context";
import { ErrorBanner } from "../../components/ErrorBanner";
import {
  AspectRatio,
  GenerationStatus,
  type GeneratedImage,
  type Generation,
  type ImageLora,
} from "../../gen/aivera/training/v1/image_loras_pb.js";
import { useI18n } from "../../i18n/i18n";
import { costText } from "../format";
import { ASPECTS, emptyGeneration, foldGeneration, promptWithTrigger, type GenerationView } from "./rules";

/** The prompt's element id: the LoRA page's "Generate" button focuses it. */
export const GENERATE_PROMPT_ID = "generate-prompt";

const statusKey = (s: GenerationStatus) => `gen${GenerationStatus[s] ?? "UNSPECIFIED"}` as "genSUCCEEDED";

/** Generate with a READY LoRA (seed 001, "use"): prompt with the trigger word shown, LoRA
 *  scale 0–2, 1–4 outputs, aspect ratio, seed; images appear as they land from the
 *  GenerateImages stream; below, the LoRA's earlier generations. Leaving the page stops
 *  watching, not the generation (the server records it). */
export function GeneratePanel({ lora }: { lora: ImageLora }) {
  const { imageLoras } = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const [prompt, setPrompt] = useState("");
  const [scale, setScale] = useState(1);
  const [outputs, setOutputs] = useState(1);
  const [aspect, setAspect] = useState<AspectRatio>(AspectRatio.ASPECT_RATIO_1_1);
  const [seed, setSeed] = useState("");
  const [view, setView] = useState<GenerationView | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [running, setRunning] = useState(false);
  const abort = useRef<AbortController | null>(null);
  useEffect(() => () => abort.current?.abort(), []);
  const gallery = useQuery({
    queryKey: ["generations", lora.id],
    queryFn: () => imageLoras.listGenerations({ imageLora: lora.id, pageSize: 20 }),
  });
  const effective = promptWithTrigger(prompt, lora.triggerWord);
  const injected = prompt.trim() !== "" && effective !== prompt.trim();

  const generate = async (e: FormEvent) => {
    e.preventDefault();
    abort.current?.abort();
    const ctl = new AbortController();
    abort.current = ctl;
    setError(null);
    setView(emptyGeneration());
    setRunning(true);
    try {
      const stream = imageLoras.generateImages(
        {
          imageLora: lora.id,
          prompt: prompt.trim(),
          loraScale: scale,
          numOutputs: outputs,
          aspectRatio: aspect,
          seed: /^\d+$/.test(seed.trim()) ? BigInt(seed.trim()) : undefined,
        },
        { signal: ctl.signal },
      );
      for await (const event of stream) setView((v) => foldGeneration(v ?? emptyGeneration(), event));
    } catch (err) {
      if (!ctl.signal.aborted) setError(err);
    } finally {
      if (!ctl.signal.aborted) setRunning(false);
      void qc.invalidateQueries({ queryKey: ["generations", lora.id] });
    }
  };

  return (
    <section className="card wide generate" data-testid="generate-panel">
      <h3>{t("generate")}</h3>
      <form onSubmit={(e) => void generate(e)} className="lora-form">
        <label>
          {t("prompt")}
          <textarea id={GENERATE_PROMPT_ID} value={prompt} onChange={(e) => setPrompt(e.target.value)} rows={3} maxLength={2000} required data-testid="gen-prompt" />
        </label>
        <p className="small muted" data-testid="gen-trigger-hint">
          {injected ? t("triggerAdded", { word: lora.triggerWord }) : t("triggerInPrompt", { word: lora.triggerWord })}
        </p>
        <div className="form-grid">
          <label>
            {t("loraScale", { scale: scale.toFixed(2) })}
            <input type="range" min={0} max={2} step={0.05} value={scale} onChange={(e) => setScale(Number(e.target.value))} data-testid="gen-scale" />
          </label>
          <label>
            {t("numOutputs")}
            <select value={outputs} onChange={(e) => setOutputs(Number(e.target.value))} data-testid="gen-outputs">
              {[1, 2, 3, 4].map((n) => (
                <option key={n} value={n}>
                  {n}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t("aspectRatio")}
            <select value={aspect} onChange={(e) => setAspect(Number(e.target.value) as AspectRatio)} data-testid="gen-aspect">
              {ASPECTS.map((a) => (
                <option key={a.value} value={a.value}>
                  {a.label}
                </option>
              ))}
            </select>
          </label>
          <label>
            {t("seed")}
            <input inputMode="numeric" pattern="\d*" value={seed} onChange={(e) => setSeed(e.target.value)} data-testid="gen-seed" />
          </label>
        </div>
        <div className="row">
          <button type="submit" className="primary" disabled={running || !prompt.trim()} data-testid="gen-submit">
            {t("generate")}
          </button>
          {lora.simulated && <span className="muted small">{t("simulatedImages")}</span>}
        </div>
      </form>
      {error !== null && <ErrorBanner error={error} onDismiss={() => setError(null)} />}
      {view && <Run view={view} />}
      <h3>{t("generations")}</h3>
      {gallery.error && <ErrorBanner error={gallery.error} onRetry={() => void gallery.refetch()} />}
      {gallery.data?.generations.length === 0 && <p className="muted small">{t("noGenerations")}</p>}
      <ul className="plain" data-testid="gallery">
        {gallery.data?.generations.map((g) => (
          <GalleryItem key={g.id} generation={g} />
        ))}
      </ul>
    </section>
  );
}

/** An earlier generation: status, prompt, seed, scale, what it cost (LOCAL), its images. */
function GalleryItem({ generation: g }: { generation: Generation }) {
  const { t, locale } = useI18n();
  const cost = costText(g.cost, locale);
  return (
    <li className="generation" data-testid="generation" data-status={GenerationStatus[g.status]}>
      <p className="small">
        <span className={`status-${GenerationStatus[g.status]}`}>{t(statusKey(g.status))}</span> · {g.prompt} ·{" "}
        <span className="muted">
          seed {String(g.seed)} · {t("loraScale", { scale: g.loraScale.toFixed(2) })}
          {cost && <span data-testid="generation-cost"> · {t("generationCost", { cost })}</span>}
        </span>
      </p>
      {g.error && <p className="danger small">{g.error}</p>}
      <Images images={g.images} />
    </li>
  );
}

/** The generation running now: its status, progress and the images so far. */
function Run({ view }: { view: GenerationView }) {
  const { t, locale } = useI18n();
  const done = view.status === GenerationStatus.SUCCEEDED || view.status === GenerationStatus.FAILED;
  const cost = done ? costText(view.generation?.cost, locale) : null;
  return (
    <div className="generation current" data-testid="gen-run" data-status={GenerationStatus[view.status]} data-images={view.images.length}>
      {view.generation && (
        <p className="small muted" data-testid="gen-effective-prompt">
          {view.generation.prompt} · seed {String(view.generation.seed)}
        </p>
      )}
      <p className="phase">
        {done ? t(statusKey(view.status)) : t("generating", { percent: Math.round(view.fraction * 100) })}
        {!done && <progress max={1} value={view.fraction} />}
      </p>
      {cost && (
        <p className="small muted" data-testid="gen-cost">
          {t("generationCost", { cost })}
        </p>
      )}
      {view.error && <p className="danger">{t("generationFailed", { error: view.error })}</p>}
      <Images images={view.images} testId="generated-image" />
    </div>
  );
}

function Images({ images, testId }: { images: GeneratedImage[]; testId?: string }) {
  return (
    <div className="images">
      {images.map((img) => (
        // Signed, short-lived URLs on this origin (/files/…).
        <a key={img.index} href={img.url} target="_blank" rel="noreferrer">
          <img className="crop" src={img.url} alt={`#${img.index + 1}`} width={img.width} height={img.height} data-testid={testId} />
        </a>
      ))}
    </div>
  );
}
