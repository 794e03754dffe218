export type StudioRoute =
  | { page: "datasets" }
  | { page: "train"; datasetId: string | null }
  | { page: "jobs"; jobId: string | null }
  | { page: "models" }
  | { page: "clones" }
  | { page: "loras"; loraId: string | null };

/** `#/studio/<page>[/<id>]` → the studio's page (ids only in the hash, never tokens). */
export function parseStudio(hash: string): StudioRoute | null {
  const m = /^#\/studio(?:\/(datasets|train|jobs|models|clones|loras))?(?:\/([\w-]+))?$/.exec(hash);
  if (m === null) return null;
  const id = m[2] ?? null;
  switch (m[1]) {
    case "train":
      return { page: "train", datasetId: id };
    case "jobs":
      return { page: "jobs", jobId: id };
    case "models":
      return { page: "models" };
    case "clones":
      return { page: "clones" };
    case "loras":
      return { page: "loras", loraId: id };
    default:
      return { page: "datasets" };
  }
}
