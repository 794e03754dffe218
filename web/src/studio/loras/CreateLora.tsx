import { useQueryClient } from "@tanstack/react-query";
import { useState, type FormEvent } from "react";
import { useApi } from "../../api/context";
import { ErrorBanner } from "../../components/ErrorBanner";
import { ImageLoraExecutor, ImageLoraKind } from "../../gen/aivera/training/v1/image_loras_pb.js";
import { useI18n } from "../../i18n/i18n";
import { ExecutorSelect } from "./ExecutorSelect";
import { PendingImages, usePendingImages } from "./PendingImages";
import { enoughImages, MAX_IMAGES, MIN_IMAGES, validTriggerWord } from "./rules";

const KINDS = [ImageLoraKind.STYLE, ImageLoraKind.CHARACTER, ImageLoraKind.PRODUCT] as const;

/** The create dialog (seed 001): kind, reference images with previews and captions, name
 *  and trigger word, then start training. The LoRA is created once; images the server
 *  refused can be replaced and sent again without creating it twice. */
export function CreateLora({ onClose }: { onClose: () => void }) {
  const { imageLoras } = useApi();
  const { t } = useI18n();
  const qc = useQueryClient();
  const [kind, setKind] = useState<ImageLoraKind>(ImageLoraKind.STYLE);
  const [name, setName] = useState("");
  const [word, setWord] = useState("");
  const [executor, setExecutor] = useState<ImageLoraExecutor>(ImageLoraExecutor.UNSPECIFIED);
  const [createdId, setCreatedId] = useState<string | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [busy, setBusy] = useState(false);
  const images = usePendingImages(0);
  const count = images.items.length;
  const wordOk = validTriggerWord(word);

  const submit = async (start: boolean) => {
    setError(null);
    setBusy(true);
    try {
      let id = createdId;
      if (id === null) {
        id = (await imageLoras.createImageLora({ name: name.trim(), kind, triggerWord: word })).id;
        setCreatedId(id);
      }
      const allIn = await images.send(id);
      await qc.invalidateQueries({ queryKey: ["image-loras"] });
      if (!allIn) return;
      if (start) await imageLoras.startTraining({ imageLora: id, executor });
      await qc.invalidateQueries({ queryKey: ["image-loras"] });
      onClose();
      window.location.hash = `#/studio/loras/${id}`;
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const onSubmit = (e: FormEvent) => {
    e.preventDefault();
    void submit(true);
  };

  return (
    <div className="modal" role="dialog" aria-modal="true" aria-label={t("createLora")} data-testid="create-lora">
      <form className="modal-body lora-form" onSubmit={onSubmit}>
        <div className="row">
          <h2>{t("createLora")}</h2>
          <span className="spacer" />
          <button type="button" className="link" onClick={onClose} disabled={busy}>
            {t("close")}
          </button>
        </div>
        <fieldset disabled={createdId !== null}>
          <legend>{t("loraKind")}</legend>
          {KINDS.map((k) => (
            <label key={k} className="radio">
              <input type="radio" name="kind" checked={kind === k} onChange={() => setKind(k)} data-testid={`kind-${ImageLoraKind[k]}`} />
              {t(`kind${ImageLoraKind[k]}` as "kindSTYLE")}
            </label>
          ))}
        </fieldset>
        <fieldset>
          <legend>
            {t("referenceImages")} <span className="muted small">{t("imageCount", { n: count })}</span>
          </legend>
          <PendingImages state={images} />
        </fieldset>
        <label>
          {t("name")}
          <input value={name} onChange={(e) => setName(e.target.value)} maxLength={200} required disabled={createdId !== null} data-testid="lora-name" />
        </label>
        <label>
          {t("triggerWord")}
          <input
            value={word}
            onChange={(e) => setWord(e.target.value.trim())}
            spellCheck={false}
            required
            disabled={createdId !== null}
            aria-invalid={word !== "" && !wordOk}
            data-testid="lora-trigger"
          />
          <span className={word !== "" && !wordOk ? "small danger" : "small muted"}>{t("triggerHint")}</span>
        </label>
        <ExecutorSelect value={executor} onChange={setExecutor} />
        {error !== null && <ErrorBanner error={error} onDismiss={() => setError(null)} />}
        <div className="row">
          <button
            type="submit"
            className="primary"
            disabled={busy || !name.trim() || !wordOk || !enoughImages(count)}
            title={enoughImages(count) ? undefined : t("needImages", { min: MIN_IMAGES, max: MAX_IMAGES })}
            data-testid="create-and-train"
          >
            {t("createAndTrain")}
          </button>
          <button type="button" disabled={busy || !name.trim() || !wordOk} onClick={() => void submit(false)} data-testid="save-draft">
            {t("saveDraft")}
          </button>
          {!enoughImages(count) && <span className="muted small">{t("needImages", { min: MIN_IMAGES, max: MAX_IMAGES })}</span>}
        </div>
      </form>
    </div>
  );
}
