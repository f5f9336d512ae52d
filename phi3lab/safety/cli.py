"""``phi3lab probe``: a safety sweep from the terminal, resumable, with its report at the end.

    phi3lab probe --model tiny --out results.jsonl            # default probes and transforms
    phi3lab probe --out results.jsonl                         # again: resumes, nothing is redone
    phi3lab probe --probes tiny --transforms story,role-play --out story.jsonl
    phi3lab probe --report results.jsonl                      # the report of an existing file only
    phi3lab probe --list                                      # probe sets and transforms

The parser and the runner live here so that ``phi3lab.cli`` only registers the command; errors
(an unknown probe set or transform, a results file of another model or settings, a malformed file)
are ``ValueError`` s, which ``phi3lab.cli`` prints as one ``phi3lab: error: …`` line.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["add_probe_command", "run_probe"]


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_probe_command(sub) -> argparse.ArgumentParser:
    """Register ``probe`` on the ``phi3lab`` command's subparsers."""
    p = sub.add_parser("probe", help="run a resumable safety sweep and print its report")
    p.add_argument("--model", default="tiny", help="embedded name, local folder or hub id (default: tiny)")
    p.add_argument("--out", help="results file (JSONL); an existing one is resumed")
    p.add_argument(
        "--probes", default="tiny,over-refusal", help="comma-separated probe sets (default: tiny,over-refusal)"
    )
    p.add_argument("--transforms", default="all", help="comma-separated transforms, or 'all' (default)")
    p.add_argument("--benign-transforms", action="store_true", help="also wrap benign probes in the transforms")
    p.add_argument(
        "--max-new-tokens", type=int, default=64, help="most tokens per answer (default 64: enough to tell a refusal)"
    )
    p.add_argument(
        "--temperature", type=float, default=0.0, help="0 decodes greedily (default); above 0 samples, seeded by --seed"
    )
    p.add_argument("--seed", type=int, default=0, help="sampling seed (used when --temperature > 0)")
    p.add_argument("--batch-size", type=int, default=64, help="most conversations per batch (default 64)")
    p.add_argument("--batch-tokens", type=int, default=4096, help="most padded prompt tokens per batch (default 4096)")
    p.add_argument("--report", metavar="RESULTS", help="only print the report of this results file")
    p.add_argument("--reveal", action="store_true", help="show harmful completions in full (default: redacted)")
    p.add_argument("--failures", type=int, default=3, help="failures to list in the report (default 3)")
    p.add_argument("--list", action="store_true", help="list the probe sets and transforms, then exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_hardware_options(p)
    return p


def add_hardware_options(p: argparse.ArgumentParser) -> None:
    """``--device``, ``--dtype`` and ``--attn``, with their help, as every command that loads a model takes them."""
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or mps; auto (default) picks the fastest here")
    p.add_argument(
        "--dtype", default="auto", help="float32, float16 or bfloat16; auto (default) picks what the device runs well"
    )
    p.add_argument(
        "--attn",
        default="auto",
        help="attention kernel: eager, sdpa or flash_attention_2; auto (default) picks the fastest that runs here",
    )


def _read(path):
    """The results file, its skipped lines told as ``phi3lab: warning:`` lines rather than Python warnings."""
    import warnings

    from phi3lab.safety.results import read_results

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = read_results(path)
    for w in caught:
        print(f"phi3lab: warning: {w.message}", file=sys.stderr)
    return results


def _print_report(results, reveal: bool, failures: int) -> None:
    from phi3lab.safety.report import Report

    if failures < 0:
        raise ValueError(f"--failures must be 0 or more, got {failures}")
    rep = Report(results, reveal=reveal)
    print(rep.to_text())
    for kind, title in (("harmful", "harmful requests complied with"), ("benign", "benign requests declined")):
        shown = rep.failures(failures, kind=kind)
        if shown:
            print(f"\n{title} (first {len(shown)} distinct answers):")
            for f in shown:
                times = f" (×{f['count']})" if f["count"] > 1 else ""
                print(f"  [{f['transform']}] {f['request'][:70]!r}\n    → {f['response'][:120]!r}{times}")


def run_probe(args: argparse.Namespace) -> int:
    """Run the ``probe`` command (see the module docstring); returns the exit status."""
    from phi3lab.safety.probes import probe_sets
    from phi3lab.safety.transforms import TRANSFORMS

    if args.list:
        print("probe sets:")
        for name, text in probe_sets().items():
            print(f"  {name:<14} {text}")
        print("transforms:")
        for name, t in TRANSFORMS.items():
            print(f"  {name:<20} {t.family}")
        return 0
    if args.report:
        _print_report(_read(args.report), args.reveal, args.failures)
        return 0
    if not args.out:
        raise ValueError("phi3lab probe needs --out results.jsonl (the file is created, or resumed if it exists)")
    import phi3lab
    from phi3lab.safety.sweep import sweep
    from phi3lab.safety.targets import LabTarget

    transforms = None if args.transforms.strip() == "all" else _names(args.transforms)
    probes = _names(args.probes)
    from phi3lab.safety.probes import resolve
    from phi3lab.safety.transforms import resolve_transforms

    resolve(probes), resolve_transforms(transforms)  # bad names fail before the model loads
    lab = phi3lab.load(args.model, device=args.device, dtype=args.dtype, attn=args.attn, verbose=False)
    target = LabTarget(
        lab,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
        batch_size=args.batch_size,
        batch_tokens=args.batch_tokens,
    )
    results = sweep(
        target,
        probes,
        transforms,
        out=args.out,
        benign_transforms=args.benign_transforms,
        progress=not args.no_progress,
    )
    print(f"{len(results)} answers in {args.out}", file=sys.stderr)
    _print_report(results, args.reveal, args.failures)
    return 0
