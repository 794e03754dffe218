import {
  AspectRatio,
  GenerationStatus,
  ImageLoraExecutor,
  ImageLoraStatus,
  type GeneratedImage,
  type GenerateImagesEvent,
  type Generation,
} from "../../gen/aivera/training/v1/image_loras_pb.js";

// The server's rules for reference images (ImageLoraService.AddReferenceImage /
// StartTraining), mirrored so a user learns of a wrong file before uploading it. The server
// stays the authority: its refusals are shown as it words them.
export const MIN_IMAGES = 4;
export const MAX_IMAGES = 15;
export const MAX_IMAGE_BYTES = 10 * 1024 * 1024;
export const IMAGE_TYPES = ["image/jpeg", "image/png", "image/webp"] as const;
export const MAX_CAPTION = 1000;
const TRIGGER_WORD = /^[A-Za-z][A-Za-z0-9_]{2,31}$/;

export type FileProblem = { name: string; problem: "type" | "size" | "count" };

/** Which of `files` can join `existing` reference images (in order, up to 15), and why
 *  the others cannot. */
export function checkFiles<F extends { name: string; size: number; type: string }>(
  existing: number,
  files: readonly F[],
): { accepted: F[]; problems: FileProblem[] } {
  const accepted: F[] = [];
  const problems: FileProblem[] = [];
  for (const f of files) {
    if (!(IMAGE_TYPES as readonly string[]).includes(f.type)) problems.push({ name: f.name, problem: "type" });
    else if (f.size > MAX_IMAGE_BYTES) problems.push({ name: f.name, problem: "size" });
    else if (existing + accepted.length >= MAX_IMAGES) problems.push({ name: f.name, problem: "count" });
    else accepted.push(f);
  }
  return { accepted, problems };
}

/** Training needs 4–15 reference images. */
export const enoughImages = (n: number) => n >= MIN_IMAGES && n <= MAX_IMAGES;

export const validTriggerWord = (word: string) => TRIGGER_WORD.test(word);

/** The prompt as the server will run it: the trigger word is prepended when the prompt
 *  lacks it (as a whole word, ignoring case). */
export function promptWithTrigger(prompt: string, word: string): string {
  const p = prompt.trim();
  if (!word || !p) return p;
  const escaped = word.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(^|[^A-Za-z0-9_])${escaped}([^A-Za-z0-9_]|$)`, "i").test(p) ? p : `${word} ${p}`;
}

export const statusName = (s: ImageLoraStatus) => ImageLoraStatus[s] ?? "UNSPECIFIED";
export const executorName = (e: ImageLoraExecutor) => ImageLoraExecutor[e] ?? "UNSPECIFIED";

/** Reference images can change, and training can (re)start, only in these. */
export const EDITABLE = new Set([ImageLoraStatus.DRAFT, ImageLoraStatus.FAILED, ImageLoraStatus.CANCELLED]);
/** A training that has not ended: it can be cancelled, and the page follows it. */
export const RUNNING = new Set([ImageLoraStatus.VALIDATING, ImageLoraStatus.QUEUED, ImageLoraStatus.TRAINING]);

export const EXECUTORS = [ImageLoraExecutor.SIMULATE, ImageLoraExecutor.LOCAL, ImageLoraExecutor.REPLICATE] as const;

export const ASPECTS: readonly { value: AspectRatio; label: string }[] = [
  { value: AspectRatio.ASPECT_RATIO_1_1, label: "1:1" },
  { value: AspectRatio.ASPECT_RATIO_16_9, label: "16:9" },
  { value: AspectRatio.ASPECT_RATIO_9_16, label: "9:16" },
  { value: AspectRatio.ASPECT_RATIO_4_3, label: "4:3" },
  { value: AspectRatio.ASPECT_RATIO_3_4, label: "3:4" },
  { value: AspectRatio.ASPECT_RATIO_3_2, label: "3:2" },
  { value: AspectRatio.ASPECT_RATIO_2_3, label: "2:3" },
];

/** What the generate panel shows of one GenerateImages stream. */
export type GenerationView = {
  generation: Generation | null;
  status: GenerationStatus;
  fraction: number;
  images: GeneratedImage[];
  error: string;
};

export const emptyGeneration = (): GenerationView => ({
  generation: null,
  status: GenerationStatus.UNSPECIFIED,
  fraction: 0,
  images: [],
  error: "",
});

const byIndex = (images: GeneratedImage[]) => [...images].sort((a, b) => a.index - b.index);

/** Folds one event: images appear as they land (each index once), `done` has the word. */
export function foldGeneration(view: GenerationView, event: GenerateImagesEvent): GenerationView {
  const e = event.event;
  switch (e.case) {
    case "queued":
      return { ...view, generation: e.value, status: e.value.status || GenerationStatus.QUEUED };
    case "progress":
      return { ...view, status: e.value.status, fraction: Math.max(view.fraction, e.value.fraction) };
    case "image":
      return {
        ...view,
        images: byIndex([...view.images.filter((i) => i.index !== e.value.index), e.value]),
      };
    case "done":
      return {
        generation: e.value,
        status: e.value.status,
        fraction: e.value.status === GenerationStatus.SUCCEEDED ? 1 : view.fraction,
        images: e.value.images.length ? byIndex(e.value.images) : view.images,
        error: e.value.error,
      };
    default:
      return view;
  }
}
