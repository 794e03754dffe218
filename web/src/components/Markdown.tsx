import { createContext, Fragment, memo, useContext, useMemo, type ReactNode } from "react";
import {
  citationSegments,
  decodeEntities,
  lexMarkdown,
  safeHref,
  type Token,
} from "../chat/markdown";
import type { SearchResultRef } from "../gen/aivera/chat/v1/chat_pb.js";
import { useI18n } from "../i18n/i18n";

type Cites = { targets: ReadonlyMap<number, SearchResultRef>; onCite?: (source: SearchResultRef) => void };
const NO_CITES: Cites = { targets: new Map() };
const CiteContext = createContext<Cites>(NO_CITES);

/**
 * An answer's markdown drawn as React elements from marked's tokens: text is always a
 * text node (raw HTML shows as typed), links only to http(s) and opening in a new tab
 * without an opener or referrer, images as links (the page loads none from elsewhere), no
 * style attributes (alignment is a class). `[n]` markers of `citations` become buttons
 * that open their source. While `streaming`, the tail is settled (chat/markdown.ts) and
 * finished blocks are not drawn again: each block is memoized on its source text.
 */
export function Markdown({
  text,
  streaming = false,
  citations,
  onCite,
}: {
  text: string;
  streaming?: boolean;
  citations?: ReadonlyMap<number, SearchResultRef>;
  onCite?: (source: SearchResultRef) => void;
}) {
  const tokens = useMemo(() => lexMarkdown(text, streaming), [text, streaming]);
  // Reference definitions change how other blocks lex; a block is redrawn when they change.
  const defs = useMemo(() => JSON.stringify(tokens.links), [tokens]);
  const cites = useMemo<Cites>(() => (citations ? { targets: citations, onCite } : NO_CITES), [citations, onCite]);
  return (
    <CiteContext.Provider value={cites}>
      <div className="markdown">
        {tokens.map((token, i) => (
          <Block key={i} token={token} raw={token.raw} defs={defs} />
        ))}
      </div>
    </CiteContext.Provider>
  );
}

const Block = memo(
  function Block({ token }: { token: Token; raw: string; defs: string }) {
    return <>{block(token)}</>;
  },
  (a, b) => a.raw === b.raw && a.defs === b.defs,
);

function blocks(tokens: readonly Token[] | undefined): ReactNode[] {
  return (tokens ?? []).map((t, i) => <Fragment key={i}>{block(t)}</Fragment>);
}

const ALIGN = { left: "align-left", center: "align-center", right: "align-right" } as const;

function block(token: Token): ReactNode {
  switch (token.type) {
    case "paragraph":
      return <p>{inline(token.tokens)}</p>;
    case "heading": {
      // The page's own headings are h1–h2: an answer's start at h3.
      const level = Math.min(6, Math.max(1, token.depth) + 2);
      const H = `h${level}` as "h3" | "h4" | "h5" | "h6";
      return <H>{inline(token.tokens)}</H>;
    }
    case "code": {
      const lang = /^[\w+#.-]{1,32}$/.test(token.lang ?? "") ? (token.lang as string) : "";
      return (
        <pre className="md-code" data-lang={lang || undefined}>
          <code className={lang ? `language-${lang}` : undefined}>{token.text}</code>
        </pre>
      );
    }
    case "list": {
      const items = (token.items as Token[]).map((item, i) => <li key={i}>{listItem(item)}</li>);
      if (!token.ordered) return <ul>{items}</ul>;
      const start = typeof token.start === "number" && token.start !== 1 ? token.start : undefined;
      return <ol start={start}>{items}</ol>;
    }
    case "blockquote":
      return <blockquote>{blocks(token.tokens)}</blockquote>;
    case "table": {
      const cell = (c: { tokens: Token[]; align: keyof typeof ALIGN | null }, i: number, Tag: "th" | "td") => (
        <Tag key={i} className={c.align ? ALIGN[c.align] : undefined}>
          {inline(c.tokens)}
        </Tag>
      );
      return (
        <div className="md-table">
          <table>
            <thead>
              <tr>{(token.header as Parameters<typeof cell>[0][]).map((c, i) => cell(c, i, "th"))}</tr>
            </thead>
            <tbody>
              {(token.rows as Parameters<typeof cell>[0][][]).map((row, r) => (
                <tr key={r}>{row.map((c, i) => cell(c, i, "td"))}</tr>
              ))}
            </tbody>
          </table>
        </div>
      );
    }
    case "hr":
      return <hr />;
    case "space":
    case "def":
      return null;
    case "html":
      // Raw HTML is never markup: shown as the text it is.
      return <p className="md-raw">{token.text}</p>;
    case "text":
      // A tight list item's text: inline content without a paragraph.
      return token.tokens ? inline(token.tokens) : <Cited text={decodeEntities(token.text)} />;
    default:
      return "text" in token && typeof token.text === "string" ? <p>{token.text}</p> : null;
  }
}

function listItem(item: Token): ReactNode {
  const tokens: Token[] = (item.type === "list_item" && item.tokens) || [];
  return tokens.map((t, i) =>
    t.type === "checkbox" ? (
      <input key={i} type="checkbox" checked={Boolean(t.checked)} disabled readOnly className="md-task" />
    ) : (
      <Fragment key={i}>{block(t)}</Fragment>
    ),
  );
}

function inline(tokens: readonly Token[] | undefined, inLink = false): ReactNode[] {
  return (tokens ?? []).map((t, i) => <Fragment key={i}>{inlineToken(t, inLink)}</Fragment>);
}

function inlineToken(token: Token, inLink: boolean): ReactNode {
  switch (token.type) {
    case "text":
      if (token.tokens) return inline(token.tokens, inLink);
      return inLink ? decodeEntities(token.text) : <Cited text={decodeEntities(token.text)} />;
    case "escape":
      return token.text;
    case "strong":
      return <strong>{inline(token.tokens, inLink)}</strong>;
    case "em":
      return <em>{inline(token.tokens, inLink)}</em>;
    case "del":
      return <del>{inline(token.tokens, inLink)}</del>;
    case "codespan":
      return <code>{token.text}</code>;
    case "br":
      return <br />;
    case "link": {
      const href = inLink ? null : safeHref(token.href);
      const label = inline(token.tokens, true);
      return href ? <ExternalLink href={href} title={token.title}>{label}</ExternalLink> : <>{label}</>;
    }
    case "image": {
      // Pictures from elsewhere are not loaded (the policy allows this origin only): the
      // alternative text links to it.
      const href = inLink ? null : safeHref(token.href);
      const label = token.text || token.href;
      return href ? <ExternalLink href={href} title={token.title}>{label}</ExternalLink> : label;
    }
    case "html":
      return token.text;
    case "checkbox":
      return null;
    default:
      return "text" in token && typeof token.text === "string" ? token.text : null;
  }
}

function ExternalLink({ href, title, children }: { href: string; title?: string | null; children: ReactNode }) {
  return (
    <a href={href} title={title ?? undefined} target="_blank" rel="noopener noreferrer">
      {children}
    </a>
  );
}

/** Plain text with its citation markers as buttons that open the cited source. */
function Cited({ text }: { text: string }) {
  const { targets, onCite } = useContext(CiteContext);
  if (targets.size === 0 || !text.includes("[")) return <>{text}</>;
  return (
    <>
      {citationSegments(text, (n) => targets.has(n)).map((s, i) =>
        typeof s === "string" ? (
          <Fragment key={i}>{s}</Fragment>
        ) : (
          <CiteButton key={i} marker={s.marker} source={targets.get(s.marker) as SearchResultRef} onCite={onCite} />
        ),
      )}
    </>
  );
}

function CiteButton({ marker, source, onCite }: { marker: number; source: SearchResultRef; onCite?: (s: SearchResultRef) => void }) {
  const { t } = useI18n();
  const label = t("citeSource", { n: marker, page: source.page, file: source.filename || t("citedDocument") });
  return (
    <button
      type="button"
      className="cite"
      data-testid="cite"
      data-marker={marker}
      aria-label={label}
      title={label}
      disabled={!onCite}
      onClick={() => onCite?.(source)}
    >
      {marker}
    </button>
  );
}
