import { useQuery } from "@tanstack/react-query";
import { useApi } from "../api/context";
import { ErrorBanner } from "../components/ErrorBanner";
import type { TextSpan } from "../gen/aivera/training/v1/datasets_pb.js";
import { useI18n } from "../i18n/i18n";

export type Piece = { text: string; trained: boolean };

/** `text` cut at the spans that carry loss. The server's offsets count Unicode code
 *  points (Python indices), not UTF-16 units, so the text is split into code points. */
export function splitSpans(text: string, spans: readonly Pick<TextSpan, "start" | "end">[]): Piece[] {
  const cps = Array.from(text);
  const out: Piece[] = [];
  let at = 0;
  for (const s of [...spans].sort((a, b) => a.start - b.start)) {
    const start = Math.max(at, Math.min(s.start, cps.length));
    const end = Math.max(start, Math.min(s.end, cps.length));
    if (start > at) out.push({ text: cps.slice(at, start).join(""), trained: false });
    if (end > start) out.push({ text: cps.slice(start, end).join(""), trained: true });
    at = end;
  }
  if (at < cps.length) out.push({ text: cps.slice(at).join(""), trained: false });
  return out;
}

/** The first examples as the model sees them: the base model's chat template applied,
 *  the parts that carry loss marked. */
export function DatasetPreview({ datasetId }: { datasetId: string }) {
  const { datasets } = useApi();
  const { t } = useI18n();
  const preview = useQuery({
    queryKey: ["dataset-preview", datasetId],
    queryFn: () => datasets.previewDataset({ id: datasetId, limit: 3 }),
  });
  if (preview.error) return <ErrorBanner error={preview.error} onRetry={() => void preview.refetch()} />;
  if (!preview.data) return <p className="muted small">{t("loading")}</p>;
  return (
    <div data-testid="dataset-preview">
      <p className="muted small">{t("previewHint")}</p>
      {preview.data.examples.map((e) => (
        <figure key={e.index} className="example">
          <figcaption className="small muted">
            {t("previewExample", { line: e.line, tokens: e.tokenCount, trained: e.trainedTokenCount })}
            {e.truncated && <span className="warn"> · {t("truncated")}</span>}
          </figcaption>
          <pre className="prompt">
            {splitSpans(e.text, e.trainedSpans).map((p, i) => (p.trained ? <mark key={i}>{p.text}</mark> : <span key={i}>{p.text}</span>))}
          </pre>
        </figure>
      ))}
    </div>
  );
}
