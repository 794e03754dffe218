import type { Api } from "./clients";
import { Bucket, type File as StoredFile } from "../gen/aivera/storage/v1/storage_pb.js";

// Headers a page may not set itself (the browser sets them from the body).
const FORBIDDEN = new Set(["content-length", "host", "connection", "transfer-encoding"]);

export class UploadError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

/** PUTs `body` to a signed URL, reporting progress (fetch cannot report upload progress;
 *  XMLHttpRequest can). The URL is never logged. */
export function putWithProgress(
  url: string,
  body: Blob,
  headers: Record<string, string>,
  onProgress: (loaded: number, total: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    for (const [k, v] of Object.entries(headers)) {
      if (!FORBIDDEN.has(k.toLowerCase())) xhr.setRequestHeader(k, v);
    }
    xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : body.size);
    xhr.onload = () =>
      xhr.status >= 200 && xhr.status < 300
        ? resolve()
        : reject(new UploadError(xhr.status, `upload answered HTTP ${xhr.status}`));
    xhr.onerror = () => reject(new UploadError(0, "network error during upload"));
    xhr.onabort = () => reject(new UploadError(0, "upload cancelled"));
    signal?.addEventListener("abort", () => xhr.abort());
    xhr.send(body);
  });
}

/**
 * Uploads a document the browser way (it cannot client-stream over gRPC-web): a signed
 * upload URL from the storage service, a PUT of the bytes to it (on this origin: the
 * gateway routes /files/ to storage), then CompleteUpload, which checks size and type.
 */
export function uploadDocument(
  api: Api,
  file: Blob & { name: string },
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<StoredFile> {
  return uploadTo(api, Bucket.DOCUMENTS, "chat", file, onProgress, signal);
}

/** The same three steps into any bucket (datasets, documents of a clone). */
export async function uploadTo(
  api: Api,
  bucket: Bucket,
  purpose: string,
  file: Blob & { name: string },
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<StoredFile> {
  const started = await api.storage.createUploadUrl({
    bucket,
    filename: file.name,
    sizeBytes: BigInt(file.size),
    labels: { purpose },
  });
  const id = started.file?.id;
  if (!id) throw new UploadError(0, "no file id in CreateUploadUrl");
  await putWithProgress(started.url, file, started.headers, (loaded, total) =>
    onProgress(total > 0 ? loaded / total : 1),
    signal,
  );
  return api.storage.completeUpload({ id });
}
