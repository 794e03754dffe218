import { useQuery } from "@tanstack/react-query";
import { useState } from "react";
import { useApi } from "../../api/context";
import { ErrorBanner } from "../../components/ErrorBanner";
import { ImageLoraKind, ImageLoraStatus, type ImageLora } from "../../gen/aivera/training/v1/image_loras_pb.js";
import { useI18n } from "../../i18n/i18n";
import { CreateLora } from "./CreateLora";
import { LoraDetail } from "./LoraDetail";
import { RUNNING, statusName } from "./rules";

/** Image LoRAs (seed 001): the list with status and progress, the create dialog, and one
 *  LoRA's page (`#/studio/loras/<id>`). Lazy-loaded. */
export default function ImageLorasPage({ loraId }: { loraId: string | null }) {
  return loraId ? <LoraDetail key={loraId} loraId={loraId} /> : <LoraList />;
}

function LoraList() {
  const { imageLoras } = useApi();
  const { t } = useI18n();
  const [creating, setCreating] = useState(false);
  const list = useQuery({
    queryKey: ["image-loras"],
    queryFn: () => imageLoras.listImageLoras({ pageSize: 100 }),
    // Training runs on the server: poll while any LoRA is still training.
    refetchInterval: (q) => (q.state.data?.imageLoras.some((l) => RUNNING.has(l.status)) ? 1500 : false),
  });
  return (
    <section className="page" data-testid="loras-page">
      <div className="row">
        <h2>{t("lorasTitle")}</h2>
        <span className="spacer" />
        <button type="button" className="primary" onClick={() => setCreating(true)} data-testid="new-lora">
          {t("createLora")}
        </button>
      </div>
      <p className="muted small">{t("lorasHint")}</p>
      {list.error && <ErrorBanner error={list.error} onRetry={() => void list.refetch()} />}
      {list.data?.imageLoras.length === 0 && <p className="muted">{t("noLoras")}</p>}
      <ul className="plain lora-list">
        {list.data?.imageLoras.map((l) => <LoraRow key={l.id} lora={l} />)}
      </ul>
      {creating && <CreateLora onClose={() => setCreating(false)} />}
    </section>
  );
}

/** A status badge (with "simulated" when it is) and, while training, its progress. */
export function LoraStatus({ lora }: { lora: ImageLora }) {
  const { t } = useI18n();
  const name = statusName(lora.status);
  return (
    <>
      <span className={`chip status-${name}`} data-testid="lora-status" data-status={name}>
        {t(`lora${name}` as "loraREADY")}
      </span>
      {lora.simulated && (
        <span className="chip small" data-testid="lora-simulated">
          {t("simulated")}
        </span>
      )}
      {RUNNING.has(lora.status) && (
        <span className="lora-progress">
          <progress max={1} value={lora.progress} data-testid="lora-progress" />
          <span className="small">{Math.round(lora.progress * 100)}%</span>
        </span>
      )}
    </>
  );
}

function LoraRow({ lora: l }: { lora: ImageLora }) {
  const { t } = useI18n();
  return (
    <li className="card wide row" data-testid="lora" data-trigger={l.triggerWord} data-status={statusName(l.status)}>
      <a href={`#/studio/loras/${l.id}`} data-testid="lora-link">
        <strong>{l.name}</strong>
      </a>
      <span className="muted small">{t(`kind${ImageLoraKind[l.kind] ?? "STYLE"}` as "kindSTYLE")}</span>
      <code>{l.triggerWord}</code>
      <LoraStatus lora={l} />
      <span className="spacer" />
      <span className="muted small">{t("imageCount", { n: l.referenceImages.length })}</span>
      {l.status === ImageLoraStatus.READY && (
        <a className="button" href={`#/studio/loras/${l.id}`}>
          {t("useLora")}
        </a>
      )}
    </li>
  );
}
