import type { Checkpoint, CostSummary, JobEvent, TrainingJob } from "../gen/aivera/training/v1/jobs_pb.js";
import { JobStatus, LogLevel } from "../gen/aivera/training/v1/jobs_pb.js";

export type Point = { step: number; loss: number; evalLoss: number | null; lr: number; tps: number };
export type Log = { seq: number; level: LogLevel; text: string };

/** What the job monitor shows, folded from WatchJob's events (a replay from the start on
 *  every open, then live ones). Pure: the same events always give the same state. */
export type JobView = {
  lastSeq: bigint;
  attempt: number;
  status: JobStatus;
  message: string;
  points: Point[];
  logs: Log[];
  checkpoints: Checkpoint[];
  /** What the job has cost so far, from the stream's live `cost` events. */
  cost: CostSummary | null;
  job: TrainingJob | null;
};

export const TERMINAL = new Set([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]);
const MAX_LOGS = 500;

export function emptyJob(job: TrainingJob | null = null): JobView {
  return {
    lastSeq: 0n,
    attempt: job?.attempt ?? 0,
    status: job?.status ?? JobStatus.UNSPECIFIED,
    message: job?.error?.message ?? "",
    points: [],
    logs: [],
    checkpoints: [],
    cost: null,
    job,
  };
}

export function foldJob(view: JobView, e: JobEvent): JobView {
  // Live-only events carry the sequence of the last stored event (they are not stored):
  // they are never duplicates, and they do not move the replay position.
  const live = e.event;
  if (live.case === "cost") return { ...view, cost: live.value };
  if (live.case === "heartbeat") return view;
  if (live.case === "final") {
    const job = live.value;
    return { ...view, job, cost: job.cost ?? view.cost, status: job.status, message: job.error?.message || view.message };
  }
  if (e.sequence <= view.lastSeq) return view; // a duplicate after a reattach
  let next: JobView = { ...view, lastSeq: e.sequence };
  // A retry starts a new attempt: its curve replaces the previous one.
  if (e.attempt > next.attempt) next = { ...next, attempt: e.attempt, points: [], checkpoints: [] };
  const ev = e.event;
  switch (ev.case) {
    case "statusChanged":
      return { ...next, status: ev.value.status, message: ev.value.error?.message || ev.value.message };
    case "metric": {
      const m = ev.value;
      const point: Point = {
        step: Number(m.step),
        loss: m.loss,
        evalLoss: m.evalLoss ?? null,
        lr: m.learningRate,
        tps: m.tokensPerSecond,
      };
      const points = next.points.filter((p) => p.step !== point.step);
      points.push(point);
      points.sort((a, b) => a.step - b.step);
      return { ...next, points };
    }
    case "checkpoint":
      return { ...next, checkpoints: [...next.checkpoints, ev.value] };
    case "log": {
      const logs = [...next.logs, { seq: Number(e.sequence), level: ev.value.level, text: ev.value.text }];
      return { ...next, logs: logs.length > MAX_LOGS ? logs.slice(-MAX_LOGS) : logs };
    }
    default:
      return next;
  }
}
