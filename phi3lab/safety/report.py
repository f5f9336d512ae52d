"""Reports from a results file: 2×2 tables, refusal and over-refusal, attack success, failures.

    >>> from phi3lab.safety import wilson, redact
    >>> [round(x, 3) for x in wilson(0, 30)]
    [0.0, 0.114]
    >>> redact("Sure, here is how to do it: first take the thing and then", words=4)
    'Sure, here is how… [redacted: 57 characters, sha256 e56c5164]'

For every probe set and category, :meth:`Report.table` is the 2×2 of the direct requests (harmful /
benign × refused / complied), from which come the **refusal rate** (harmful requests refused) and the
**over-refusal rate** (benign requests refused).  :meth:`Report.attack_success` is, per transform, the
share of harmful probes that were *not* refused, with a Wilson 95% interval (exact enough at n = 30
where the normal approximation is not).  :meth:`Report.failures` lists harmful requests that were
answered and benign ones that were refused; **harmful completions are redacted** (first words and a
hash that identifies them) unless the report is made with ``reveal=True``.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

from phi3lab.safety.results import Results, read_results

__all__ = ["Report", "report", "wilson", "redact"]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of ``k`` successes in ``n`` trials (95% for ``z = 1.96``)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def redact(text: str, words: int = 4) -> str:
    """The first ``words`` words, the length, and a short SHA-256 (enough to tell answers apart)."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]
    head = " ".join(text.split()[:words])
    return f"{head}… [redacted: {len(text)} characters, sha256 {digest}]"


def _pct(k: int, n: int) -> str:
    if not n:
        return "—"
    lo, hi = wilson(k, n)
    return f"{100 * k / n:5.1f}% [{100 * lo:.0f}–{100 * hi:.0f}]"


class Report:
    """Tables and plots from :class:`~phi3lab.safety.results.Results` (or a path to a results file).

    Args:
        results: the rows.
        reveal: show harmful completions in full in :meth:`failures` (default: redacted).
    """

    def __init__(self, results, reveal: bool = False):
        self.results = results if isinstance(results, Results) else read_results(results)
        self.reveal = bool(reveal)
        self.rows = self.results.rows

    # --- tables ----------------------------------------------------------------------------------

    @property
    def probe_sets(self) -> list[str]:
        return sorted({r["probe_set"] for r in self.rows})

    def categories(self, probe_set: str | None = None) -> list[str]:
        return sorted({r["category"] for r in self.rows if probe_set in (None, r["probe_set"])})

    def _direct(self, probe_set=None, category=None) -> list[dict]:
        return [
            r
            for r in self.rows
            if r["transform"] == "none" and probe_set in (None, r["probe_set"]) and category in (None, r["category"])
        ]

    def table(self, category: str | None = None, probe_set: str | None = None) -> dict[str, dict[str, int]]:
        """The 2×2 of the direct requests: ``{"harmful"|"benign": {"refused": n, "complied": n}}``."""
        cells = {k: {"refused": 0, "complied": 0} for k in ("harmful", "benign")}
        for r in self._direct(probe_set, category):
            cells[r["kind"]]["refused" if r["refused"] else "complied"] += 1
        return cells

    def rates(self) -> list[dict]:
        """Per probe set and category: the 2×2 counts, refusal and over-refusal rates with Wilson intervals."""
        out = []
        for probe_set in self.probe_sets:
            for category in self.categories(probe_set):
                t = self.table(category, probe_set)
                h, b = t["harmful"], t["benign"]
                nh, nb = h["refused"] + h["complied"], b["refused"] + b["complied"]
                if not nh + nb:
                    continue
                cells = {f"{k}_{v}": t[k][v] for k in t for v in t[k]}
                out.append(
                    {
                        "probe_set": probe_set,
                        "category": category,
                        **cells,
                        "refusal": h["refused"] / nh if nh else float("nan"),
                        "refusal_ci": wilson(h["refused"], nh),
                        "over_refusal": b["refused"] / nb if nb else float("nan"),
                        "over_refusal_ci": wilson(b["refused"], nb),
                    }
                )
        return out

    def attack_success(self) -> list[dict]:
        """Per transform, harmful probes answered (not refused): ``n``, ``k``, ``rate``, ``ci``; ``none`` first,
        then the most successful."""
        order: list[str] = []
        for r in self.rows:
            if r["kind"] == "harmful" and r["transform"] not in order:
                order.append(r["transform"])
        out = []
        for name in order:
            rows = [r for r in self.rows if r["kind"] == "harmful" and r["transform"] == name]
            k = sum(not r["refused"] for r in rows)
            out.append(
                {
                    "transform": name,
                    "family": rows[0].get("family", ""),
                    "n": len(rows),
                    "k": k,
                    "rate": k / len(rows),
                    "ci": wilson(k, len(rows)),
                }
            )
        return sorted(out, key=lambda a: (a["transform"] != "none", -a["rate"], a["transform"]))

    def reasons(self, kind: str = "harmful", refused: bool = True) -> Counter:
        """How often each detector reason decided rows of one kind and outcome."""
        return Counter(r.get("reason", "") for r in self.rows if r["kind"] == kind and r["refused"] == refused)

    def failures(self, n: int = 5, *, transform: str | None = None, kind: str = "harmful") -> list[dict]:
        """Up to ``n`` failures: harmful probes answered (redacted unless ``reveal``), or benign ones refused."""
        bad = [
            r
            for r in self.rows
            if r["kind"] == kind and r["refused"] == (kind == "benign") and transform in (None, r["transform"])
        ]
        out = []
        for r in bad[:n]:
            shown = r["response"] if (self.reveal or kind == "benign") else redact(r["response"])
            out.append(
                {
                    "probe": r["probe"],
                    "transform": r["transform"],
                    "category": r["category"],
                    "request": r.get("request", ""),
                    "response": shown,
                    "reason": r.get("reason", ""),
                }
            )
        return out

    # --- text --------------------------------------------------------------------------------------

    def to_text(self) -> str:
        if not self.rows:
            return "no results"
        settings = ", ".join(f"{k}={v}" for k, v in self.results.settings.items())
        lines = [
            f"{self.results.model} · {len(self.rows)} answers · {settings}",
            "",
            "Direct requests (2×2 per category: harmful/benign × refused/complied):",
            f"  {'probe set':<13} {'category':<13} {'harm ref':>8} {'harm ok':>8} {'ben ref':>8} {'ben ok':>8}"
            f"  {'refusal':<18} {'over-refusal':<18}",
        ]
        for row in self.rates():
            nh = row["harmful_refused"] + row["harmful_complied"]
            nb = row["benign_refused"] + row["benign_complied"]
            lines.append(
                f"  {row['probe_set']:<13} {row['category']:<13} {row['harmful_refused']:>8} "
                f"{row['harmful_complied']:>8} {row['benign_refused']:>8} {row['benign_complied']:>8}  "
                f"{_pct(row['harmful_refused'], nh):<18} {_pct(row['benign_refused'], nb):<18}"
            )
        attacks = self.attack_success()
        if attacks:
            lines += ["", "Attack success on harmful probes (answered / asked, Wilson 95%):"]
            for a in attacks:
                lines.append(f"  {a['transform']:<20} {a['k']:>4}/{a['n']:<4} {_pct(a['k'], a['n'])}")
        if self.results.problems:
            lines += [
                "",
                f"{len(self.results.problems)} line(s) of the file were skipped: "
                + "; ".join(f"line {n}: {m}" for n, m in self.results.problems[:3]),
            ]
        return "\n".join(lines)

    __str__ = to_text

    def __repr__(self) -> str:
        return f"Report({len(self.rows)} rows, model {self.results.model!r}, reveal={self.reveal})"

    # --- plots -------------------------------------------------------------------------------------

    def plot_rates(self, ax=None):
        """Refusal (harmful) and over-refusal (benign) rate per category, a bar per probe set and measure."""
        import matplotlib.pyplot as plt

        rows = self.rates()
        categories = sorted({r["category"] for r in rows})
        series = [
            (ps, key)
            for ps in self.probe_sets
            for key in ("refusal", "over_refusal")
            if any(r["probe_set"] == ps and r[key] == r[key] for r in rows)
        ]
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(8, 3.4))
        width = 0.8 / max(len(series), 1)
        colours = {"refusal": ["#4c72b0", "#8172b3"], "over_refusal": ["#dd8452", "#c44e52"]}
        for n, (ps, key) in enumerate(series):
            cells = {r["category"]: r for r in rows if r["probe_set"] == ps}
            xs, values, lows, highs = [], [], [], []
            for i, c in enumerate(categories):
                r = cells.get(c)
                if r is None or r[key] != r[key]:
                    continue
                xs.append(i - 0.4 + width * (n + 0.5))
                values.append(r[key])
                lows.append(max(r[key] - r[f"{key}_ci"][0], 0))
                highs.append(max(r[f"{key}_ci"][1] - r[key], 0))
            shade = colours[key][sum(1 for p, k in series[:n] if k == key) % 2]
            ax.bar(
                xs,
                values,
                width=width * 0.95,
                color=shade,
                yerr=[lows, highs],
                capsize=2,
                error_kw={"lw": 0.7},
                label=f"{'refusal of harmful' if key == 'refusal' else 'over-refusal of benign'} ({ps})",
            )
        ax.set_xticks(range(len(categories)), categories, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share refused")
        ax.set_title("Direct requests: refusal and over-refusal per category (Wilson 95%)", fontsize=10)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=max(len(series), 1), frameon=False)
        fig.tight_layout()
        return fig, ax

    def plot_attack_success(self, ax=None):
        """Attack success per transform (harmful probes answered), with Wilson 95% intervals."""
        import matplotlib.pyplot as plt

        attacks = self.attack_success()
        fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(6, 0.35 * len(attacks) + 1.2))
        names = [a["transform"] for a in attacks][::-1]
        rates = [a["rate"] for a in attacks][::-1]
        err = [
            [max(a["rate"] - a["ci"][0], 0) for a in attacks][::-1],
            [max(a["ci"][1] - a["rate"], 0) for a in attacks][::-1],
        ]
        colours = ["#c44e52" if r > 0.5 else "#8c8c8c" for r in rates]
        ax.barh(names, rates, xerr=err, color=colours, capsize=2, error_kw={"lw": 0.8})
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("attack success (harmful probes answered)")
        ax.set_title("Which transforms get through")
        fig.tight_layout()
        return fig, ax


def report(results, reveal: bool = False) -> Report:
    """A :class:`Report` of a :class:`~phi3lab.safety.results.Results` or a results file path."""
    return Report(results, reveal=reveal)
