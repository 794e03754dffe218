import { Code, ConnectError } from "@connectrpc/connect";
import { useEffect, useReducer, useRef } from "react";
import { useApi } from "../api/context";
import { JobStatus, type JobEvent } from "../gen/aivera/training/v1/jobs_pb.js";
import { emptyJob, foldJob, TERMINAL, type JobView } from "./jobState";

type Action = { type: "event"; event: JobEvent } | { type: "reset" };

function reducer(view: JobView, action: Action): JobView {
  return action.type === "reset" ? emptyJob() : foldJob(view, action.event);
}

const FIRST_RECONNECT_MS = 1000;
const MAX_RECONNECT_MS = 15_000;

/** Wait before the n-th reconnect in a row (1 s, 2 s, 4 s, … up to 15 s): a server that
 *  is down is not asked again every second by every open page. */
export const reconnectDelay = (failures: number) =>
  Math.min(FIRST_RECONNECT_MS * 2 ** Math.max(0, failures - 1), MAX_RECONNECT_MS);

// Answers that another try will not change (the job is gone or not the caller's, the
// session ended): following stops instead of asking again.
const FINAL_CODES = new Set([Code.NotFound, Code.PermissionDenied, Code.InvalidArgument, Code.Unauthenticated]);

/** Follows WatchJob from the first event (a replay on every open), then live; a stream
 *  lost before the job ended (UNAVAILABLE, a dropped connection) reattaches after the last
 *  sequence it saw, with backoff. `onStatus` hears every status the job reports (replayed
 *  ones too). An empty `jobId` follows nothing. */
export function useJobEvents(jobId: string, onStatus: (status: JobStatus) => void, generation = 0): JobView {
  const { jobs } = useApi();
  const [view, dispatch] = useReducer(reducer, undefined, () => emptyJob());
  const last = useRef({ seq: 0n, status: JobStatus.UNSPECIFIED });
  const onStatusRef = useRef(onStatus);
  onStatusRef.current = onStatus;
  useEffect(() => {
    last.current = { seq: 0n, status: JobStatus.UNSPECIFIED };
    dispatch({ type: "reset" });
    if (!jobId) return;
    const abort = new AbortController();
    void (async () => {
      let failures = 0;
      while (!abort.signal.aborted && !TERMINAL.has(last.current.status)) {
        try {
          for await (const e of jobs.watchJob({ id: jobId, afterSequence: last.current.seq }, { signal: abort.signal })) {
            failures = 0;
            if (e.sequence > last.current.seq) last.current.seq = e.sequence;
            dispatch({ type: "event", event: e });
            if (e.event.case === "statusChanged" || e.event.case === "final") {
              last.current.status = e.event.value.status;
              onStatusRef.current(e.event.value.status);
            }
          }
        } catch (err) {
          if (abort.signal.aborted || FINAL_CODES.has(ConnectError.from(err).code)) return;
        }
        if (TERMINAL.has(last.current.status)) return;
        failures += 1;
        await new Promise((r) => setTimeout(r, reconnectDelay(failures)));
      }
    })();
    return () => abort.abort();
  }, [jobs, jobId, generation]);
  return view;
}
