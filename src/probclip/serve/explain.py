"""Why a search answered nothing, in the user's words.

The inclusion scores (``included``: "more general", ``includes``: "more specific") return only the items that pass
the direction check, and an item more general than the query is, under a ProLIP model, more uncertain than it. So
an empty answer usually means the query sits at the end of the index's uncertainty scale: :func:`empty_reason`
says so with the numbers (the query's ``u``, where it falls among the index's items, their median ``u``).

Where the collection's hierarchy head ranked (:mod:`probclip.search.head_ranking`), the uncertainty scale decides
nothing: the sentence names the head and the check no item passed (``P > 0.5``, or a probability above the reverse
one).
"""

from __future__ import annotations

__all__ = ["DIRECTION_WORDS", "HEAD_CHECKS", "empty_reason"]

#: The user's words for the inclusion scores.
DIRECTION_WORDS = {"included": "more general", "includes": "more specific"}
_QUERY_NOUNS = {"text": "caption", "image": "image", "item": "item", "embedding": "embedding"}
#: The direction checks of the hierarchy head: ``half``, ``P > 0.5`` (the head has no reverse pair); ``reverse``, the
#: probability asked above the one with the roles swapped.
HEAD_CHECKS = ("half", "reverse")


def _u(value: float) -> str:
    return f"{value:.2g}"


def empty_reason(score: str, query_kind: str, query_u: float | None, modality: str, percentile: float | None,
                 median_u: float | None, filtered: bool, head_check: str | None = None) -> str | None:
    """One sentence explaining an empty answer, or None when there is nothing to explain.

    Args:
        score: the search's score; query_kind: ``text``, ``image``, ``item`` or ``embedding``; query_u: the query's
            ``u``; modality: the index's (``image`` / ``text``); percentile: fraction of the index's items with a
            lower ``u`` than the query (0..1); median_u: the index's median ``u``; filtered: an uncertainty filter
            was applied; head_check: where the hierarchy head ranked, the check it applied (:data:`HEAD_CHECKS`).
    """
    items = "captions" if modality == "text" else "images"
    query = _QUERY_NOUNS.get(query_kind, "query")
    if filtered:
        rest = " among the items the uncertainty filter keeps (it removes the most uncertain ones)"
    else:
        rest = ""
    if score not in DIRECTION_WORDS:
        return f"no {items} match{rest}" if filtered else None
    words = DIRECTION_WORDS[score]
    if head_check is not None:
        lead = f"no {items[:-1]} is {words} than this {query} under this collection's hierarchy head{rest}"
        if head_check == "half":
            return f"{lead}: none has P > 0.5"
        other = DIRECTION_WORDS["includes" if score == "included" else "included"]
        return f"{lead}: none is more probably {words} than {other}"
    lead = f"no {items[:-1]} is {words} than this {query} under this model{rest}"
    if query_u is None or percentile is None or median_u is None:
        return lead
    share = round(100 * (percentile if score == "included" else 1 - percentile))
    side = "more" if score == "included" else "less"
    needed = "more uncertain" if score == "included" else "less uncertain"
    return (f"{lead}: the {query} is {side} uncertain than {share}% of its {items} (u {_u(query_u)} vs median "
            f"{_u(median_u)}), and a {words} {items[:-1]} must be {needed} than the {query}")
