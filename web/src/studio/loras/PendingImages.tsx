import { useEffect, useRef, useState } from "react";
import type { Api } from "../../api/clients";
import { useApi } from "../../api/context";
import { uploadTo } from "../../api/upload";
import { ErrorBanner } from "../../components/ErrorBanner";
import { Bucket } from "../../gen/aivera/storage/v1/storage_pb.js";
import { useI18n, type Key } from "../../i18n/i18n";
import { bytes } from "../format";
import { checkFiles, IMAGE_TYPES, MAX_CAPTION, type FileProblem } from "./rules";

/** A picked image on its way to becoming a reference image. */
export type Pending = {
  key: number;
  file: File;
  preview: string;
  caption: string;
  state: "waiting" | "uploading" | "added" | "failed";
  fraction: number;
  error: unknown;
};

/** Uploads one image to the `training-images` bucket (signed URL) and adds it to the LoRA
 *  with its caption. */
export async function addReference(
  api: Api,
  loraId: string,
  file: File,
  caption: string,
  onProgress: (fraction: number) => void,
) {
  const stored = await uploadTo(api, Bucket.TRAINING_IMAGES, "image-lora", file, onProgress);
  return api.imageLoras.addReferenceImage({ imageLora: loraId, fileId: stored.id, caption });
}

const PROBLEM_TEXT: Record<FileProblem["problem"], Key> = {
  type: "problemType",
  size: "problemSize",
  count: "problemCount",
};

/** Picked images with previews and captions, checked as the server would check them;
 *  `send` uploads those not yet added (a failed one can be sent again). */
export function usePendingImages(existing: number) {
  const api = useApi();
  const [items, setItems] = useState<Pending[]>([]);
  const [problems, setProblems] = useState<FileProblem[]>([]);
  const next = useRef(0);
  const live = useRef<Pending[]>([]);
  live.current = items;
  // Object URLs hold the files in memory: give them back when the picker goes.
  useEffect(() => () => live.current.forEach((p) => URL.revokeObjectURL(p.preview)), []);

  const update = (key: number, change: Partial<Pending>) =>
    setItems((all) => all.map((p) => (p.key === key ? { ...p, ...change } : p)));

  const add = (files: readonly File[]) => {
    // `existing` counts the LoRA's images before this picker added any.
    const { accepted, problems: found } = checkFiles(existing + items.length, files);
    setProblems(found);
    setItems((all) => [
      ...all,
      ...accepted.map((file) => ({
        key: ++next.current,
        file,
        preview: URL.createObjectURL(file),
        caption: "",
        state: "waiting" as const,
        fraction: 0,
        error: null,
      })),
    ]);
  };

  const remove = (key: number) =>
    setItems((all) => {
      const gone = all.find((p) => p.key === key);
      if (gone) URL.revokeObjectURL(gone.preview);
      return all.filter((p) => p.key !== key);
    });

  /** Uploads and adds the images not added yet, one by one; true when all are in. */
  const send = async (loraId: string): Promise<boolean> => {
    let ok = true;
    for (const p of live.current.filter((x) => x.state !== "added")) {
      update(p.key, { state: "uploading", fraction: 0, error: null });
      try {
        await addReference(api, loraId, p.file, p.caption, (fraction) => update(p.key, { fraction }));
        update(p.key, { state: "added", fraction: 1 });
      } catch (err) {
        ok = false;
        update(p.key, { state: "failed", error: err });
      }
    }
    return ok;
  };

  const clearAdded = () =>
    setItems((all) => {
      all.filter((p) => p.state === "added").forEach((p) => URL.revokeObjectURL(p.preview));
      return all.filter((p) => p.state !== "added");
    });

  const waiting = items.filter((p) => p.state !== "added").length;
  const busy = items.some((p) => p.state === "uploading");
  return { items, problems, add, remove, send, clearAdded, update, waiting, busy };
}

export type PendingImagesState = ReturnType<typeof usePendingImages>;

/** The picker: a file input, the client-side refusals, and each image with its preview,
 *  caption, upload progress and the server's refusal (in the user's language). */
export function PendingImages({ state }: { state: PendingImagesState }) {
  const { t } = useI18n();
  return (
    <div className="pending-images">
      <label className="button attach">
        {t("addImages")}
        <input
          type="file"
          multiple
          accept={IMAGE_TYPES.join(",")}
          data-testid="lora-images-input"
          disabled={state.busy}
          onChange={(e) => {
            const files = Array.from(e.target.files ?? []);
            e.target.value = "";
            state.add(files);
          }}
        />
      </label>
      <p className="muted small">{t("imagesRule")}</p>
      {state.problems.length > 0 && (
        <ul className="errors" data-testid="image-problems">
          {state.problems.map((p, i) => (
            <li key={i} data-problem={p.problem}>
              {t(PROBLEM_TEXT[p.problem], { name: p.name })}
            </li>
          ))}
        </ul>
      )}
      <ul className="thumbs">
        {state.items.map((p) => (
          <li key={p.key} className={`thumb ${p.state}`} data-testid="pending-image" data-state={p.state}>
            <img src={p.preview} alt={p.file.name} />
            <span className="small muted">
              {p.file.name} · {bytes(p.file.size)}
            </span>
            <input
              type="text"
              placeholder={t("caption")}
              aria-label={t("caption")}
              maxLength={MAX_CAPTION}
              value={p.caption}
              disabled={p.state === "added" || p.state === "uploading"}
              onChange={(e) => state.update(p.key, { caption: e.target.value })}
            />
            {p.state === "uploading" && <progress max={1} value={p.fraction} />}
            {p.state === "failed" && <ErrorBanner error={p.error} />}
            {p.state !== "added" && p.state !== "uploading" && (
              <button type="button" className="link" onClick={() => state.remove(p.key)}>
                {t("removeImage")}
              </button>
            )}
          </li>
        ))}
      </ul>
    </div>
  );
}
