"""Small PNG bar charts for the report mail, drawn with zlib and struct only.

Mail clients show PNG attached as ``multipart/related`` parts and referenced with
``cid:`` everywhere (SVG is blocked or ignored by Gmail and Outlook), so the charts are
palette PNGs: a pixel canvas, a 5x7 bitmap font for labels, and the PNG chunks.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence

# palette indexes
WHITE, BLACK, GRID, BLUE, GREEN, AMBER, RED, PURPLE, AXIS = range(9)
PALETTE = (
    (255, 255, 255),
    (33, 37, 41),
    (226, 230, 234),
    (52, 120, 198),  # received
    (46, 160, 67),  # delivered
    (230, 160, 20),  # deferred
    (207, 34, 46),  # bounced
    (130, 80, 223),  # rejected
    (110, 118, 129),
)
SERIES_COLOURS = {
    "received": BLUE,
    "delivered": GREEN,
    "deferred": AMBER,
    "bounced": RED,
    "rejected": PURPLE,
}

_GLYPHS = {  # 5x7, rows top to bottom, '#' = ink
    "0": ".###.#...##..###.#.###..##...#.###.",
    "1": "..#...##....#....#....#....#...###.",
    "2": ".###.#...#....#...#...#...#...#####",
    "3": "#####...#...#.....#.....##...#.###.",
    "4": "...#...##..#.#.#..#.#####...#....#.",
    "5": "######....####.....#....##...#.###.",
    "6": "..##..#...#....####.#...##...#.###.",
    "7": "#####....#...#...#...#....#....#...",
    "8": ".###.#...##...#.###.#...##...#.###.",
    "9": ".###.#...##...#.####....#...#..##..",
    "a": "...........###.....#.#####...#.####",
    "b": "#....#....#.##.##..##...##...#####.",
    "c": "...........###.#....#....#...#.###.",
    "d": "....#....#.##.##..###...##...#.####",
    "e": "...........###.#...#######.....###.",
    "f": "..##..#..#.#...###...#....#....#...",
    "g": "...........#####...#.####....#.###.",
    "h": "#....#....#.##.##..##...##...##...#",
    "i": "..#........##....#....#....#...###.",
    "j": "...#........##....#....#.#..#..##..",
    "k": "#....#....#..#.#.#..##...#.#..#..#.",
    "l": ".##....#....#....#....#....#...###.",
    "m": "..........##.#.#.#.##.#.##...##...#",
    "n": "..........#.##.##..##...##...##...#",
    "o": "...........###.#...##...##...#.###.",
    "p": "..........####.#...#####.#....#....",
    "q": "...........##.##..##.####....#....#",
    "r": "..........#.##.##..##....#....#....",
    "s": "...........###.#.....###.....#####.",
    "t": ".#....#...###...#....#....#..#..##.",
    "u": "..........#...##...##...##..##.##.#",
    "v": "..........#...##...##...#.#.#...#..",
    "w": "..........#...##...##.#.##.#.#.#.#.",
    "x": "..........#...#.#.#...#...#.#.#...#",
    "y": "..........#...##...#.####....#.###.",
    "z": "..........#####...#...#...#...#####",
    ".": "..........................##...##..",
    "-": "...............#####...............",
    "_": "..............................#####",
    ":": "......##...##........##...##.......",
    "/": ".........#...#...#...#...#.........",
    "%": "##...##..#...#...#...#...#..##...##",
    "@": ".###.#...##.####.#.##.####.....###.",
    "(": "...#...#...#....#....#.....#.....#.",
    ")": ".#.....#.....#....#....#...#...#...",
    " ": "...................................",
    "?": ".###.#...#....#...#...#.........#..",
}
FONT: dict[str, tuple[int, ...]] = {}
for _ch, _bits in _GLYPHS.items():
    FONT[_ch] = tuple(
        int(_bits[r : r + 5].replace("#", "1").replace(".", "0"), 2) for r in range(0, 35, 5)
    )
GLYPH_W, GLYPH_H = 6, 8  # with spacing


class Canvas:
    def __init__(self, width: int, height: int, background: int = WHITE) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray([background]) * (width * height)

    def rect(self, x: int, y: int, w: int, h: int, colour: int) -> None:
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self.width, x + w), min(self.height, y + h)
        if x1 <= x0 or y1 <= y0:
            return
        row = bytes([colour]) * (x1 - x0)
        for yy in range(y0, y1):
            start = yy * self.width + x0
            self.pixels[start : start + len(row)] = row

    def text(self, x: int, y: int, text: str, colour: int = BLACK) -> int:
        """Draw ``text`` with its top-left corner at (x, y); return the width used."""
        for i, ch in enumerate(text):
            rows = FONT.get(ch) or FONT.get(ch.lower()) or FONT["?"]
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (0x10 >> c):
                        px, py = x + i * GLYPH_W + c, y + r
                        if 0 <= px < self.width and 0 <= py < self.height:
                            self.pixels[py * self.width + px] = colour
        return len(text) * GLYPH_W

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[y * self.width : (y + 1) * self.width])
            for y in range(self.height)
        )
        return b"".join(
            [
                b"\x89PNG\r\n\x1a\n",
                _chunk(b"IHDR", struct.pack(">IIBBBBB", self.width, self.height, 8, 3, 0, 0, 0)),
                _chunk(b"PLTE", b"".join(bytes(c) for c in PALETTE)),
                _chunk(b"IDAT", zlib.compress(raw, 9)),
                _chunk(b"IEND", b""),
            ]
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def short(value: float) -> str:
    """12345 -> 12.3k; keeps axis labels narrow."""
    if value >= 10_000_000:
        return f"{value / 1_000_000:.0f}m"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.1f}m"
    if value >= 10_000:
        return f"{value / 1000:.0f}k"
    if value >= 1000:
        return f"{value / 1000:.1f}k"
    return f"{value:.0f}"


def _nice_max(value: float) -> int:
    """A round axis maximum at or above value (1, 2, 5 x 10^n)."""
    if value <= 0:
        return 1
    step = 1
    while True:
        for m in (1, 2, 5):
            if m * step >= value:
                return m * step
        step *= 10


def hourly_chart(hourly: Sequence[dict[str, int]], series: Sequence[str]) -> bytes:
    """Grouped bars per hour, one colour per series, with a legend and axis labels."""
    bar, gap = 4, 6
    group = bar * len(series) + gap
    left, top, bottom = 44, 28, 22
    plot_h = 200
    width = left + 24 * group + 10
    height = top + plot_h + bottom
    cv = Canvas(width, height)
    peak = _nice_max(max((row[s] for row in hourly for s in series), default=0))
    for i in range(5):  # grid lines and their values
        y = top + plot_h - plot_h * i // 4
        cv.rect(left, y, 24 * group, 1, GRID)
        label = short(peak * i / 4)
        cv.text(left - 4 - len(label) * GLYPH_W, y - 3, label, AXIS)
    x = 4
    for name in series:  # legend
        cv.rect(x, 6, 8, 8, SERIES_COLOURS[name])
        x += 12 + cv.text(x + 12, 7, name) + 10
    for h, row in enumerate(hourly):
        gx = left + h * group + gap // 2
        for k, name in enumerate(series):
            bh = round(plot_h * row[name] / peak)
            cv.rect(gx + k * bar, top + plot_h - bh, bar, bh, SERIES_COLOURS[name])
        label = str(h)
        cv.text(gx + (group - gap - len(label) * GLYPH_W) // 2, top + plot_h + 6, label, AXIS)
    cv.rect(left, top + plot_h, 24 * group, 1, AXIS)
    return cv.png()


def domains_chart(rows: Sequence[dict[str, object]], limit: int = 12) -> bytes:
    """Stacked horizontal bars per destination: delivered, deferred, bounced."""
    parts = (("delivered", GREEN), ("deferred", AMBER), ("bounced", RED))
    shown = list(rows[:limit])
    names = [str(r["domain"])[:28] for r in shown]
    label_w = max((len(n) for n in names), default=8) * GLYPH_W + 8
    bar_w, row_h, top = 420, 16, 24
    width = label_w + bar_w + 70
    height = top + row_h * max(1, len(shown)) + 8
    cv = Canvas(width, height)
    x = 4
    for name, colour in parts:
        cv.rect(x, 6, 8, 8, colour)
        x += 12 + cv.text(x + 12, 7, name) + 10
    totals = [sum(int(r[p]) for p, _ in parts) for r in shown]  # type: ignore[call-overload]
    peak = max(totals, default=0) or 1
    for i, (row, name, total) in enumerate(zip(shown, names, totals, strict=True)):
        y = top + i * row_h
        cv.text(label_w - 4 - len(name) * GLYPH_W, y + 4, name)
        x = label_w
        for part, colour in parts:
            w = round(bar_w * int(row[part]) / peak)  # type: ignore[call-overload]
            cv.rect(x, y + 2, w, row_h - 4, colour)
            x += w
        cv.text(x + 4, y + 4, short(total), AXIS)
    return cv.png()
