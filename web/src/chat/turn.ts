import type { ChatEvent, Message, MessageImage, SearchResultRef, TurnError } from "../gen/aivera/chat/v1/chat_pb.js";
import { Phase } from "../gen/aivera/chat/v1/chat_pb.js";

/** A turn as the console shows it while it streams, built from its events in order. */
export type TurnView = {
  turnId: string;
  /** The seq of the last event applied: WatchTurn resumes after it. */
  seq: bigint;
  userMessage: Message | null;
  phase: Phase | null;
  phaseText: string;
  progress: { done: bigint; total: bigint; unit: string } | null;
  text: string;
  tools: { id: string; name: string }[];
  images: { image: MessageImage; url: string }[];
  warnings: string[];
  final: Message | null;
  error: TurnError | null;
};

export function emptyTurn(turnId = ""): TurnView {
  return {
    turnId,
    seq: 0n,
    userMessage: null,
    phase: null,
    phaseText: "",
    progress: null,
    text: "",
    tools: [],
    images: [],
    warnings: [],
    final: null,
    error: null,
  };
}

export function isTerminal(turn: TurnView): boolean {
  return turn.final !== null || turn.error !== null;
}

/** Applies one event. Events at or below the seq already seen are ignored (a replay
 *  after reattaching never doubles text). Pure: returns a new view. */
export function applyEvent(turn: TurnView, ev: ChatEvent): TurnView {
  if (ev.seq !== 0n && ev.seq <= turn.seq) return turn;
  const next: TurnView = { ...turn, turnId: ev.messageId || turn.turnId, seq: ev.seq };
  const e = ev.event;
  switch (e.case) {
    case "accepted":
      next.userMessage = e.value.userMessage ?? null;
      break;
    case "phaseStarted":
      next.phase = e.value.phase;
      next.phaseText = e.value.description;
      next.progress = null;
      break;
    case "phaseProgress": {
      next.phase = e.value.phase;
      if (e.value.message) next.phaseText = e.value.message;
      const p = e.value.progress;
      next.progress = p ? { done: p.done, total: p.total, unit: p.unit } : null;
      break;
    }
    case "phaseFinished":
      next.progress = null;
      break;
    case "llmToken":
      next.text = turn.text + e.value.text;
      break;
    case "toolCall":
      next.tools = [...turn.tools, { id: e.value.id, name: e.value.name }];
      break;
    case "imageProduced":
      if (e.value.image) next.images = [...turn.images, { image: e.value.image, url: e.value.url }];
      break;
    case "warning":
      next.warnings = [...turn.warnings, e.value.message];
      break;
    case "final":
      next.final = e.value.message ?? null;
      if (next.final) next.text = next.final.content;
      next.phase = null;
      next.progress = null;
      break;
    case "error":
      next.error = e.value;
      next.phase = null;
      next.progress = null;
      break;
    default:
      break;
  }
  return next;
}

/** The sources of an answer: each document block once, in the order the turn used them. */
export function uniqueSources(refs: readonly SearchResultRef[]): SearchResultRef[] {
  const seen = new Set<string>();
  const out: SearchResultRef[] = [];
  for (const r of refs) {
    const key = `${r.documentId}/${r.blockId}/${r.page}`;
    if (!seen.has(key)) {
      seen.add(key);
      out.push(r);
    }
  }
  return out;
}

/** Percentages of a normalized box (0–1) for drawing it over its page image. */
export function boxPercent(box: { left: number; top: number; right: number; bottom: number }) {
  const clamp = (v: number) => Math.min(1, Math.max(0, v));
  const left = clamp(box.left);
  const top = clamp(box.top);
  return {
    x: left * 100,
    y: top * 100,
    width: Math.max(0, clamp(box.right) - left) * 100,
    height: Math.max(0, clamp(box.bottom) - top) * 100,
  };
}
