import { create } from "@bufbuild/protobuf";
import { describe, expect, it } from "vitest";
import { applyEvent, boxPercent, emptyTurn, isTerminal, uniqueSources } from "../src/chat/turn";
import {
  ChatEventSchema,
  MessageSchema,
  Phase,
  SearchResultRefSchema,
  type ChatEvent,
} from "../src/gen/aivera/chat/v1/chat_pb.js";

const ev = (seq: number, event: ChatEvent["event"]): ChatEvent =>
  create(ChatEventSchema, { messageId: "turn-1", seq: BigInt(seq), event });

const token = (seq: number, text: string) => ev(seq, { case: "llmToken", value: { text, model: "m" } as never });

describe("applyEvent", () => {
  it("builds the answer from tokens in order and keeps the last seq", () => {
    let turn = emptyTurn();
    turn = applyEvent(turn, ev(1, { case: "accepted", value: { userMessage: create(MessageSchema, { id: "u1", content: "q" }) } as never }));
    turn = applyEvent(turn, token(2, "При"));
    turn = applyEvent(turn, token(3, "вет"));
    expect(turn.text).toBe("Привет");
    expect(turn.seq).toBe(3n);
    expect(turn.turnId).toBe("turn-1");
    expect(turn.userMessage?.id).toBe("u1");
    expect(isTerminal(turn)).toBe(false);
  });

  it("ignores events already seen, so a replay after reattaching never doubles text", () => {
    let turn = emptyTurn();
    for (const e of [token(1, "a"), token(2, "b")]) turn = applyEvent(turn, e);
    // WatchTurn(after_seq=0) replays everything: the known part changes nothing.
    for (const e of [token(1, "a"), token(2, "b"), token(3, "c")]) turn = applyEvent(turn, e);
    expect(turn.text).toBe("abc");
  });

  it("shows the phase and its progress, and clears them when the phase ends", () => {
    let turn = applyEvent(emptyTurn(), ev(1, { case: "phaseStarted", value: { phase: Phase.DOCUMENT_SEARCH, description: "Поиск" } as never }));
    expect(turn.phase).toBe(Phase.DOCUMENT_SEARCH);
    expect(turn.phaseText).toBe("Поиск");
    turn = applyEvent(turn, ev(2, { case: "phaseProgress", value: { phase: Phase.DOCUMENT_SEARCH, progress: { done: 2n, total: 5n, unit: "pages" }, message: "" } as never }));
    expect(turn.progress).toEqual({ done: 2n, total: 5n, unit: "pages" });
    turn = applyEvent(turn, ev(3, { case: "phaseFinished", value: { phase: Phase.DOCUMENT_SEARCH } as never }));
    expect(turn.progress).toBeNull();
  });

  it("ends with the stored final message, or with the error", () => {
    let turn = applyEvent(emptyTurn(), token(1, "draft"));
    turn = applyEvent(turn, ev(2, { case: "final", value: { message: create(MessageSchema, { id: "turn-1", content: "whole answer" }) } as never }));
    expect(isTerminal(turn)).toBe(true);
    expect(turn.text).toBe("whole answer");
    const failed = applyEvent(emptyTurn(), ev(1, { case: "error", value: { code: 1, reason: "CANCELLED", message: "stopped", retryable: false } as never }));
    expect(isTerminal(failed)).toBe(true);
    expect(failed.error?.reason).toBe("CANCELLED");
  });
});

describe("sources", () => {
  it("lists each block once, in order", () => {
    const a = create(SearchResultRefSchema, { blockId: "b1", documentId: "d", page: 1 });
    const b = create(SearchResultRefSchema, { blockId: "b2", documentId: "d", page: 2 });
    expect(uniqueSources([a, b, a]).map((s) => s.blockId)).toEqual(["b1", "b2"]);
  });

  it("turns a normalized box into percentages, clamped to the page", () => {
    expect(boxPercent({ left: 0.1, top: 0.2, right: 0.5, bottom: 0.3 })).toEqual({
      x: 10,
      y: 20,
      width: 40,
      height: expect.closeTo(10, 5),
    });
    expect(boxPercent({ left: -1, top: 0.9, right: 2, bottom: 1.5 })).toMatchObject({ x: 0, width: 100 });
  });
});
