"""Two sweeps of one model compared row by row, every difference explained: a near-tie or a disagreement.

A sweep through vLLM and the same sweep in-process are the same greedy decoding of the same weights,
but not the same arithmetic: batch sizes, padding and kernels change the order of float additions,
so two candidate tokens whose log-probabilities are within rounding of each other can swap, and the
answers part there.  That is not a bug; a token chosen against a clear margin is.  :func:`compare`
finds, for each row whose answer differs, the first token where the two answers part and the
in-process model's log-probabilities of the two tokens there (one forward over the prompt and the
common prefix, unbatched): a **near-tie** when the gap is within ``tolerance`` nats, a **disagreement**
otherwise.  Answers that tokenize alike (a detokenizer's spacing) are **same tokens**.

    >>> from phi3lab.safety.compare import Difference
    >>> Difference("p", "none", "a", "b", 3, ("▁is", "▁was"), 0.004, 0.05, True).kind
    'near-tie'
"""

from __future__ import annotations

import dataclasses

import torch

from phi3lab.safety._forward import encode_ids
from phi3lab.safety.results import Results
from phi3lab.validation import check_float

__all__ = ["Difference", "Comparison", "compare", "margins", "TOLERANCE"]

TOLERANCE = 0.05  # nats: two tokens within 5% of each other's probability are a tie for float rounding


@dataclasses.dataclass(frozen=True)
class Difference:
    """One row whose answers differ.

    Attributes:
        probe, transform: the row.
        reference, other: the two answers.
        position: index of the first answer token where they part (``-1``: they tokenize alike).
        tokens: the reference's and the other's token there (``"<stop>"`` when one answer ends: any stop token).
        gap: in-process ``log p(reference token) − log p(other token)`` there, in nats (negative: unbatched,
            the in-process model itself prefers the other's token).
        tolerance: the largest ``|gap|`` counted as a near-tie.
        same_verdict: whether the detector gave both answers the same verdict.
    """

    probe: str
    transform: str
    reference: str
    other: str
    position: int
    tokens: tuple[str, str]
    gap: float
    tolerance: float
    same_verdict: bool

    def __repr__(self) -> str:
        verdict = "same verdict" if self.same_verdict else "verdict differs"
        return (
            f"Difference({self.probe!r} under {self.transform}: token {self.position} "
            f"{self.tokens[0]!r} vs {self.tokens[1]!r}, gap {self.gap:.3g}, {verdict})"
        )

    @property
    def kind(self) -> str:
        if self.position < 0:
            return "same tokens"
        return "near-tie" if abs(self.gap) <= self.tolerance else "disagreement"


@dataclasses.dataclass
class Comparison:
    """The rows compared, and each difference explained."""

    rows: int
    differences: list[Difference]
    missing: list[tuple[str, str]]
    tolerance: float

    def __repr__(self) -> str:
        return (
            f"Comparison({self.rows} rows, {len(self.differences)} differences, {len(self.missing)} missing, "
            f"tolerance {self.tolerance:g})"
        )

    def count(self, kind: str) -> int:
        return sum(d.kind == kind for d in self.differences)

    @property
    def disagreements(self) -> list[Difference]:
        return [d for d in self.differences if d.kind == "disagreement"]

    def summary(self) -> str:
        """One line: how many rows, how many identical, and what the rest are."""
        same = self.rows - len(self.differences) - len(self.missing)
        parts = [f"{same}/{self.rows} identical"]
        for kind in ("near-tie", "same tokens", "disagreement"):
            if self.count(kind):
                parts.append(
                    f"{self.count(kind)} {kind}{'s' if self.count(kind) > 1 and kind != 'same tokens' else ''}"
                )
        if self.missing:
            parts.append(f"{len(self.missing)} missing from one side")
        changed = sum(not d.same_verdict for d in self.differences)
        verdicts = f"; {changed} with another verdict" if self.differences else ""
        return f"{', '.join(parts)} (near-tie: |gap| ≤ {self.tolerance} nats){verdicts}"

    def to_text(self, top: int = 10) -> str:
        lines = [self.summary()]
        ranked = sorted(self.differences, key=lambda d: -abs(d.gap))
        for d in ranked[:top]:
            lines.append(
                f"  {d.kind:<12} gap {d.gap:+.4f} at token {d.position} ({d.tokens[0]!r} vs {d.tokens[1]!r}) "
                f"[{d.transform}] {d.probe}{'' if d.same_verdict else ' — verdict changed'}"
            )
        return "\n".join(lines)

    __str__ = to_text


STOP = -1  # stands for "the answer ends here": any of the model's stop tokens


def _answer_ids(lab, text: str) -> list[int]:
    return lab.tokenizer(text, add_special_tokens=False)["input_ids"] + [STOP]


def _name(lab, token: int) -> str:
    return "<stop>" if token == STOP else lab.tokenizer.convert_ids_to_tokens(token)


@torch.inference_mode()
def _gap(lab, prompt: list[int], prefix: list[int], a: int, b: int) -> float:
    ids = torch.tensor([prompt + prefix], device=lab.model.device)
    logits = lab.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits[0, -1].double()
    logp = torch.log_softmax(logits, -1)

    def of(token: int) -> torch.Tensor:
        return logp[list(lab.spec.stop_ids)].logsumexp(0) if token == STOP else logp[token]

    return float(of(a) - of(b))


def compare(
    lab,
    reference: Results,
    other: Results,
    *,
    tolerance: float = TOLERANCE,
    special_tokens: str = "allow",
) -> Comparison:
    """Compare two sweeps' rows by ``(probe, transform)`` and explain every answer that differs.

    Args:
        lab: the model both sweeps ran (in-process), to weigh the two tokens where answers part.
        reference: usually the in-process sweep.
        other: e.g. the same sweep through vLLM.
        tolerance: the largest ``|gap|`` in nats counted as a near-tie (default 0.05).
        special_tokens: how the rows' messages were rendered (``"allow"``, as :class:`LabTarget` does).
    """
    tolerance = check_float("tolerance", tolerance, minimum=0.0)
    for name, value in (("reference", reference), ("other", other)):
        if not isinstance(value, Results):
            raise TypeError(f"{name} must be Results (what sweep returns), got {type(value).__name__}")
    ref = {(r["probe"], r["transform"]): r for r in reference.rows}
    oth = {(r["probe"], r["transform"]): r for r in other.rows}
    missing = sorted(set(ref) ^ set(oth))
    differences = []
    for key in sorted(set(ref) & set(oth)):
        a, b = ref[key]["response"], oth[key]["response"]
        if a == b:
            continue
        same_verdict = ref[key].get("verdict", ref[key]["refused"]) == oth[key].get("verdict", oth[key]["refused"])
        ids_a, ids_b = _answer_ids(lab, a), _answer_ids(lab, b)
        if ids_a == ids_b:
            differences.append(Difference(*key, a, b, -1, ("", ""), 0.0, tolerance, same_verdict))
            continue
        i = next(k for k in range(min(len(ids_a), len(ids_b))) if ids_a[k] != ids_b[k])
        prompt = encode_ids(lab, [ref[key]["messages"]], special_tokens)[0]
        gap = _gap(lab, prompt, ids_a[:i], ids_a[i], ids_b[i])
        tokens = (_name(lab, ids_a[i]), _name(lab, ids_b[i]))
        differences.append(Difference(*key, a, b, i, tokens, gap, tolerance, same_verdict))
    return Comparison(len(set(ref) | set(oth)), differences, missing, tolerance)


@torch.inference_mode()
def margins(lab, results: Results, *, special_tokens: str = "allow") -> dict[tuple[str, str], tuple[float, int]]:
    """For every row, the narrowest decision along its answer: ``(gap, position)``, the smallest
    log-probability gap in nats between the chosen token and the runner-up at any answer position
    (teacher-forced on the row's own answer, unbatched).  Rows with a gap under :data:`TOLERANCE` are the
    ones float rounding can flip; a row decided by wide margins everywhere cannot."""
    if not isinstance(results, Results):
        raise TypeError(f"results must be Results (what sweep returns), got {type(results).__name__}")
    out = {}
    for r in results.rows:
        prompt = encode_ids(lab, [r["messages"]], special_tokens)[0]
        answer = [t for t in _answer_ids(lab, r["response"]) if t != STOP]
        ids = torch.tensor([prompt + answer], device=lab.model.device)
        logits = lab.model(input_ids=ids, use_cache=False).logits[0, len(prompt) - 1 :].double()
        top = torch.log_softmax(logits, -1).topk(2, dim=-1).values
        gaps = (top[:, 0] - top[:, 1]).cpu()
        k = int(gaps.argmin())
        out[(r["probe"], r["transform"])] = (float(gaps[k]), k)
    return out
