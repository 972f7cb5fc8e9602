"""Documents longer than the model's window, cut into chunks instead of truncated.

A chunk is a character span `[start, end)` of its document's text, sized in the model's
own tokens (`capacity`, by default the window less its special tokens) and cut at the
best boundary that fits: paragraphs, then sentences, then words (semantic-text-splitter,
in Rust, over the model's tokenizer with its truncation turned off: as loaded, a
model's tokenizer.json truncates at the window, and a splitter sized with it would see
every document as one chunk). A document that fits is one chunk, the whole text.

Left-over shapes are handled here: a last chunk of a few tokens merges into the one
before it when the two fit together; a chunk far longer in characters than its tokens
suggest (a script the tokenizer maps to a few unknown tokens) is cut into character
windows; a document that needs more than `max_chunks` chunks is quarantined with the
reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
from semantic_text_splitter import TextSplitter

from embedlib.embed.corpus.read import QuarantineRecord
from embedlib.embed.documents import CHUNK, CHUNK_COLUMNS, CHUNK_END, CHUNK_START, Documents
from embedlib.options import EmbedOptions

MIN_CHUNK_TOKENS = 8  # a last chunk shorter than this merges into the one before
MAX_CHARS_PER_TOKEN = 16  # beyond this, a chunk's text is cut into character windows


@dataclass(frozen=True)
class ChunkOptions:
    """How the embed job chunks: `tokens` per chunk (None: the model's window less its
    special tokens), `overlap` tokens shared by neighbours, at most `max_chunks` per
    document."""

    tokens: int | None = None
    overlap: int = 0
    max_chunks: int = 10_000


@dataclass(frozen=True)
class Span:
    start: int
    end: int


class Chunker:
    """Cuts texts into spans of at most `capacity` tokens (with `overlap` tokens shared
    by neighbours), counted with `tokenizer` (a `tokenizers.Tokenizer`)."""

    def __init__(self, tokenizer: Any, *, capacity: int, overlap: int, max_chunks: int) -> None:
        if capacity < MIN_CHUNK_TOKENS:
            raise ValueError(f"chunk_tokens must be at least {MIN_CHUNK_TOKENS}, got {capacity}")
        if not 0 <= overlap < capacity:
            raise ValueError(f"chunk_overlap must be in [0, {capacity}), got {overlap}")
        tokenizer.no_truncation()
        tokenizer.no_padding()
        self.tokenizer = tokenizer
        self.capacity, self.overlap, self.max_chunks = capacity, overlap, max_chunks
        self.splitter = TextSplitter.from_huggingface_tokenizer(
            tokenizer, capacity, overlap=overlap, trim=True
        )

    def tokens(self, texts: list[str]) -> list[int]:
        """Token counts of `texts`, without special tokens."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def split(self, texts: list[str]) -> list[list[Span]]:
        """The chunks of each text. The texts longer than `capacity` are split together,
        in parallel (semantic-text-splitter's threads)."""
        out = [[Span(0, len(t))] for t in texts]
        long = [i for i, n in enumerate(self.tokens(texts)) if n > self.capacity]
        cut = self.splitter.chunk_all_indices([texts[i] for i in long]) if long else []
        for i, chunks in zip(long, cut, strict=True):
            out[i] = [Span(a, a + len(c)) for a, c in chunks] or out[i]
        return [self._tidy(text, spans) for text, spans in zip(texts, out, strict=True)]

    def _tidy(self, text: str, spans: list[Span]) -> list[Span]:
        """Character windows where tokens are too few for the text; a last chunk of a few
        tokens merged into the one before it, when the two fit together."""
        spans = self._char_windows(spans)
        if len(spans) > 1:
            last, before = spans[-1], spans[-2]
            small, merged = self.tokens(
                [text[last.start : last.end], text[before.start : last.end]]
            )
            if small < MIN_CHUNK_TOKENS and merged <= self.capacity:
                spans[-2:] = [Span(before.start, last.end)]
        return spans

    def _char_windows(self, spans: list[Span]) -> list[Span]:
        """Spans whose text is far longer than their tokens say, cut into character
        windows of about `capacity` tokens' worth of characters."""
        width = self.capacity * 4
        out: list[Span] = []
        for s in spans:
            if s.end - s.start <= self.capacity * MAX_CHARS_PER_TOKEN:
                out.append(s)
                continue
            out.extend(Span(a, min(a + width, s.end)) for a in range(s.start, s.end, width))
        return out


def chunk_documents(docs: Documents, chunker: Chunker, text_column: str) -> Documents:
    """One row per chunk: the document's id, content hash and passthrough columns, the
    chunk's text in the text column, and its number and character span. A document that
    needs too many chunks is quarantined with the reason."""
    owner: list[int] = []
    numbers: list[int] = []
    starts: list[int] = []
    ends: list[int] = []
    texts: list[str] = []
    quarantined = list(docs.quarantined)
    for i, (text, spans) in enumerate(zip(docs.texts, chunker.split(docs.texts), strict=True)):
        if len(spans) > chunker.max_chunks:
            quarantined.append(
                QuarantineRecord(
                    file=docs.relpath, row=int(docs.rows[i]), reason="too_many_chunks",
                    detail=f"{len(spans)} chunks of {chunker.capacity} tokens, over "
                    f"--max-chunks {chunker.max_chunks}",
                    raw=text[:200],
                )
            )  # fmt: skip
            continue
        for c, s in enumerate(spans):
            owner.append(i)
            numbers.append(c)
            starts.append(s.start)
            ends.append(s.end)
            texts.append(text[s.start : s.end])
    take = pa.array(owner, pa.int64())
    rows = docs.passthrough.take(take)
    if text_column in rows.column_names:
        at = rows.column_names.index(text_column)
        rows = rows.set_column(at, text_column, pa.array(texts, pa.string()))
    for name, values, kind in ((CHUNK, numbers, pa.int32()), (CHUNK_START, starts, pa.int64()),
                               (CHUNK_END, ends, pa.int64())):  # fmt: skip
        rows = rows.append_column(name, pa.array(values, kind))
    return replace(
        docs,
        rows=docs.rows[owner] if owner else docs.rows[:0],
        ids=[docs.ids[i] for i in owner],
        texts=texts,
        hashes=[docs.hashes[i] for i in owner],
        passthrough=rows,
        quarantined=quarantined,
    )


def chunk_options(options: EmbedOptions) -> ChunkOptions | None:
    """How the job chunks its texts; None: it truncates them (or embeds images)."""
    if options.chunking == "none" or options.image_column is not None:
        return None
    return ChunkOptions(options.chunk_tokens, options.chunk_overlap, options.max_chunks)


def chunking_record(options: EmbedOptions) -> dict[str, Any] | None:
    """The manifest's record of the chunking (None: texts truncated)."""
    if options.chunking == "none" or options.image_column is not None:
        return None
    return {"chunk_tokens": options.chunk_tokens, "overlap": options.chunk_overlap,
            "max_chunks": options.max_chunks, "columns": list(CHUNK_COLUMNS)}  # fmt: skip
