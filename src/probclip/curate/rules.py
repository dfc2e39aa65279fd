"""The rule grammar of ``probclip curate filter``: which scored pairs to keep.

A filter is a list of rules applied in order; each rule keeps some of the pairs the previous rules kept::

    rule       := ranking | condition
    ranking    := ("top" | "bottom") FRACTION score       keep the FRACTION of the pool that scores highest
                                                          (top) or lowest (bottom), among the pairs still kept
    condition  := cond_or
    cond_or    := cond_and ("or" cond_and)*
    cond_and   := cond_not ("and" cond_not)*
    cond_not   := "not" cond_not | "(" cond_or ")" | score OP bound
    OP         := "<" | "<=" | ">" | ">="
    bound      := NUMBER | "-" NUMBER | "q" PERCENT       qP: the P-th percentile of the score over the whole pool
    score      := ["-"] term (("+" | "-") term)*
    term       := [NUMBER "*"] COLUMN                     COLUMN: cosine, csd, match_prob, image_u, text_u,
                                                          image_in_text, text_in_image
    FRACTION   := NUMBER "%" (0 < % <= 100) | NUMBER (0 < f <= 1)

Examples: ``top 30% cosine`` (DataComp's CLIP-score baseline), ``bottom 0.3 csd``, ``text_u <= q90`` (drop the
10% most uncertain captions), ``image_u <= q95 and text_u <= q90``, ``top 30% cosine - 0.5 * text_u``,
``not (image_in_text < q5)``. A fraction and a percentile always refer to the whole scored pool, so that
``text_u <= q90`` then ``top 30% cosine`` keeps exactly 30% of the pool (when at least that many pairs pass the
first rule). Ties at a ranking's cut are broken by pool order; a score that is not a number fails every condition
and ranks last.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError
from .pair_scores import SCORE_COLUMNS

__all__ = ["Rule", "apply_rules", "parse_rule"]

_TOKEN = re.compile(r"\s*(?:(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?P<pct>%)?|(?P<name>[A-Za-z_][A-Za-z_0-9.]*)"
                    r"|(?P<op><=|>=|<|>)|(?P<sym>[()*+-]))")
_QUANTILE = re.compile(r"q(\d+(?:\.\d*)?)$")
_KEYWORDS = ("top", "bottom", "and", "or", "not")


@dataclass(frozen=True)
class _Token:
    kind: str  # num, name, op, sym, end
    text: str
    position: int
    percent: bool = False


def _tokens(text: str) -> list[_Token]:
    out, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if not text[position:].strip():
                break
            raise UsageError(f"rule {text!r}: cannot read {text[position:].strip()[:20]!r} at character "
                             f"{position + 1}; see `probclip curate filter --help` for the grammar")
        kind = match.lastgroup if match.lastgroup != "pct" else "num"
        start = match.start(kind)
        out.append(_Token(kind, match.group(kind), start, bool(match.group("pct"))))
        position = match.end()
    out.append(_Token("end", "", len(text)))
    return out


@dataclass(frozen=True)
class _Score:
    """A linear combination of score columns: ``sum coef * column``."""

    terms: tuple[tuple[float, str], ...]

    def values(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        total = np.zeros(len(next(iter(columns.values()))), dtype=np.float64)
        for coef, name in self.terms:
            total = total + coef * columns[name]
        return total


@dataclass(frozen=True)
class _Compare:
    score: _Score
    op: str
    number: float | None
    percentile: float | None

    def mask(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        values = self.score.values(columns)
        if self.percentile is not None:
            finite = values[np.isfinite(values)]
            bound = float(np.percentile(finite, self.percentile)) if finite.size else math.nan
        else:
            bound = float(self.number)
        with np.errstate(invalid="ignore"):
            return {"<": values < bound, "<=": values <= bound, ">": values > bound, ">=": values >= bound}[self.op]


@dataclass(frozen=True)
class _Logic:
    op: str  # and, or, not
    parts: tuple

    def mask(self, columns: dict[str, np.ndarray]) -> np.ndarray:
        masks = [p.mask(columns) for p in self.parts]
        if self.op == "not":
            return ~masks[0]
        return np.logical_and.reduce(masks) if self.op == "and" else np.logical_or.reduce(masks)


@dataclass(frozen=True)
class Rule:
    """One parsed rule: a ranking (``top`` / ``bottom``, ``fraction`` of the pool, ``score``) or a condition."""

    text: str
    ranking: str | None = None
    fraction: float | None = None
    score: _Score | None = None
    condition: object | None = field(default=None, repr=False)

    def apply(self, columns: dict[str, np.ndarray], kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(kept after this rule, pool rows this rule alone would reject)``, bool ``[n]`` each."""
        n = kept.size
        if self.condition is not None:
            passes = self.condition.mask(columns)
            return kept & passes, ~passes
        values = self.score.values(columns)
        key = np.where(np.isnan(values), np.inf, -values if self.ranking == "top" else values)
        order = np.lexsort((np.arange(n), key))  # best first, ties by pool order
        wanted = math.floor(self.fraction * n + 1e-9)
        in_pool_top = np.zeros(n, dtype=bool)
        in_pool_top[order[:wanted]] = True
        survivors = order[kept[order]]
        out = np.zeros(n, dtype=bool)
        out[survivors[:wanted]] = True
        return out, ~in_pool_top


class _Parser:
    def __init__(self, text: str, columns: tuple[str, ...]):
        self.text, self.tokens, self.at, self.columns = text, _tokens(text), 0, columns

    def peek(self) -> _Token:
        return self.tokens[self.at]

    def take(self) -> _Token:
        token = self.tokens[self.at]
        self.at += 1
        return token

    def fail(self, expected: str):
        token = self.peek()
        found = "the end of the rule" if token.kind == "end" else repr(token.text)
        raise UsageError(f"rule {self.text!r}: expected {expected} at character {token.position + 1}, found {found}; "
                         "see `probclip curate filter --help` for the grammar")

    def accept(self, kind: str, text: str | None = None) -> _Token | None:
        token = self.peek()
        if token.kind == kind and (text is None or token.text == text):
            return self.take()
        return None

    def number(self, token: _Token) -> float:
        value = float(token.text)
        return value / 100 if token.percent else value

    def column(self) -> str:
        token = self.peek()
        if token.kind != "name" or token.text in _KEYWORDS or _QUANTILE.match(token.text):
            self.fail(f"a score column ({', '.join(self.columns)})")
        if token.text not in self.columns:
            raise UsageError(f"rule {self.text!r}: unknown score column {token.text!r}; expected one of "
                             f"{list(self.columns)}")
        return self.take().text

    def term(self, sign: float) -> tuple[float, str]:
        number = self.accept("num")
        if number is not None:
            if number.percent:
                raise UsageError(f"rule {self.text!r}: a coefficient cannot be a percentage ({number.text}%)")
            if not self.accept("sym", "*"):
                self.fail("'*' after the coefficient")
            return sign * float(number.text), self.column()
        return sign, self.column()

    def score(self) -> _Score:
        sign = -1.0 if self.accept("sym", "-") else 1.0
        terms = [self.term(sign)]
        while self.peek().kind == "sym" and self.peek().text in "+-":
            terms.append(self.term(-1.0 if self.take().text == "-" else 1.0))
        return _Score(tuple(terms))

    def bound(self) -> tuple[float | None, float | None]:
        negative = self.accept("sym", "-") is not None
        number = self.accept("num")
        if number is not None:
            if number.percent:
                raise UsageError(f"rule {self.text!r}: a bound cannot be a percentage ({number.text}%); write a "
                                 f"percentile as q{number.text}")
            return (-1 if negative else 1) * float(number.text), None
        token = self.peek()
        match = _QUANTILE.match(token.text) if token.kind == "name" and not negative else None
        if match is None:
            self.fail("a number or a percentile such as q90")
        percentile = float(match.group(1))
        if not 0 <= percentile <= 100:
            raise UsageError(f"rule {self.text!r}: percentile {token.text!r} must lie in q0 .. q100")
        self.take()
        return None, percentile

    def comparison(self):
        score = self.score()
        op = self.accept("op")
        if op is None:
            self.fail("a comparison (<, <=, >, >=)")
        number, percentile = self.bound()
        return _Compare(score, op.text, number, percentile)

    def cond_not(self):
        if self.accept("name", "not"):
            return _Logic("not", (self.cond_not(),))
        if self.accept("sym", "("):
            inner = self.cond_or()
            if not self.accept("sym", ")"):
                self.fail("')'")
            return inner
        return self.comparison()

    def cond_and(self):
        parts = [self.cond_not()]
        while self.accept("name", "and"):
            parts.append(self.cond_not())
        return parts[0] if len(parts) == 1 else _Logic("and", tuple(parts))

    def cond_or(self):
        parts = [self.cond_and()]
        while self.accept("name", "or"):
            parts.append(self.cond_and())
        return parts[0] if len(parts) == 1 else _Logic("or", tuple(parts))

    def rule(self) -> Rule:
        token = self.peek()
        if token.kind == "name" and token.text in ("top", "bottom"):
            self.take()
            number = self.accept("num")
            if number is None:
                self.fail("a fraction such as 30% or 0.3")
            fraction = self.number(number)
            if not 0 < fraction <= 1:
                raise UsageError(f"rule {self.text!r}: fraction {number.text}{'%' if number.percent else ''} must "
                                 "lie in (0, 1] (or (0%, 100%])")
            score = self.score()
            rule = Rule(self.text, ranking=token.text, fraction=fraction, score=score)
        else:
            rule = Rule(self.text, condition=self.cond_or())
        if self.peek().kind != "end":
            self.fail("the end of the rule ('and' / 'or' join conditions)")
        return rule


def parse_rule(text: str, columns: tuple[str, ...] = SCORE_COLUMNS) -> Rule:
    """Parse one rule of the grammar (module docstring) over the score ``columns``; ``UsageError`` naming the place
    that does not fit."""
    if not isinstance(text, str) or not text.strip():
        raise UsageError(f"a rule must be a non-empty text such as 'top 30% cosine'; got {text!r}")
    return _Parser(text.strip(), tuple(columns)).rule()


def apply_rules(rules: list[Rule], columns: dict[str, np.ndarray]) -> tuple[np.ndarray, list[dict]]:
    """Apply ``rules`` in order to the pool ``columns`` (``{column: float64 [n]}``).

    Returns the kept rows (bool ``[n]``) and, per rule, ``{"rule", "removed", "rejects", "kept"}``: the rows it
    removed from those still kept, the rows of the whole pool it rejects on its own, the rows kept after it.
    """
    n = len(next(iter(columns.values()))) if columns else 0
    kept = np.ones(n, dtype=bool)
    counts = []
    for rule in rules:
        after, rejects = rule.apply(columns, kept)
        counts.append({"rule": rule.text, "removed": int(kept.sum() - after.sum()), "rejects": int(rejects.sum()),
                       "kept": int(after.sum())})
        kept = after
    return kept, counts
