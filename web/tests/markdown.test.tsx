import { create } from "@bufbuild/protobuf";
import { cleanup, fireEvent, render, screen, waitFor } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";
import { citationSegments, citationTargets, safeHref, settle } from "../src/chat/markdown";
import { ChatView } from "../src/components/ChatView";
import { Markdown } from "../src/components/Markdown";
import {
  ChatService,
  CitationSchema,
  MessageRole,
  MessageSchema,
  MessageStatus,
  SearchResultRefSchema,
  type SearchResultRef,
} from "../src/gen/aivera/chat/v1/chat_pb.js";
import { RagService } from "../src/gen/aivera/rag/v1/rag_pb.js";
import { StorageService } from "../src/gen/aivera/storage/v1/storage_pb.js";
import { I18nProvider, type Locale } from "../src/i18n/i18n";
import { apiFor, mount } from "./harness";

afterEach(cleanup);

function draw(text: string, opts: { streaming?: boolean; citations?: Map<number, SearchResultRef>; onCite?: (s: SearchResultRef) => void; locale?: Locale } = {}) {
  return render(
    <I18nProvider initial={opts.locale ?? "ru"}>
      <Markdown text={text} streaming={opts.streaming} citations={opts.citations} onCite={opts.onCite} />
    </I18nProvider>,
  ).container;
}

/** Every attribute of every element under `root`, as `tag attr=value`. */
function attributes(root: Element): string[] {
  return [...root.querySelectorAll("*")].flatMap((el) =>
    [...el.attributes].map((a) => `${el.tagName.toLowerCase()} ${a.name}=${a.value}`),
  );
}

const ref = (page: number, blockId: string, documentId = "doc-1") =>
  create(SearchResultRefSchema, {
    documentId,
    blockId,
    page,
    text: `block ${blockId}`,
    filename: "AR-12.pdf",
    box: { page, normalized: { left: 0.1, top: 0.2, right: 0.5, bottom: 0.3 } },
  });

describe("markdown rendering", () => {
  it("draws paragraphs, emphasis, inline code, headings, lists, quotes, code fences and tables", () => {
    const root = draw(
      [
        "# Title",
        "",
        "Some **bold**, *em*, ~~gone~~ and `x < y`.",
        "",
        "- one",
        "- two",
        "  1. nested",
        "",
        "3. three",
        "4. four",
        "",
        "> quoted",
        "",
        "```python",
        "print('<b>hi</b>')",
        "```",
        "",
        "| a | b |",
        "|:--|--:|",
        "| 1 | 2 |",
        "",
        "- [x] checked",
      ].join("\n"),
    );
    const task = root.querySelector("input[type=checkbox]") as HTMLInputElement;
    expect([task.checked, task.disabled, task.closest("li")?.textContent]).toEqual([true, true, "checked"]);
    expect(root.querySelector("h3")?.textContent).toBe("Title");
    expect(root.querySelector("p strong")?.textContent).toBe("bold");
    expect(root.querySelector("p em")?.textContent).toBe("em");
    expect(root.querySelector("p del")?.textContent).toBe("gone");
    expect(root.querySelector("p code")?.textContent).toBe("x < y");
    expect([...(root.querySelector(".markdown > ul")?.children ?? [])].map((li) => li.firstChild?.textContent)).toEqual(["one", "two"]);
    expect(root.querySelector("ul ol li")?.textContent).toBe("nested");
    expect(root.querySelector(":scope > .markdown > ol")?.getAttribute("start")).toBe("3");
    expect(root.querySelector("blockquote p")?.textContent).toBe("quoted");
    const code = root.querySelector("pre.md-code > code");
    expect(code?.className).toBe("language-python");
    expect(code?.textContent).toBe("print('<b>hi</b>')");
    expect(code?.querySelector("b")).toBeNull();
    expect([...root.querySelectorAll("th")].map((c) => [c.textContent, c.className])).toEqual([
      ["a", "align-left"],
      ["b", "align-right"],
    ]);
    expect(root.querySelector("td")?.textContent).toBe("1");
    // No style attribute anywhere: the page's policy allows none.
    expect(attributes(root).filter((a) => / style=/.test(a))).toEqual([]);
  });

  it("never makes markup of raw HTML: scripts, handlers and tags show as text", () => {
    const hostile = [
      "Hi <script>alert(1)</script> <img src=x onerror=alert(2)> <b onclick=alert(3)>b</b>",
      "",
      '<div onmouseover="alert(4)"><iframe src="https://evil.example"></iframe></div>',
      "",
      "<style>body{display:none}</style>",
      "",
      "x &amp; y &lt;i&gt;",
    ].join("\n");
    const root = draw(hostile);
    for (const tag of ["script", "img", "iframe", "style", "div div", "b", "i"]) {
      expect(root.querySelector(`.markdown ${tag}`), tag).toBeNull();
    }
    expect(attributes(root).filter((a) => / on\w+=/.test(a))).toEqual([]);
    const text = root.textContent ?? "";
    expect(text).toContain("<script>alert(1)</script>");
    expect(text).toContain("<img src=x onerror=alert(2)>");
    expect(text).toContain('<div onmouseover="alert(4)">');
    expect(text).toContain("x & y <i>");
  });

  it("links only to http(s), in a new tab without opener or referrer", () => {
    const root = draw(
      [
        "[ok](https://example.com/a?b=1) and <http://example.org/x>",
        "[js](javascript:alert(1)) [JS](JaVaScRiPt:alert(1)) [enc](java&#09;script:alert(1))",
        "[data](data:text/html,<script>alert(1)</script>) [vb](vbscript:x) [file](file:///etc/passwd) [rel](/aivera.chat.v1.ChatService/DeleteChat) [proto](//evil.example)",
        "![pic](https://example.com/p.png) ![bad](javascript:alert(1))",
      ].join("\n"),
    );
    const links = [...root.querySelectorAll("a")].map((a) => [a.textContent, a.getAttribute("href"), a.getAttribute("target"), a.getAttribute("rel")]);
    expect(links).toEqual([
      ["ok", "https://example.com/a?b=1", "_blank", "noopener noreferrer"],
      ["http://example.org/x", "http://example.org/x", "_blank", "noopener noreferrer"],
      // An image from elsewhere is a link to it, never loaded.
      ["pic", "https://example.com/p.png", "_blank", "noopener noreferrer"],
    ]);
    expect(root.querySelector("img")).toBeNull();
    // Refused links keep their text.
    for (const label of ["js", "JS", "enc", "data", "vb", "file", "rel", "proto", "bad"]) expect(root.textContent).toContain(label);
    expect(safeHref("javascript:alert(1)")).toBeNull();
    expect(safeHref(" \tjavascript:alert(1)")).toBeNull();
    expect(safeHref("java\nscript:alert(1)")).toBeNull();
    expect(safeHref("data:text/html,x")).toBeNull();
    expect(safeHref("https://example.com")).toBe("https://example.com/");
  });
});

describe("streaming", () => {
  it("an unfinished code fence is drawn as code up to the end", () => {
    const root = draw("Here:\n\n```js\nconst a = 1;\nconst b = '<x>'", { streaming: true });
    expect(root.querySelector("pre code")?.textContent).toBe("const a = 1;\nconst b = '<x>'");
    // The first ticks of the closing fence are not shown as code.
    expect(settle("```js\nconst a = 1;\n``")).toBe("```js\nconst a = 1;\n");
    expect(settle("```js\nconst a = 1;\n```")).toBe("```js\nconst a = 1;\n```");
  });

  it("an unfinished list, emphasis, inline code or link draws what it will become", () => {
    const list = draw("Steps:\n\n- first\n- sec", { streaming: true });
    expect([...list.querySelectorAll("li")].map((li) => li.textContent)).toEqual(["first", "sec"]);
    cleanup();
    expect(draw("a **bol", { streaming: true }).querySelector("strong")?.textContent).toBe("bol");
    cleanup();
    expect(draw("run `npm i", { streaming: true }).querySelector("code")?.textContent).toBe("npm i");
    cleanup();
    const link = draw("see [the spec](https://exa", { streaming: true });
    expect(link.textContent).toBe("see the spec");
    // A marker with nothing after it yet waits; a finished answer is drawn as it is.
    expect(settle("a **")).toBe("a ");
    expect(settle("**a `b")).toBe("**a `b`**");
    expect(settle("a **b ")).toBe("a **b** ");
    expect(settle("a *em")).toBe("a *em*");
    expect(settle("**AR-12*")).toBe("**AR-12**");
    expect(settle("2 * 3 = 6")).toBe("2 * 3 = 6");
    expect(settle("| a | b |\n|--")).toBe("");
    expect(settle("see [1]")).toBe("see [1]");
    expect(settle("see [not")).toBe("see ");
    expect(settle("text\n-")).toBe("text\n");
    expect(settle("text\n1.")).toBe("text\n");
    cleanup();
    expect(draw("a **bol").textContent).toBe("a **bol");
  });

  it("the drawn text only grows while a markdown answer streams in", () => {
    const answer = [
      "The drawings **AR-12** show the `facades` [1].",
      "",
      "## Sheets",
      "",
      "- sheet *one*",
      "- sheet ~~two~~ three",
      "",
      "1. first",
      "2. second",
      "",
      "> a quote",
      "",
      "```",
      "PV-1 = 2400",
      "```",
      "",
      "| a | b |",
      "|---|---|",
      "| 1 | 2 |",
      "",
      "See [the spec](https://example.com/spec).",
    ].join("\n");
    const { container, rerender } = render(
      <I18nProvider initial="ru">
        <Markdown text="" streaming />
      </I18nProvider>,
    );
    let previous = 0;
    const shrank: string[] = [];
    // Every cut: a model's tokens may end anywhere.
    for (let end = 1; end <= answer.length; end += 1) {
      const text = answer.slice(0, end);
      rerender(
        <I18nProvider initial="ru">
          <Markdown text={text} streaming />
        </I18nProvider>,
      );
      const len = (container.textContent ?? "").replace(/\s/g, "").length;
      if (len < previous) shrank.push(JSON.stringify(text.slice(-20)));
      previous = len;
    }
    expect(shrank).toEqual([]);
    rerender(
      <I18nProvider initial="ru">
        <Markdown text={answer} />
      </I18nProvider>,
    );
    expect(container.querySelectorAll("li")).toHaveLength(4);
    expect(container.querySelector("pre code")?.textContent).toBe("PV-1 = 2400");
  });

  it("finished blocks keep their elements while the last one grows", () => {
    const { container, rerender } = render(<Markdown text={"First paragraph.\n\nSecond"} streaming />);
    const first = container.querySelector("p");
    rerender(<Markdown text={"First paragraph.\n\nSecond paragraph"} streaming />);
    expect(container.querySelector("p")).toBe(first);
    expect(container.querySelectorAll("p")[1]?.textContent).toBe("Second paragraph");
  });
});

describe("citations", () => {
  const has = (n: number) => n === 1 || n === 3;

  it("cuts the server's marker forms and keeps unknown markers as text", () => {
    expect(citationSegments("A [1] b", has)).toEqual(["A [", { marker: 1 }, "] b"]);
    expect(citationSegments("[1, 3] and [1; 9]", has)).toEqual(["[", { marker: 1 }, ", ", { marker: 3 }, "] and [", { marker: 1 }, "; 9]"]);
    expect(citationSegments("[1][3]", has)).toEqual(["[", { marker: 1 }, "][", { marker: 3 }, "]"]);
    expect(citationSegments("[9] and [2]", has)).toEqual(["[9] and [2]"]);
    // A reference definition is no citation (a link `[1](…)` never reaches here as text).
    expect(citationSegments("[1]: x", has)).toEqual(["[1]: x"]);
  });

  it("maps markers to the message's search results by index, else to the citation's own fields", () => {
    const results = [ref(1, "b1"), ref(2, "b2"), ref(4, "b4")];
    const targets = citationTargets(
      create(MessageSchema, {
        searchResults: results,
        citations: [
          create(CitationSchema, { marker: 3, searchResultIndex: 2, documentId: "doc-1", blockId: "b4", page: 4 }),
          create(CitationSchema, { marker: 1, searchResultIndex: 0, documentId: "doc-1", blockId: "b1", page: 1 }),
          create(CitationSchema, { marker: 7, searchResultIndex: 6, documentId: "doc-2", blockId: "z", page: 9, filename: "B.pdf" }),
        ],
      }),
    );
    expect(targets.get(3)).toBe(results[2]);
    expect(targets.get(1)).toBe(results[0]);
    expect([targets.get(7)?.documentId, targets.get(7)?.page, targets.get(7)?.blockId, targets.get(7)?.filename]).toEqual(["doc-2", 9, "z", "B.pdf"]);
    expect(targets.has(2)).toBe(false);
  });

  it("draws cited markers as labelled buttons that open their source; others, code and links stay text", () => {
    const results = new Map([
      [1, ref(1, "b1")],
      [3, ref(4, "b4")],
    ]);
    const opened: SearchResultRef[] = [];
    const root = draw("Facades [1], vents [1, 3], footnote [2].\n\n`[1]` and [see [3]](https://example.com)", {
      citations: results,
      onCite: (s) => opened.push(s),
    });
    const buttons = screen.getAllByTestId("cite");
    expect(buttons.map((b) => [b.tagName, b.getAttribute("type"), b.dataset.marker, b.textContent])).toEqual([
      ["BUTTON", "button", "1", "1"],
      ["BUTTON", "button", "1", "1"],
      ["BUTTON", "button", "3", "3"],
    ]);
    expect(buttons[2]?.getAttribute("aria-label")).toBe("Открыть источник [3]: AR-12.pdf, стр. 4");
    expect(root.querySelector("p")?.textContent).toBe("Facades [1], vents [1, 3], footnote [2].");
    fireEvent.click(buttons[2] as HTMLElement);
    expect(opened).toEqual([results.get(3)]);
    cleanup();
    draw("Facades [1]", { citations: results, onCite: () => undefined, locale: "en" });
    expect(screen.getByRole("button", { name: "Open source [1]: AR-12.pdf, p. 1" })).toBeTruthy();
  });
});

describe("a citation in a chat", () => {
  it("opens the source panel at the cited block's page with its box", async () => {
    const results = [ref(1, "b1"), ref(2, "b2")];
    const answer = create(MessageSchema, {
      id: "a1",
      chatId: "c1",
      role: MessageRole.ASSISTANT,
      status: MessageStatus.COMPLETE,
      content: "Ventilation:\n\n- PV-1 serves the offices [2]\n- the roof [1]",
      searchResults: results,
      citations: [
        create(CitationSchema, { marker: 2, searchResultIndex: 1, documentId: "doc-1", blockId: "b2", page: 2 }),
        create(CitationSchema, { marker: 1, searchResultIndex: 0, documentId: "doc-1", blockId: "b1", page: 1 }),
      ],
    });
    const asked: { id: string; firstPage: number }[] = [];
    const api = apiFor(({ service }) => {
      service(ChatService, {
        getChat: () => ({ id: "c1", title: "Чертежи" }),
        listMessages: () => ({
          messages: [create(MessageSchema, { id: "u1", chatId: "c1", role: MessageRole.USER, content: "**raw** [2]" }), answer],
        }),
      });
      service(RagService, {
        getDocument: (req) => {
          asked.push({ id: req.id, firstPage: req.firstPage });
          return { pages: [{ number: req.firstPage, imageFileId: `page-${req.firstPage}`, widthPx: 1000, heightPx: 1400 }] };
        },
      });
      service(StorageService, { createDownloadUrl: (r) => ({ url: `/files/${r.id}` }) });
    });
    mount(<ChatView chatId="c1" />, api);
    const cite = await screen.findByRole("button", { name: "Открыть источник [2]: AR-12.pdf, стр. 2" });
    expect(cite.closest("li")?.textContent).toBe("PV-1 serves the offices [2]");
    // What the user wrote is plain text: no markdown, no citation buttons.
    const user = screen.getAllByTestId("message").find((m) => m.dataset.role === "user");
    expect(user?.querySelector(".content")?.textContent).toBe("**raw** [2]");
    expect(user?.querySelector("button, strong")).toBeNull();
    // The sources list names each cited source by its marker.
    expect(screen.getAllByTestId("source").map((c) => c.querySelector(".marker")?.textContent ?? null)).toEqual(["[1]", "[2]"]);
    cite.focus();
    expect(document.activeElement).toBe(cite);
    fireEvent.click(cite);
    const viewer = await screen.findByTestId("source-viewer");
    expect(viewer.getAttribute("aria-label")).toBe("Источник: страница 2");
    await waitFor(() => expect(viewer.querySelector("image")?.getAttribute("href")).toBe("/files/page-2"));
    expect(asked).toEqual([{ id: "doc-1", firstPage: 2 }]);
    const box = screen.getByTestId("source-box");
    const drawn = ["x", "y", "width", "height"].map((a) => Number(box.getAttribute(a)));
    [100, 280, 400, 140].forEach((want, i) => expect(drawn[i]).toBeCloseTo(want, 3));
    expect(viewer.textContent).toContain("block b2");
  });
});
