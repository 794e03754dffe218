"""Follow-up questions: what a turn searches for when the request leans on the history
(«а на втором листе?»). With a Gemini key the flash model rewrites the request into a
standalone search query from the recent history; without one (the local model, clone
chats) a local heuristic joins the request to the previous question, turning ordinal
page references into numbers («на втором листе» → «лист 2») and dropping the previous
question's page reference when the request names its own."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aivera.chat.v1 import chat_pb2
from services.chat.providers.base import Content, LlmRequest, Part, Provider, ProviderError
from services.chat.providers.observed import model_call
from services.common.errors import Reason

if TYPE_CHECKING:  # turns imports the store's converters, which import the tools
    from services.chat.turns import Turn

log = logging.getLogger("aivera.chat.followup")

REWRITE_MESSAGES = 6  # recent messages the rewrite sees
REWRITE_CHARS = 600  # of each
MAX_QUERY = 500
REWRITE_SYSTEM = (
    "Ты переформулируешь последний вопрос пользователя в самостоятельный поисковый запрос "
    "по документам, используя историю диалога: подставь то, на что вопрос ссылается "
    "(документ, раздел, лист, страницу, элемент, величину). Номера листов и страниц пиши "
    "цифрами («лист 2»). Ответь только запросом, одной строкой, без пояснений."
)

_ORDINALS = {
    "перв": 1,
    "втор": 2,
    "трет": 3,
    "четв": 4,
    "пят": 5,
    "шест": 6,
    "седьм": 7,
    "восьм": 8,
    "девят": 9,
    "десят": 10,
    "first": 1,
    "second": 2,
    "third": 3,
    "fourth": 4,
    "fifth": 5,
}
_PAGE_WORD = r"(?P<word>лист|страниц|стр|page|sheet)"
# «на втором листе», «второй страницы», «second page»; «лист 2», «стр. 3», «page 4».
_PAGE_REF = re.compile(
    r"(?:\b(?:на|в|во|on|at)\s+)?"
    r"(?:\b(?P<ord>перв|втор|трет|четв[её]рт|пят|шест|седьм|восьм|девят|десят|first|second"
    r"|third|fourth|fifth)\w*\s+(?P<oword>лист|страниц|page|sheet)\w*"
    rf"|\b{_PAGE_WORD}\w*\.?\s*(?:№\s*)?(?P<num>\d+))",
    re.IGNORECASE,
)
_CONNECTORS = ("а ", "и ", "но ", "ещё", "еще", "также", "тогда", "а что", "and ", "what about")
_ANAPHORA = re.compile(
    r"\b(?:он|она|оно|они|его|её|ее|их|ему|ей|там|тут|этот|эта|это|этом|этой|эти|этих"
    r"|тот|та|те|том|той|it|its|there|that|those|them)\b",
    re.IGNORECASE,
)
SHORT_WORDS = 8  # a request this short is read as leaning on the history


def _page_number(match: re.Match[str]) -> tuple[str, int]:
    word = (match.group("oword") or match.group("word")).lower()
    if match.group("num"):
        number = int(match.group("num"))
    else:
        stem = match.group("ord").lower()
        number = next(n for key, n in _ORDINALS.items() if stem.startswith(key[:4]))
    noun = "страница" if word.startswith("стр") else "лист" if word == "лист" else word
    return noun, number


def normalize_pages(text: str) -> str:
    """Page references as «<noun> <number>»."""
    return _PAGE_REF.sub(lambda m: "{} {}".format(*_page_number(m)), text)


def has_page_ref(text: str) -> bool:
    return _PAGE_REF.search(text) is not None


def is_followup(text: str) -> bool:
    """Whether a request reads as leaning on the previous one."""
    lowered = text.strip().lower()
    return (
        len(lowered.split()) <= SHORT_WORDS
        or lowered.startswith(_CONNECTORS)
        or _ANAPHORA.search(lowered) is not None
    )


def previous_question(history: Sequence[tuple[int, str]]) -> str | None:
    for role, content in reversed(history):
        if role == chat_pb2.MESSAGE_ROLE_USER and content.strip():
            return content
    return None


def heuristic_query(history: Sequence[tuple[int, str]], text: str) -> str:
    """The search query without a model: a follow-up joined to the previous question."""
    previous = previous_question(history)
    if previous is None or not is_followup(text):
        return normalize_pages(text)
    current = normalize_pages(text).strip()
    # The follow-up's own page replaces the one the previous question named.
    own_page = has_page_ref(text)
    previous = _PAGE_REF.sub(" ", previous) if own_page else normalize_pages(previous)
    return re.sub(r"\s+", " ", f"{current} {previous}").strip()[:MAX_QUERY]


def transcript(history: Sequence[tuple[int, str]], text: str) -> str:
    lines = ["История диалога:"]
    for role, content in list(history)[-REWRITE_MESSAGES:]:
        who = "Пользователь" if role == chat_pb2.MESSAGE_ROLE_USER else "Ассистент"
        lines.append(f"{who}: {content.strip()[:REWRITE_CHARS]}")
    lines.append(f"Последний вопрос пользователя: {text}")
    return "\n".join(lines)


async def search_query(
    turn: Turn,
    provider: Provider | None,
    *,
    model: str,
    history: Sequence[tuple[int, str]],
    text: str,
) -> str:
    """The query a turn searches with: for a first question `text` with its page
    references as numbers; for one with history, the flash model's rewrite (`provider`,
    the user's key) or, without a provider or when the rewrite fails or is empty, the
    heuristic. A rejected key is raised: the answer would fail on it too."""
    if previous_question(history) is None:
        return normalize_pages(text)
    if provider is None:
        return heuristic_query(history, text)
    request = LlmRequest(
        model=model,
        system_instruction=REWRITE_SYSTEM,
        contents=[Content("user", [Part(text=transcript(history, text))])],
        max_output_tokens=200,
    )
    pieces: list[str] = []
    turn.model_used(model)
    async with turn.phase(chat_pb2.PHASE_FLASH_CALL, "Уточнение вопроса по истории чата"):
        try:
            usage = None
            with model_call(provider.name, model) as observed:
                async for chunk in provider.stream(request):
                    pieces.append(chunk.text)
                    if chunk.usage is not None:
                        usage = chunk.usage
                observed.usage = usage
            if usage is not None:
                turn.usage.add(usage)
        except ProviderError as exc:
            if exc.reason == Reason.PROVIDER_KEY_INVALID:
                raise
            log.info("query rewrite failed (%s); using the heuristic", exc.reason_name)
            return heuristic_query(history, text)
    query = " ".join("".join(pieces).split()).strip().strip("«»\"'")
    if not query:
        return heuristic_query(history, text)
    return query[:MAX_QUERY]
