import { useI18n } from "../i18n/i18n";
import type { Point } from "./jobState";

const W = 640;
const H = 240;
const PAD = 36;

function path(points: [number, number][]): string {
  return points.map(([x, y], i) => `${i === 0 ? "M" : "L"}${x.toFixed(1)},${y.toFixed(1)}`).join(" ");
}

/** The loss (and eval loss) curve as plain SVG: x is the step, y the loss, both scaled to
 *  what has arrived so far, so the curve grows as points come in. */
export function LossChart({ points, totalSteps }: { points: Point[]; totalSteps: number }) {
  const { t } = useI18n();
  if (points.length === 0) return <p className="muted" data-testid="chart-empty">{t("chartEmpty")}</p>;
  const losses = points.flatMap((p) => (p.evalLoss === null ? [p.loss] : [p.loss, p.evalLoss]));
  const lo = Math.min(...losses);
  const hi = Math.max(...losses);
  const span = hi - lo || 1;
  const maxStep = Math.max(totalSteps, ...points.map((p) => p.step), 1);
  const x = (step: number) => PAD + ((W - 2 * PAD) * step) / maxStep;
  const y = (loss: number) => H - PAD - ((H - 2 * PAD) * (loss - lo)) / span;
  const train = points.map((p): [number, number] => [x(p.step), y(p.loss)]);
  const evals = points.flatMap((p): [number, number][] => (p.evalLoss === null ? [] : [[x(p.step), y(p.evalLoss)]]));
  return (
    <figure className="chart">
      <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-label={t("lossChart")} data-testid="loss-chart" data-points={points.length}>
        <line className="axis" x1={PAD} y1={H - PAD} x2={W - PAD} y2={H - PAD} />
        <line className="axis" x1={PAD} y1={PAD} x2={PAD} y2={H - PAD} />
        <text className="tick" x={PAD - 4} y={PAD + 4} textAnchor="end">{hi.toFixed(2)}</text>
        <text className="tick" x={PAD - 4} y={H - PAD} textAnchor="end">{lo.toFixed(2)}</text>
        <text className="tick" x={W - PAD} y={H - PAD + 16} textAnchor="end">{maxStep}</text>
        <path className="loss" d={path(train)} data-testid="loss-line" />
        {evals.length > 0 && <path className="eval-loss" d={path(evals)} data-testid="eval-line" />}
      </svg>
      <figcaption className="small muted">
        <span className="legend loss">{t("loss")}</span>
        {evals.length > 0 && <span className="legend eval-loss">{t("evalLoss")}</span>}
      </figcaption>
    </figure>
  );
}
