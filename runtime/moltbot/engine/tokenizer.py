"""Tokenizer and chat template of an exported model, with the `tokenizers` library and jinja2 (no transformers)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer


class TemplateError(ValueError):
    """The chat template refused the messages (e.g. roles in an order it does not accept)."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer configs write it: a string, or {"content": ...}."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    def __init__(self, folder: Path):
        folder = Path(folder)
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        config = _read_json(folder / "tokenizer_config.json")
        special = _read_json(folder / "special_tokens_map.json")
        generation = _read_json(folder / "generation_config.json")
        model_config = _read_json(folder / "config.json")

        def token(name: str) -> str | None:
            return _token_content(config.get(name)) or _token_content(special.get(name))

        self.bos_token = token("bos_token")
        self.eos_token = token("eos_token")
        self.pad_token = token("pad_token")
        self.eos_token_ids = set()
        for source in (generation.get("eos_token_id"), model_config.get("eos_token_id")):
            if isinstance(source, int):
                self.eos_token_ids.add(source)
            elif isinstance(source, list):
                self.eos_token_ids.update(source)
        if self.eos_token and self.tokenizer.token_to_id(self.eos_token) is not None:
            self.eos_token_ids.add(self.tokenizer.token_to_id(self.eos_token))
        self.pad_token_id = (self.tokenizer.token_to_id(self.pad_token) if self.pad_token else None) or 0
        self.max_length = int(config.get("model_max_length") or 0) or None
        if self.max_length and self.max_length > 10**7:  # transformers' "no limit" sentinel
            self.max_length = None

        template = config.get("chat_template")
        if (folder / "chat_template.jinja").exists():
            template = (folder / "chat_template.jinja").read_text()
        elif (folder / "chat_template.json").exists():
            template = _read_json(folder / "chat_template.json").get("chat_template")
        if isinstance(template, list):  # named templates: take the default one
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template if isinstance(template, str) else None  # its text (which tool-call format)
        self._template = None
        if template:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                extensions=[jinja2.ext.loopcontrols])
            env.globals["raise_exception"] = _raise_exception
            env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
            env.filters["tojson"] = lambda x, indent=None, ensure_ascii=False: json.dumps(
                x, indent=indent, ensure_ascii=ensure_ascii)
            self._template = env.from_string(template)

    @property
    def vocab_size(self) -> int:
        """Token ids run from 0 to vocab_size - 1 (added tokens included)."""
        size: int = self.tokenizer.get_vocab_size(with_added_tokens=True)
        return size

    def special_tokens_around(self) -> tuple[list[int], list[int]]:
        """The special tokens encode() puts before and after a text (BERT's [CLS] and [SEP]; often none)."""
        bare = self.encode("a", add_special_tokens=False)
        full = self.encode("a", add_special_tokens=True)
        for start in range(len(full) - len(bare) + 1):
            if full[start:start + len(bare)] == bare:
                return full[:start], full[start + len(bare):]
        return [], []

    def token_bytes(self, token_id: int) -> bytes:
        """A token's own bytes, for log probabilities (a token may end inside a character, where its decoded text
        would not say what it is): an added token's content, a byte-level BPE piece through GPT-2's byte
        alphabet, a SentencePiece piece with its ▁ as a space and <0xNN> as that byte; otherwise its decoded
        text."""
        known = self._token_bytes.get(token_id)
        if known is None:
            known = self._token_bytes[token_id] = self._bytes_of(token_id)
        return known

    def _bytes_of(self, token_id: int) -> bytes:
        piece: str | None = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return b""
        if token_id in self._added:
            return piece.encode("utf-8")
        if self._decoder == "byte-level" and all(c in _BYTE_ALPHABET for c in piece):
            return bytes(_BYTE_ALPHABET[c] for c in piece)
        if self._decoder == "sentencepiece":
            byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
            return bytes([int(byte.group(1), 16)]) if byte else piece.replace("\u2581", " ").encode("utf-8")
        text: str = self.tokenizer.decode([token_id], skip_special_tokens=False)
        return text.encode("utf-8")

    @cached_property
    def _token_bytes(self) -> dict[int, bytes]:
        return {}

    @cached_property
    def _added(self) -> set[int]:
        return set(self.tokenizer.get_added_tokens_decoder())

    @cached_property
    def _decoder(self) -> str:
        """How the tokenizer's pieces map to bytes: byte-level (GPT-2's alphabet), sentencepiece (▁ and byte
        fallback), or other (decoded one by one)."""
        decoder = json.dumps(json.loads(self.tokenizer.to_str()).get("decoder"))
        if "ByteLevel" in decoder:
            return "byte-level"
        return "sentencepiece" if "\\u2581" in decoder or "Metaspace" in decoder or "ByteFallback" in decoder \
            else "other"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids: list[int] = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        text: str = self.tokenizer.decode(ids, skip_special_tokens=True)
        return text

    def render_chat(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                    tools: list[dict[str, Any]] | None = None) -> str:
        if self._template is None:
            # No template: a plain transcript, as a base model would continue it, after the BOS a model that wants
            # one is trained with (Gemma's GGUF has no template; the prompt is encoded without special tokens).
            lines = [f"{m['role']}: {m.get('content') or ''}" for m in messages]
            bos = self.bos_token if self.bos_token and self.special_tokens_around()[0] else ""
            return bos + "\n".join(lines) + ("\nassistant:" if add_generation_prompt else "")
        try:
            return self._template.render(
                messages=messages, add_generation_prompt=add_generation_prompt, tools=tools,
                bos_token=self.bos_token or "", eos_token=self.eos_token or "", pad_token=self.pad_token or "",
            )
        except TemplateError:
            raise
        except Exception as exc:  # a template may fail in any way on messages it does not expect
            raise TemplateError(f"the model's chat template failed: {type(exc).__name__}: {exc}") from exc


class IncrementalDecoder:
    """Turns a growing list of token ids into text, holding back incomplete UTF-8 sequences.

    Decodes only a short window of recent ids each time (as vLLM does), not the whole sequence: a token's text
    can depend on its neighbours (byte-level BPE, leading spaces), never on tokens far behind it."""

    def __init__(self, tokenizer: TextTokenizer):
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix_offset = 0  # start of the window decoded for context
        self._read_offset = 0  # ids before this are already in self.text
        self.text = ""

    def push(self, token_id: int) -> None:
        self._ids.append(token_id)
        prefix = self._tokenizer.decode(self._ids[self._prefix_offset:self._read_offset])
        window = self._tokenizer.decode(self._ids[self._prefix_offset:])
        if len(window) > len(prefix) and not window.endswith("\ufffd"):
            self.text += window[len(prefix):]
            self._prefix_offset, self._read_offset = self._read_offset, len(self._ids)


def _byte_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet, character to byte: printable bytes stand for themselves, the others for
    the characters from U+0100 on, in order."""
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
            *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in kept]
    return {**{chr(b): b for b in kept}, **{chr(256 + n): b for n, b in enumerate(others)}}


_BYTE_ALPHABET = _byte_alphabet()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return data if isinstance(data, dict) else {}
