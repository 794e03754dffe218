import { useState } from "react";
import { useApi } from "../api/context";
import { uploadTo } from "../api/upload";
import type { Bucket, File as StoredFile } from "../gen/aivera/storage/v1/storage_pb.js";

/** One upload at a time through a signed URL, with its progress for the page. */
export function useUpload(bucket: Bucket, purpose: string) {
  const api = useApi();
  const [progress, setProgress] = useState<{ name: string; fraction: number } | null>(null);
  const [error, setError] = useState<unknown>(null);
  const upload = async (file: File): Promise<StoredFile | null> => {
    setError(null);
    setProgress({ name: file.name, fraction: 0 });
    try {
      return await uploadTo(api, bucket, purpose, file, (fraction) => setProgress({ name: file.name, fraction }));
    } catch (err) {
      setError(err);
      return null;
    } finally {
      setProgress(null);
    }
  };
  return { upload, progress, error, setError };
}
