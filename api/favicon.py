"""The site icon, drawn in code: a filled circle in the pages' accent colour, as a 32x32 ICO
(one 32-bit BMP image; Microsoft ICO format, BITMAPINFOHEADER with a doubled height for the
AND mask). Browsers ask `/favicon.ico` of every page; a 404 there is noise in every log."""

from __future__ import annotations

import struct

SIZE = 32
ACCENT = (0x0B, 0x57, 0xD0)  # --accent in call.css and admin.css


def _pixels() -> bytes:
    """BGRA rows, bottom-up (BMP order): the disc opaque, anti-aliased at its edge."""
    rows = []
    centre, radius = (SIZE - 1) / 2, SIZE / 2 - 1
    for y in reversed(range(SIZE)):
        row = bytearray()
        for x in range(SIZE):
            distance = ((x - centre) ** 2 + (y - centre) ** 2) ** 0.5
            alpha = max(0.0, min(1.0, radius - distance + 0.5))
            red, green, blue = ACCENT
            if distance < radius * 0.35:  # a white dot: a camera's lens
                red = green = blue = 0xFF
            row += bytes((blue, green, red, round(alpha * 255)))
        rows.append(bytes(row))
    return b"".join(rows)


def favicon_ico() -> bytes:
    pixels = _pixels()
    mask = bytes(SIZE * 4)  # 1 bit per pixel, rows padded to 32 bits; alpha is used instead
    header = struct.pack("<IiiHHIIiiII", 40, SIZE, SIZE * 2, 1, 32, 0, len(pixels) + len(mask),
                         0, 0, 0, 0)
    image = header + pixels + mask
    directory = struct.pack("<HHH", 0, 1, 1) + struct.pack(
        "<BBBBHHII", SIZE, SIZE, 0, 0, 1, 32, len(image), 6 + 16
    )
    return directory + image


FAVICON = favicon_ico()
