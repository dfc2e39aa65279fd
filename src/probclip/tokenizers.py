"""Tokenizers: CLIP BPE (offline), Hugging Face tokenizers (the released models' SigLIP one), word-level.

Every tokenizer is called as ``tokenizer(texts) -> LongTensor [B, context_length]`` (padded with ``pad_id``)
and has the attributes ``context_length``, ``pad_id``, ``mask_id`` (token used for masked text views, or None)
and ``vocab_size``. Texts longer than the context are truncated with a warning, or rejected with
``truncate=False``. ``get_tokenizer(model_or_name)`` builds the tokenizer a model was configured with.
"""

from __future__ import annotations

import html
import re
import string
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ftfy
import torch

from .errors import InputError
from .models.config import (
    WORD_SPECIAL_TOKENS,
    ProbCLIPConfig,
    TextConfig,
    word_tokenizer_config,
)
from .models.hub import resolve_model_config

__all__ = [
    "Tokenizer",
    "ClipBPETokenizer",
    "HFTokenizer",
    "WordTokenizer",
    "TextTooLongError",
    "TextTruncationWarning",
    "canonicalize_text",
    "get_tokenizer",
    "tokenizer_from_config",
    "word_tokenizer_config",
    "WORD_SPECIAL_TOKENS",
]

_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


class TextTooLongError(InputError, ValueError):
    """A text has more tokens than the context length and truncation was refused."""


class TextTruncationWarning(UserWarning):
    """A text was truncated to the context length."""


# ------------------------------------------------------------------------------------------------ cleaning
def _fix_text(text: str) -> str:
    return html.unescape(html.unescape(ftfy.fix_text(text))).strip()


def canonicalize_text(text: str) -> str:
    """The released models' "canonicalize" cleaning.

    ftfy fix, HTML unescape twice, strip, ``_`` -> space, remove ASCII punctuation, lowercase, collapse
    whitespace to single spaces.
    """
    text = _fix_text(text).replace("_", " ")
    text = text.translate(_ASCII_PUNCTUATION).lower()
    return re.sub(r"\s+", " ", text).strip()


def _whitespace_clean(text: str) -> str:
    return re.sub(r"\s+", " ", _fix_text(text)).strip()


def _lower_clean(text: str) -> str:
    return _whitespace_clean(text).lower()


_CLEANERS: dict[str | None, Callable[[str], str]] = {
    "canonicalize": canonicalize_text,
    "whitespace": _whitespace_clean,
    "lower": _lower_clean,
    None: lambda text: text,
}


def _get_cleaner(name: str | None) -> Callable[[str], str]:
    if name not in _CLEANERS:
        raise ValueError(f"unknown text cleaning {name!r}; choose one of {[k for k in _CLEANERS]}")
    return _CLEANERS[name]


# ------------------------------------------------------------------------------------------------ base class
class Tokenizer:
    """Base class: turns texts into padded id tensors ``[B, context_length]``.

    Subclasses implement ``encode(text) -> list[int]`` (content ids, no special tokens) and
    ``_wrap(ids) -> list[int]`` (add special tokens), and set ``num_special`` (how many ``_wrap`` adds).
    """

    context_length: int
    pad_id: int
    mask_id: int | None
    vocab_size: int
    num_special: int = 0

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def _wrap(self, ids: list[int]) -> list[int]:
        return ids

    def __call__(
        self,
        texts: str | Sequence[str],
        context_length: int | None = None,
        truncate: bool = True,
    ) -> torch.Tensor:
        """Tokenize ``texts`` -> ``LongTensor [B, context_length]`` padded with ``pad_id``.

        A text with more tokens than fit is truncated (content cut, special tokens kept) with a
        ``TextTruncationWarning``; with ``truncate=False`` it raises ``TextTooLongError`` naming the text.
        ``context_length`` may be smaller than the tokenizer's (never larger: the model has no positions for it).
        """
        if isinstance(texts, str):
            texts = [texts]
        if not all(isinstance(t, str) for t in texts):
            bad = next(t for t in texts if not isinstance(t, str))
            raise TypeError(f"texts must be strings; got {type(bad).__name__}: {bad!r}")
        length = self.context_length if context_length is None else int(context_length)
        if length > self.context_length or length <= self.num_special:
            raise ValueError(
                f"context_length {length} is outside what this tokenizer/model supports: "
                f"{self.num_special + 1}..{self.context_length}"
            )
        out = torch.full((len(texts), length), self.pad_id, dtype=torch.long)
        truncated = []
        for row, text in enumerate(texts):
            ids = self.encode(text)
            room = length - self.num_special
            if len(ids) > room:
                if not truncate:
                    raise TextTooLongError(
                        f"text {_preview(text)} has {len(ids) + self.num_special} tokens, more than the context "
                        f"length {length}; shorten it or call with truncate=True"
                    )
                truncated.append((text, len(ids) + self.num_special))
                ids = ids[:room]
            ids = self._wrap(ids)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        if truncated:
            first, n_tokens = truncated[0]
            warnings.warn(
                f"{len(truncated)} text(s) truncated to the context length {length} (first: {_preview(first)}, "
                f"{n_tokens} tokens); pass truncate=False to get an error instead",
                TextTruncationWarning,
                stacklevel=2,
            )
        return out

    def check_model(self, model_or_config: Any) -> None:
        """Raise ``ValueError`` if this tokenizer does not fit the model (context length, vocabulary, pad id)."""
        text_cfg = _text_config(model_or_config)
        if self.context_length > text_cfg.context_length:
            raise ValueError(
                f"tokenizer context length {self.context_length} exceeds the model's context length "
                f"{text_cfg.context_length}"
            )
        if self.vocab_size > text_cfg.vocab_size:
            raise ValueError(
                f"tokenizer vocabulary ({self.vocab_size} ids) exceeds the model's vocab_size ({text_cfg.vocab_size})"
            )
        if self.pad_id != text_cfg.pad_id:
            raise ValueError(f"tokenizer pad id {self.pad_id} differs from the model's pad_id {text_cfg.pad_id}")


def _preview(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


# ------------------------------------------------------------------------------------------------ CLIP BPE
class ClipBPETokenizer(Tokenizer):
    """OpenAI CLIP byte-pair tokenizer (vocabulary file shipped with open_clip_torch; works offline).

    Sequence: ``[<start_of_text>, ids..., <end_of_text>, pad...]``, pad id 0. ``mask_id`` may name an id past
    the BPE vocabulary (a model with ``vocab_size`` 49409 reserves id 49408 for masking).
    """

    num_special = 2

    def __init__(self, context_length: int = 77, clean: str | None = "lower", mask_id: int | None = None):
        from open_clip.tokenizer import SimpleTokenizer  # heavy; only the CLIP BPE tokenizer needs it

        if clean not in _CLEANERS:
            raise ValueError(f"unknown text cleaning {clean!r}; choose one of {list(_CLEANERS)}")
        self._bpe = SimpleTokenizer(context_length=context_length, clean="lower" if clean is None else clean)
        if clean is None:
            self._bpe.clean_fn = _CLEANERS[None]
        self.context_length = int(context_length)
        self.pad_id = 0
        self.mask_id = mask_id
        self.sot_id = self._bpe.sot_token_id
        self.eot_id = self._bpe.eot_token_id
        self.vocab_size = self._bpe.vocab_size if mask_id is None else max(self._bpe.vocab_size, mask_id + 1)

    def encode(self, text: str) -> list[int]:
        return self._bpe.encode(text)

    def _wrap(self, ids: list[int]) -> list[int]:
        return [self.sot_id, *ids, self.eot_id]

    def decode(self, ids: Sequence[int]) -> str:
        """Ids (specials and padding dropped) -> text."""
        keep = [int(i) for i in ids if int(i) not in (self.pad_id, self.sot_id, self.eot_id, self.mask_id)]
        return self._bpe.decode(keep).strip()


# ------------------------------------------------------------------------------------------------ Hugging Face
class HFTokenizer(Tokenizer):
    """A Hugging Face tokenizer (hub name or local directory) with probclip's truncation and padding.

    Special tokens are added as the tokenizer defines them (a T5/SigLIP tokenizer appends ``</s>``); when a text
    is too long its content is cut so the special tokens survive, as ``truncation=True`` does in transformers.
    ``mask_token``: a token string (e.g. ``"<extra_id_99>"``) or an id used for masked text views.
    """

    def __init__(
        self,
        name_or_path: str,
        context_length: int = 64,
        clean: str | None = "whitespace",
        mask_token: str | int | None = None,
        pad_id: int | None = None,
    ):
        from transformers import AutoTokenizer  # heavy; only Hugging Face tokenizers need it

        self.name_or_path = str(name_or_path)
        try:
            self._tok = AutoTokenizer.from_pretrained(self.name_or_path)
        except OSError as err:
            raise OSError(
                f"could not load the Hugging Face tokenizer {self.name_or_path!r} (a hub name needs network access or "
                f"a cached copy; a local path needs tokenizer files): {err}"
            ) from err
        self._clean = _get_cleaner(clean)
        self.context_length = int(context_length)
        self._prefix, self._suffix = self._special_tokens_around_text()
        self.num_special = len(self._prefix) + len(self._suffix)
        tok_pad = self._tok.pad_token_id
        if pad_id is None and tok_pad is None:
            raise ValueError(f"tokenizer {self.name_or_path!r} has no pad token; pass pad_id explicitly")
        self.pad_id = int(tok_pad if pad_id is None else pad_id)
        if isinstance(mask_token, str):
            mask_id = self._tok.convert_tokens_to_ids(mask_token)
            if mask_id is None or mask_id == self._tok.unk_token_id:
                raise ValueError(f"mask token {mask_token!r} is not in the vocabulary of {self.name_or_path!r}")
            self.mask_id = int(mask_id)
        else:
            self.mask_id = mask_token
        self.vocab_size = len(self._tok)

    def _special_tokens_around_text(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after a text's content (e.g. ``[]`` and ``[</s>]`` for T5)."""
        probe = "a photo"
        plain = list(self._tok(probe, add_special_tokens=False)["input_ids"])
        full = list(self._tok(probe, add_special_tokens=True)["input_ids"])
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start], full[start + len(plain) :]
        raise ValueError(f"cannot locate the text's ids inside the special tokens of tokenizer {self.name_or_path!r}")

    def encode(self, text: str) -> list[int]:
        return list(self._tok(self._clean(text), add_special_tokens=False)["input_ids"])

    def _wrap(self, ids: list[int]) -> list[int]:
        return [*self._prefix, *ids, *self._suffix]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)


# ------------------------------------------------------------------------------------------------ word level
class WordTokenizer(Tokenizer):
    """Whitespace/punctuation word tokenizer over a fixed vocabulary stored in the model config.

    Ids: ``<pad>`` 0, ``<unk>`` 1, ``<mask>`` 2, then the vocabulary in order. Texts are lowercased and split
    into runs of letters, digits and apostrophes; a word outside the vocabulary becomes ``<unk>`` (count them
    with ``unknown_words``). No start/end tokens.
    """

    num_special = 0

    def __init__(self, vocab: Sequence[str], context_length: int = 16):
        config = word_tokenizer_config(vocab)
        self.words = list(config["tokenizer"]["vocab"])
        self._ids = {w: i + len(WORD_SPECIAL_TOKENS) for i, w in enumerate(self.words)}
        self.context_length = int(context_length)
        self.pad_id, self.unk_id, self.mask_id = 0, 1, 2
        self.vocab_size = config["vocab_size"]

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"[a-z0-9']+", text.lower())

    def encode(self, text: str) -> list[int]:
        return [self._ids.get(w, self.unk_id) for w in self.split(text)]

    def unknown_words(self, text: str) -> list[str]:
        """Words of ``text`` not in the vocabulary (they would become ``<unk>``)."""
        return [w for w in self.split(text) if w not in self._ids]

    def decode(self, ids: Sequence[int]) -> str:
        names = list(WORD_SPECIAL_TOKENS) + self.words
        return " ".join(names[int(i)] for i in ids if int(i) != self.pad_id)


# ------------------------------------------------------------------------------------------------ factory
def _text_config(model_or_config: Any):
    if isinstance(model_or_config, TextConfig):
        return model_or_config
    if isinstance(model_or_config, ProbCLIPConfig):
        return model_or_config.text
    config = getattr(model_or_config, "config", None)
    if isinstance(config, ProbCLIPConfig):
        return config.text
    raise TypeError(
        f"expected a ProbCLIP model, a ProbCLIPConfig or a TextConfig; got {type(model_or_config).__name__}"
    )


def tokenizer_from_config(text_cfg, context_length: int | None = None) -> Tokenizer:
    """The tokenizer described by a ``TextConfig`` (``text_cfg.tokenizer``), checked against that config."""
    spec = dict(text_cfg.tokenizer)
    length = text_cfg.context_length if context_length is None else int(context_length)
    if length > text_cfg.context_length:
        raise ValueError(
            f"context_length {length} exceeds the model's context length {text_cfg.context_length}"
        )
    kind = spec.pop("type")
    if kind == "clip":
        tokenizer: Tokenizer = ClipBPETokenizer(length, clean=spec.get("clean", "lower"), mask_id=text_cfg.mask_id)
    elif kind == "hf":
        tokenizer = HFTokenizer(
            spec["name"], length, clean=spec.get("clean", "whitespace"), mask_token=text_cfg.mask_id,
            pad_id=spec.get("pad_id"),
        )
    elif kind == "word":
        tokenizer = WordTokenizer(spec["vocab"], length)
    else:
        raise ValueError(f"unknown tokenizer type {kind!r}; known: 'clip', 'hf', 'word'")
    tokenizer.check_model(text_cfg)
    return tokenizer


def get_tokenizer(model_or_name: Any, context_length: int | None = None) -> Tokenizer:
    """The tokenizer of a model.

    Args:
        model_or_name: a ``ProbCLIP`` model, a ``ProbCLIPConfig``, a registered model name, a checkpoint directory
            or an ``hf-hub:owner/repo`` id.
        context_length: optional shorter context (never longer than the model's).

    Returns a callable ``tokenizer(list[str]) -> LongTensor [B, context_length]``.
    """
    if isinstance(model_or_name, str):
        return tokenizer_from_config(resolve_model_config(model_or_name).text, context_length)
    return tokenizer_from_config(_text_config(model_or_name), context_length)
