import { Code, ConnectError } from "@connectrpc/connect";
import { useCallback, useEffect, useRef, useState } from "react";
import { useApi } from "../api/context";
import type { ChatEvent } from "../gen/aivera/chat/v1/chat_pb.js";
import { applyEvent, emptyTurn, isTerminal, type TurnView } from "./turn";

const REATTACH_ATTEMPTS = 6;
const RETRYABLE = new Set([Code.Unavailable, Code.Unknown, Code.DeadlineExceeded, Code.Aborted]);

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const id = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => (clearTimeout(id), resolve()));
  });

/**
 * One chat's running turn: SendMessage streams it; a stream lost before the terminal
 * event (network, a gateway or replica restart) reattaches with WatchTurn after the last
 * seq seen, so nothing shows twice and nothing is missed; after a reload `reattach`
 * follows a turn still running. Leaving the chat stops following, not the turn; `stop`
 * cancels it on the server (CancelTurn).
 */
export function useTurn(chatId: string, onDone: () => Promise<unknown>) {
  const { chat } = useApi();
  const [turn, setTurn] = useState<TurnView | null>(null);
  const [error, setError] = useState<unknown>(null);
  const [running, setRunning] = useState(false);
  const current = useRef<TurnView>(emptyTurn());
  const abort = useRef<AbortController | null>(null);

  useEffect(() => () => abort.current?.abort(), []);

  const run = useCallback(
    async (start: (signal: AbortSignal) => AsyncIterable<ChatEvent>, initial: TurnView) => {
      abort.current?.abort();
      const ac = new AbortController();
      abort.current = ac;
      current.current = initial;
      setTurn(initial);
      setError(null);
      setRunning(true);
      let stream = start(ac.signal);
      let attempts = 0;
      try {
        for (;;) {
          try {
            for await (const ev of stream) {
              current.current = applyEvent(current.current, ev);
              setTurn(current.current);
              attempts = 0;
            }
          } catch (err) {
            if (ac.signal.aborted) return;
            const code = ConnectError.from(err).code;
            // Not accepted yet: the request itself failed (nothing was stored).
            if (!current.current.turnId || !RETRYABLE.has(code) || attempts >= REATTACH_ATTEMPTS) {
              setError(err);
              break;
            }
          }
          if (ac.signal.aborted) return;
          if (isTerminal(current.current) || !current.current.turnId) break;
          // The stream ended or broke before the terminal event: follow the turn again.
          await sleep(Math.min(4000, 250 * 2 ** attempts), ac.signal);
          attempts += 1;
          const { turnId, seq } = current.current;
          stream = chat.watchTurn({ chatId, turnId, afterSeq: seq }, { signal: ac.signal });
        }
        await onDone();
      } finally {
        if (abort.current === ac) {
          abort.current = null;
          setRunning(false);
          setTurn(null);
        }
      }
    },
    [chat, chatId, onDone],
  );

  const send = useCallback(
    (text: string, fileIds: string[] = []) =>
      run((signal) => chat.sendMessage({ chatId, text, fileIds }, { signal }), emptyTurn()),
    [chat, chatId, run],
  );

  const reattach = useCallback(
    (turnId: string) =>
      run((signal) => chat.watchTurn({ chatId, turnId, afterSeq: 0n }, { signal }), emptyTurn(turnId)),
    [chat, chatId, run],
  );

  const stop = useCallback(async () => {
    const turnId = current.current.turnId;
    if (turnId) await chat.cancelTurn({ chatId, turnId });
  }, [chat, chatId]);

  return { turn, running, error, clearError: () => setError(null), send, reattach, stop };
}
