"""Text out of documents (txt, md, html, pdf) and into overlapping chunks of about `size` characters."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

SUPPORTED = {".txt": "text", ".md": "text", ".markdown": "text", ".html": "html", ".htm": "html", ".pdf": "pdf"}


class NotIndexed(ValueError):
    """A file over one of the ingest's bounds: reported as is and skipped."""


@dataclass
class Section:
    """A stretch of a document with where it is (e.g. 'page 3' of a PDF, or None for the whole file)."""

    text: str
    location: str | None = None


class _TextOfHTML(HTMLParser):
    SKIP = {"script", "style", "noscript", "template", "svg"}
    BLOCKS = {"p", "div", "section", "article", "li", "ul", "ol", "tr", "table", "br", "hr", "pre", "blockquote",
              "h1", "h2", "h3", "h4", "h5", "h6", "title", "header", "footer", "main", "dd", "dt"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(markup: str) -> str:
    parser = _TextOfHTML()
    parser.feed(markup)
    parser.close()
    return "".join(parser.parts)


def read_sections(path: Path, max_pages: int, before_page: Callable[[], None]) -> list[Section]:
    """The file's text; a PDF page by page, at most max_pages of them (NotIndexed beyond), calling
    before_page() ahead of each page so that the caller can stop a long PDF between pages (pypdf cannot be
    interrupted inside one)."""
    kind = SUPPORTED.get(path.suffix.lower())
    if kind == "text":
        return [Section(path.read_text(encoding="utf-8", errors="replace"))]
    if kind == "html":
        return [Section(html_text(path.read_text(encoding="utf-8", errors="replace")))]
    if kind == "pdf":
        from pypdf import PdfReader

        reader = PdfReader(str(path))
        if len(reader.pages) > max_pages:
            raise NotIndexed(f"{len(reader.pages)} pages, more than max_pages ({max_pages}); not indexed")
        sections = []
        for number, page in enumerate(reader.pages, 1):
            before_page()
            sections.append(Section(page.extract_text() or "", f"page {number}"))
        return sections
    raise ValueError(f"unsupported file type {path.suffix!r}")


def _pieces(paragraph: str, size: int) -> list[str]:
    """A paragraph cut at sentence ends, then at spaces, into pieces of at most `size` characters."""
    if len(paragraph) <= size:
        return [paragraph]
    pieces: list[str] = []
    for sentence in re.split(r"(?<=[.!?])\s+", paragraph):
        while len(sentence) > size:
            cut = sentence.rfind(" ", 0, size)
            cut = cut if cut > size // 2 else size
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return pieces


def _tail(text: str, overlap: int) -> str:
    if overlap <= 0 or len(text) <= overlap:
        return "" if overlap <= 0 else text
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1:] if 0 <= space < len(tail) - 1 else tail


def chunk_text(text: str, size: int, overlap: int) -> list[str]:
    """Paragraphs packed into chunks of at most about `size` characters; each chunk starts with the last
    `overlap` characters of the previous one so a sentence cut at a boundary is still found whole."""
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    pieces = [piece for p in paragraphs if p for piece in _pieces(p, size)]
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > size:
            chunks.append(current)
            carried = _tail(current, overlap)
            current = f"{carried} {piece}".strip() if carried and len(carried) + 1 + len(piece) <= size else piece
        else:
            current = f"{current} {piece}".strip()
    if current:
        chunks.append(current)
    return chunks
