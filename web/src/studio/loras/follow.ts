import { useEffect, useRef, useState } from "react";

const visibleNow = () => typeof document === "undefined" || document.visibilityState !== "hidden";

/** Whether the tab is shown (`document.visibilityState`), updated as it changes. */
export function usePageVisible(): boolean {
  const [visible, setVisible] = useState(visibleNow);
  useEffect(() => {
    const changed = () => setVisible(visibleNow());
    document.addEventListener("visibilitychange", changed);
    return () => document.removeEventListener("visibilitychange", changed);
  }, []);
  return visible;
}

export const POLL_FIRST_MS = 3000;
export const POLL_MAX_MS = 15_000;
/** The wait after a poll that saw nothing new: half as long again, up to 15 s. */
export const nextPollDelay = (ms: number) => Math.min(Math.round(ms * 1.5), POLL_MAX_MS);

/** Calls `poll` 3 s after it is enabled, then more and more slowly (up to every 15 s) while
 *  `enabled` and the tab is visible. A hidden tab asks nothing; shown again, it starts over
 *  at 3 s, and so does a change of `seen` (what the polls found, e.g. status and progress). */
export function useGentlePoll(enabled: boolean, poll: () => Promise<unknown>, seen: string): void {
  const visible = usePageVisible();
  const pollRef = useRef(poll);
  pollRef.current = poll;
  useEffect(() => {
    if (!enabled || !visible) return;
    let stopped = false;
    let delay = POLL_FIRST_MS;
    let timer: ReturnType<typeof setTimeout>;
    const tick = async () => {
      if (!visibleNow()) return; // hidden just now: the effect starts over when shown
      // A failed poll is shown by the query's own error; the next one may succeed.
      await pollRef.current().catch(() => undefined);
      if (stopped) return;
      delay = nextPollDelay(delay);
      timer = setTimeout(() => void tick(), delay);
    };
    timer = setTimeout(() => void tick(), delay);
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [enabled, visible, seen]);
}
