"""A card's picture when it has none: its initials on a colour derived from its name (same name, same colour)."""

from __future__ import annotations

import colorsys
import hashlib
import io

from charbot.cards.png import SIGNATURE

SIZE = 400


def initials(name: str) -> str:
    words = [w for w in name.replace("-", " ").split() if w[:1].isalnum()]
    return "".join(w[0] for w in words[:2]).upper() or "?"


def avatar_png(name: str, size: int = SIZE) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    hue = int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:2], "big") / 65536
    colour = tuple(round(c * 255) for c in colorsys.hsv_to_rgb(hue, 0.55, 0.75))
    image = Image.new("RGB", (size, size), colour)
    font = ImageFont.load_default(size=size * 2 // 5)
    ImageDraw.Draw(image).text((size / 2, size / 2), initials(name), font=font, anchor="mm", fill=(255, 255, 255))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def as_png(data: bytes) -> bytes | None:
    """`data` as PNG bytes (other image formats converted), or None when it is not an image Pillow reads."""
    if data.startswith(SIGNATURE):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None
