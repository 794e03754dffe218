"""Prompt composition (plan 003 §5.4): pure functions, fixed order."""

from __future__ import annotations

from services.chat import prompts
from services.chat.clients import Block, PageInfo

SYSTEM = {
    "llm_system": "LLM",
    "json_annotation": "JSON",
    "html_ocr": "OCR",
    "flash_extractor": "FLASH",
}
BLOCK = Block(
    "b1",
    "d1",
    2,
    "table",
    "Таблица 1",
    {"normalized": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}},
)


def test_answer_system_instruction_order() -> None:
    assert prompts.answer_system_instruction(SYSTEM) == "LLM\n\nJSON\n\nOCR"
    assert prompts.answer_system_instruction(SYSTEM, "РОЛЬ") == "РОЛЬ\n\nLLM\n\nJSON\n\nOCR"
    assert (
        prompts.answer_system_instruction(SYSTEM, "РОЛЬ", persona="ПЕРСОНА")
        == "ПЕРСОНА\n\nРОЛЬ\n\nLLM\n\nJSON\n\nOCR"
    )
    # Empty parts leave no blank gaps; flash_extractor never enters the answer prompt.
    assert prompts.answer_system_instruction({**SYSTEM, "json_annotation": " "}, "") == "LLM\n\nOCR"
    assert prompts.flash_system_instruction(SYSTEM) == "FLASH"


def test_simple_user_content_request_then_context_then_images() -> None:
    from services.chat.providers.base import Part

    content = prompts.simple_user_content(
        "Вопрос?", [BLOCK], ["Файл «x.pdf» не удалось прочитать."], [Part(image=b"png")]
    )
    assert content.role == "user"
    text = content.parts[0].text or ""
    assert text.index("Вопрос?") < text.index('"id": "b1"') < text.index("x.pdf")
    assert '"box": {"left": 0.1, "top": 0.2, "right": 0.3, "bottom": 0.4}' in text
    assert content.parts[1].image == b"png"


def test_flash_user_content_document_catalogue_request() -> None:
    content = prompts.flash_user_content(
        "Вопрос?", [BLOCK], [("d1", "a.pdf", PageInfo(2, "img", 800, 1100))]
    )
    text = content.parts[0].text or ""
    assert text.index('"id": "b1"') < text.index("Каталог изображений") < text.index("Вопрос?")
    assert '"width": 800' in text


def test_pro_user_content_blocks_images_request() -> None:
    from services.chat.providers.base import Part

    content = prompts.pro_user_content("Вопрос?", [BLOCK], "факт: B25", [Part(image=b"z")])
    assert [p.image is not None for p in content.parts] == [False, True, False]
    first = content.parts[0].text or ""
    assert first.index('"id": "b1"') < first.index("факт: B25")
    assert "Вопрос?" in (content.parts[-1].text or "")


def test_history_roles() -> None:
    contents = prompts.history_contents([(1, "вопрос"), (2, "ответ"), (2, "")])
    assert [(c.role, c.parts[0].text) for c in contents] == [
        ("user", "вопрос"),
        ("model", "ответ"),
    ]
