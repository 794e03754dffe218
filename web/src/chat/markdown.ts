import { create } from "@bufbuild/protobuf";
import { Lexer, type Token, type TokensList } from "marked";
import { SearchResultRefSchema, type Message, type SearchResultRef } from "../gen/aivera/chat/v1/chat_pb.js";

/*
 * Answers are markdown. `marked` is used as a lexer only: its tokens are drawn as React
 * elements (components/Markdown.tsx), so no HTML string is ever built or injected; raw
 * HTML in an answer is shown as the text it is. This module holds the pure parts: the
 * lexing, the settling of a half-streamed answer, safe link targets and the `[n]`
 * citation markers.
 */

/** The tokens of `text`; `streaming` settles an unfinished tail first (see `settle`). */
export function lexMarkdown(text: string, streaming = false): TokensList {
  return new Lexer({ gfm: true, breaks: true }).lex(streaming ? settle(text) : text);
}

export type { Token, TokensList };

// ---- links ------------------------------------------------------------------------------

const SAFE_PROTOCOLS = new Set(["http:", "https:"]);

/** The link target to use for `href`, or null when it must not be a link: only absolute
 *  http(s) URLs (no javascript:, data:, vbscript:, file:, relative or protocol-relative
 *  targets). The URL parser normalizes case, whitespace and control characters first,
 *  so `JaVa\tScript:` is caught as what a browser would make of it. */
export function safeHref(href: string): string | null {
  let url: URL;
  try {
    url = new URL(href.trim());
  } catch {
    return null;
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

// ---- entities ---------------------------------------------------------------------------

// marked leaves named entities as written (a renderer to HTML lets the browser decode
// them); text nodes need them decoded. The common ones only: anything else stays as typed.
const ENTITIES: Record<string, string> = {
  amp: "&",
  lt: "<",
  gt: ">",
  quot: '"',
  apos: "'",
  nbsp: "\u00a0",
  ndash: "–",
  mdash: "—",
  hellip: "…",
  laquo: "«",
  raquo: "»",
  copy: "©",
};

export function decodeEntities(text: string): string {
  return text.includes("&") ? text.replace(/&([a-z]+);/g, (all, name: string) => ENTITIES[name] ?? all) : text;
}

// ---- citations --------------------------------------------------------------------------

// The server's pattern (services/chat/citations.py): `[1]`, `[1, 2]`, `[1; 2]`, never
// followed by `(` (a markdown link) or `:` (a reference definition).
const MARKER = /\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\](?![(:])/g;

export type Segment = string | { marker: number };

/** `text` cut into plain strings and the citation markers `has` knows. A marker whose
 *  number is no citation (a footnote, a list index) stays text, brackets included; in
 *  `[1, 9]` with only 1 cited, 9 stays text. Joined back, the pieces are `text`. */
export function citationSegments(text: string, has: (marker: number) => boolean): Segment[] {
  const out: Segment[] = [];
  let plain = "";
  let last = 0;
  for (const m of text.matchAll(MARKER)) {
    const parts = (m[1] ?? "").split(/(\s*[,;]\s*)/);
    if (!parts.some((p, i) => i % 2 === 0 && has(Number(p)))) continue;
    plain += text.slice(last, m.index) + "[";
    parts.forEach((p, i) => {
      if (i % 2 === 0 && has(Number(p))) {
        if (plain) out.push(plain);
        plain = "";
        out.push({ marker: Number(p) });
      } else {
        plain += p;
      }
    });
    plain += "]";
    last = m.index + m[0].length;
  }
  plain += text.slice(last);
  if (plain) out.push(plain);
  return out;
}

/** Each citation of an answer by its marker: the search result it stands for (as the
 *  sources list and the source panel take it), built from the citation's own fields when
 *  the result is not in the message. */
export function citationTargets(message: Pick<Message, "citations" | "searchResults"> | null | undefined) {
  const out = new Map<number, SearchResultRef>();
  for (const c of message?.citations ?? []) {
    const ref =
      message?.searchResults[c.searchResultIndex] ??
      create(SearchResultRefSchema, {
        documentId: c.documentId,
        blockId: c.blockId,
        page: c.page,
        box: c.box,
        filename: c.filename,
      });
    if (c.marker > 0 && !out.has(c.marker)) out.set(c.marker, ref);
  }
  return out;
}

// ---- streaming --------------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})(.*)$/;
// A last line that is only the start of a block (a bullet, `1.`, `#`, `>`, a rule or a
// setext underline, the first ticks of a fence): what it becomes is decided by the next
// token, and drawn now it would make the line above flip (a paragraph into a heading).
const BLOCK_START = /^ {0,3}(?:[-*+=_#>]+|\d{1,9}[.)]?|`{1,2}|~{1,2})[ \t]*$/;

/**
 * A half-streamed answer made ready to draw, so that the text only grows while tokens
 * arrive (nothing drawn and then taken back):
 * - inside an open code fence nothing changes (marked draws it to the end) except a last
 *   line that may be the first ticks of the closing fence;
 * - a last line that is only a block marker waits for the next token;
 * - in the last paragraph an open inline code span, `*`, `**` or `~~` is closed (or dropped
 *   when nothing follows it yet: it would show as a mark and then vanish), a link whose
 *   target is still arriving shows its label, and a table waits for its delimiter row.
 * A finished answer is drawn as it is, without this.
 */
export function settle(text: string): string {
  const nl = text.lastIndexOf("\n");
  const head = text.slice(0, nl + 1);
  const lastLine = text.slice(nl + 1);
  const fence = openFence(head);
  if (fence !== null) {
    const ticks = lastLine.trim();
    const partialCloser = /^ {0,3}[`~]+[ \t]*$/.test(lastLine) && ticks[0] === fence[0] && ticks.length < fence.length;
    return partialCloser ? head : text;
  }
  if (FENCE.test(lastLine)) return text;
  if (BLOCK_START.test(lastLine)) return head;
  // The last paragraph: after the last blank line.
  const blank = /\n[ \t]*\n(?![\s\S]*\n[ \t]*\n)/.exec(text);
  const start = blank ? blank.index + blank[0].length : 0;
  const par = text.slice(start);
  // A table draws once its header and delimiter rows are whole (before, its pipes would
  // show as text and then vanish).
  const table = /^ {0,3}\|/m.exec(par);
  if (table && par.slice(table.index).split("\n").length < 3) return text.slice(0, start + table.index);
  return text.slice(0, start) + closeInline(par);
}

/** The opener of the fence left open at the end of `text`, or null. */
function openFence(text: string): string | null {
  let open: string | null = null;
  for (const line of text.split("\n")) {
    const m = FENCE.exec(line);
    if (!m) continue;
    const [, ticks = "", info = ""] = m;
    if (open === null) {
      // A backtick fence's info string has no backticks (``` a ``` is inline code).
      if (!(ticks[0] === "`" && info.includes("`"))) open = ticks;
    } else if (ticks[0] === open[0] && ticks.length >= open.length && info.trim() === "") {
      open = null;
    }
  }
  return open;
}

function closeInline(par: string): string {
  // A link whose target is still arriving shows its label; a bracket still open, or closed
  // with nothing after it yet, waits (it may become a link). A citation `[1]` is shown.
  let text = par.replace(/!?\[([^[\]\n]*)\]\([^()\s]*$/, "$1");
  const bracket = /!?\[([^[\]\n]*)(\]?)$/.exec(text);
  if (bracket && !(bracket[2] && /^\d{1,3}(?:\s*[,;]\s*\d{1,3})*$/.test(bracket[1] ?? ""))) {
    text = text.slice(0, bracket.index);
  }
  // Positions of code spans are masked so that marks inside them do not count.
  const masked = text.replace(/`[^`\n]*`/g, (s) => "\0".repeat(s.length));
  const opens: { at: number; mark: string }[] = [];
  const tick = masked.indexOf("`");
  const scan = tick >= 0 ? masked.slice(0, tick) : masked;
  if (tick >= 0) opens.push({ at: tick, mark: "`" });
  // Runs of `*` and `~`: one `*` is emphasis, two strong, three both; `~~` strikes through.
  // A run with blanks on both sides (a bullet, `2 * 3`) is no delimiter.
  const runs = new Map<string, { count: number; at: number }>();
  const note = (mark: string, at: number) => {
    const r = runs.get(mark) ?? { count: 0, at: -1 };
    runs.set(mark, { count: r.count + 1, at });
  };
  for (const m of scan.matchAll(/\*+|~+/g)) {
    const at = m.index;
    const run = m[0];
    const before = at === 0 ? " " : (scan[at - 1] as string);
    const after = scan[at + run.length];
    if (/\s/.test(before) && after !== undefined && /\s/.test(after)) continue;
    if (run[0] === "*") {
      if (run.length % 2 === 1) note("*", at);
      if (run.length >= 2) note("**", at);
    } else if (run.length === 2 || after === undefined) {
      // A lone `~` at the very end is the first half of `~~`.
      note(run.length === 2 ? "~~" : "~", at);
    }
  }
  for (const [mark, r] of runs) if (r.count % 2 === 1) opens.push({ at: r.at, mark });
  if (opens.length === 0) return text;
  // Innermost (latest) first; an opener with nothing after it yet is dropped.
  opens.sort((a, b) => b.at - a.at);
  let closers = "";
  for (const { at, mark } of opens) {
    if (text.slice(at + mark.length).trim() === "") {
      text = text.slice(0, at) + text.slice(at + mark.length);
    } else {
      closers += mark;
    }
  }
  const body = text.trimEnd();
  return body + closers + text.slice(body.length);
}
