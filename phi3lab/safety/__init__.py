"""Safety probing: probe sets, jailbreak transforms, a refusal detector, resumable sweeps, reports
and the refusal direction.

    import phi3lab
    from phi3lab import safety

    lab = phi3lab.load("tiny")
    results = safety.sweep(lab, out="results.jsonl")      # default probes and transforms; resumes
    report = safety.report(results)                        # declined / off-topic / complied, rates, attack success
    print(report.to_text())
    safety.refusal("I'm sorry, but I can't help with that.")   # Verdict(label='declined', ...)

The parts are small and separate: :mod:`~phi3lab.safety.probes` (sets with a manifest),
:mod:`~phi3lab.safety.transforms`, :mod:`~phi3lab.safety.refusal` (the three-way detector, calibrated
by ``python -m phi3lab.safety.calibrate``), :mod:`~phi3lab.safety.targets` (what a sweep talks to),
:mod:`~phi3lab.safety.sweep` and :mod:`~phi3lab.safety.results` (durable, resumable JSONL),
:mod:`~phi3lab.safety.report`, :mod:`~phi3lab.safety.direction` (Arditi et al. 2024),
:mod:`~phi3lab.safety.endpoint` (OpenAI-compatible servers), :mod:`~phi3lab.safety.image_probes`, and
:mod:`~phi3lab.safety.compare` (two sweeps row by row, each difference a near-tie or a disagreement).
"""

from phi3lab.safety.probes import DEFAULT_PROBES, Probe, ProbeSet, ProbeSetError, load_probes, probe_sets
from phi3lab.safety.refusal import Verdict, first_token_scores, refusal
from phi3lab.safety.report import Report, redact, report, wilson
from phi3lab.safety.results import (
    Results,
    ResultsFileError,
    ResultsFileWarning,
    ResultsMismatchError,
    read_results,
)
from phi3lab.safety.sweep import SafetyGuardError, sweep
from phi3lab.safety.targets import LabTarget, Target
from phi3lab.safety.transforms import DEFAULT_TRANSFORMS, TRANSFORMS, Transform, TransformError, transform

__all__ = [
    "DEFAULT_PROBES",
    "DEFAULT_TRANSFORMS",
    "LabTarget",
    "Probe",
    "ProbeSet",
    "ProbeSetError",
    "Report",
    "Results",
    "ResultsFileError",
    "ResultsFileWarning",
    "ResultsMismatchError",
    "SafetyGuardError",
    "TRANSFORMS",
    "Target",
    "Transform",
    "TransformError",
    "Verdict",
    "first_token_scores",
    "load_probes",
    "probe_sets",
    "read_results",
    "redact",
    "refusal",
    "report",
    "sweep",
    "transform",
    "wilson",
]
