"""A tiny static-HTML writer: escaped text, tables and images, no JavaScript, no network.

Every piece of text that reaches the page passes through :func:`html.escape`; the
page's only outside references are image files named relative to it.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence

__all__ = ["definition_list", "figure", "heading", "page", "paragraph", "table"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 72rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.25rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; }
figure { display: inline-block; margin: 0.5rem 1rem 1rem 0; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.9rem; color: #444; max-width: 40rem; }
.verdict { font-weight: 600; }
"""


def _text(value: object) -> str:
    return html.escape(str(value), quote=True)


def heading(text: str, level: int = 2) -> str:
    """``<hN>`` with escaped text."""
    return f"<h{level}>{_text(text)}</h{level}>"


def paragraph(text: str, *, css_class: str | None = None) -> str:
    """``<p>`` with escaped text (and an optional class)."""
    attr = f' class="{_text(css_class)}"' if css_class else ""
    return f"<p{attr}>{_text(text)}</p>"


def definition_list(items: Iterable[tuple[str, object]]) -> str:
    """``<dl>`` of (term, description) pairs."""
    rows = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in items)
    return f"<dl>{rows}</dl>"


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = "") -> str:
    """``<table>`` with a header row; every cell escaped."""
    head = "".join(f"<th>{_text(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_text(cell)}</td>" for cell in row) + "</tr>" for row in rows
    )
    cap = f"<caption>{_text(caption)}</caption>" if caption else ""
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(filename: str, alt: str, caption: str) -> str:
    """``<figure>`` of an image file next to the page."""
    return (
        f'<figure><img src="{_text(filename)}" alt="{_text(alt)}">'
        f"<figcaption>{_text(caption)}</figcaption></figure>"
    )


def page(title: str, body: Iterable[str]) -> str:
    """A complete HTML5 document: inline style, the given body fragments."""
    parts = "\n".join(body)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_text(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{heading(title, 1)}\n{parts}\n</body>\n</html>\n"
    )
