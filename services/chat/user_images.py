"""Images a user sends with a message (a photo of a drawing): storage files checked by
their bytes (JPEG, PNG or WebP, whatever their name or content type says) and against
the pixel budget from the header alone (Pillow's lazy open reads no pixel data), then
shown to Gemini as image parts and stored as the user message's images."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from aivera.chat.v1 import chat_pb2
from services.chat.clients import Files
from services.chat.providers.base import Part
from services.chat.store import ImageRow
from services.common.errors import InvalidArgument, Reason
from services.common.protoutil import parse_uuid

# Leading bytes of the formats a model takes, and the format name Pillow gives them.
_FORMATS = {"image/jpeg": "JPEG", "image/png": "PNG", "image/webp": "WEBP"}
FIELD = "image_file_ids"


@dataclass(frozen=True, slots=True)
class UserImage:
    file_id: str
    filename: str
    data: bytes
    mime_type: str
    width: int
    height: int

    def row(self) -> ImageRow:
        """As stored with the user message."""
        return ImageRow(
            kind=chat_pb2.IMAGE_KIND_USER,
            file_id=self.file_id,
            document_id="",
            page=0,
            box=None,
            scale=1.0,
            width=self.width,
            height=self.height,
            size_bytes=len(self.data),
            mime_type=self.mime_type,
            description=self.filename,
        )

    def part(self) -> Part:
        return Part(image=self.data, mime_type=self.mime_type)


def sniff(data: bytes) -> str | None:
    """The MIME type the bytes are, by their signature; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


def inspect(data: bytes, *, max_pixels: int, max_bytes: int) -> tuple[str, int, int]:
    """(MIME type, width, height) of an image within the budget; INVALID_ARGUMENT with
    UNSUPPORTED_FORMAT or IMAGE_TOO_LARGE otherwise. Decodes no pixels."""
    mime = sniff(data)
    if mime is None:
        raise InvalidArgument(
            "an image must be JPEG, PNG or WebP", field=FIELD, reason=Reason.UNSUPPORTED_FORMAT
        )
    if len(data) > max_bytes:
        raise _too_large(f"the image is larger than {max_bytes} bytes", "bytes", max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # lazy: the header only
                width, height = image.size
                fmt = image.format
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large(
            f"the image has more than {max_pixels} pixels", "pixels", max_pixels
        ) from None
    except (OSError, SyntaxError, ValueError):
        raise InvalidArgument(
            "the image cannot be read", field=FIELD, reason=Reason.UNSUPPORTED_FORMAT
        ) from None
    if fmt != _FORMATS[mime]:
        raise InvalidArgument(
            "the image cannot be read", field=FIELD, reason=Reason.UNSUPPORTED_FORMAT
        )
    if width * height > max_pixels:
        raise _too_large(f"the image has more than {max_pixels} pixels", "pixels", max_pixels)
    return mime, width, height


def _too_large(message: str, limit: str, value: int) -> InvalidArgument:
    return InvalidArgument(
        message,
        field=FIELD,
        reason=Reason.IMAGE_TOO_LARGE,
        metadata={"limit": limit, "value": str(value)},
    )


async def load(
    files: Files,
    raw_ids: Sequence[str],
    *,
    max_images: int,
    max_pixels: int,
    max_bytes: int,
) -> list[UserImage]:
    """The caller's image files, checked (NOT_FOUND for one that is not the caller's)."""
    ids = list(dict.fromkeys(str(parse_uuid(raw, field=FIELD)) for raw in raw_ids))
    if len(ids) > max_images:
        raise InvalidArgument(
            f"at most {max_images} images per message",
            field=FIELD,
            metadata={"limit": "images", "value": str(max_images)},
        )
    out: list[UserImage] = []
    for file_id in ids:
        filename, _ = await files.file_info(file_id)
        data = await files.download(file_id)
        mime, width, height = inspect(data, max_pixels=max_pixels, max_bytes=max_bytes)
        out.append(UserImage(file_id, filename, data, mime, width, height))
    return out
