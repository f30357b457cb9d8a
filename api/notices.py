"""Notices as a person reads them: the notice's Markdown rendered to safe HTML.

The Markdown is parsed by markdown-it-py (CommonMark) with raw HTML disabled, so a `<tag>` in
a notice shows as text; the result then passes the nh3 sanitizer with a short allowlist of
tags and attributes, so nothing an operator (or an attacker with the admin key) publishes can
run script on the call page. Headings move down three levels: a notice's `#` title sits under
the page's own h1-h3.
"""

from __future__ import annotations

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

HEADING_SHIFT = 3
TAGS = {"p", "br", "strong", "em", "ul", "ol", "li", "a", "code", "blockquote", "h4", "h5", "h6"}
ATTRIBUTES = {"a": {"href", "title"}}


def _parser() -> MarkdownIt:
    parser = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    return parser.disable("image")  # a notice loads nothing (the page's CSP would refuse it)


_PARSER = _parser()


@lru_cache(maxsize=256)
def notice_html(markdown: str) -> str:
    """Safe HTML for one notice text (cached: notices are few and never change)."""
    tokens = _PARSER.parse(markdown)
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            level = min(6, int(token.tag[1]) + HEADING_SHIFT)
            token.tag = f"h{level}"
    html = _PARSER.renderer.render(tokens, _PARSER.options, {})
    return nh3.clean(
        html,
        tags=TAGS,
        attributes=ATTRIBUTES,
        url_schemes={"https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )
