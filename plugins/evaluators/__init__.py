"""First-party evaluators: the linear probe of the downstream protocol, cross-modal retrieval, the recording-level
probe and the probe's robustness to sensor perturbations."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field, PositiveInt

from detach_framework.contracts import EmbeddingSet, EvalContext, EvalResult
from detach_framework.evaluation import recall_at_k
from detach_framework.plugins import hookimpl
from detach_framework.registry import ComponentParams, Register

from .linear_probe import CONFUSION_PNG, LinearProbeEvaluator, LinearProbeParams
from .recording_probe import RecordingProbeEvaluator, RecordingProbeParams
from .robustness import RobustnessEvaluator, RobustnessParams, report_sections

if TYPE_CHECKING:
    from detach_framework.report import ReportContext, Section

__all__ = [
    "CONFUSION_PNG",
    "LinearProbeEvaluator",
    "LinearProbeParams",
    "RecordingProbeEvaluator",
    "RecordingProbeParams",
    "RetrievalEvaluator",
    "RetrievalParams",
    "RobustnessEvaluator",
    "RobustnessParams",
]


class RetrievalParams(ComponentParams):
    ks: list[PositiveInt] = Field(
        default_factory=lambda: [1, 5, 10],
        min_length=1,
        max_length=64,
        description="Cut-offs k of recall@k (a k above the test size counts as the test size).",
    )


class RetrievalEvaluator:
    """Video->sensor and sensor->video recall@k on the test split's paired joint-space embeddings."""

    def __init__(self, params: RetrievalParams) -> None:
        self.params = params

    def evaluate(self, train: EmbeddingSet, test: EmbeddingSet, ctx: EvalContext) -> EvalResult:
        return EvalResult(metrics=recall_at_k(test.video, test.sensor, self.params.ks))


@hookimpl
def detach_register_components(register: Register) -> None:
    register(
        kind="evaluator",
        name="linear_probe",
        factory=LinearProbeEvaluator,
        params=LinearProbeParams,
        description="Linear probe on frozen sensor features: weighted F1, macro mAP, accuracy, confusion.",
    )
    register(
        kind="evaluator",
        name="retrieval",
        factory=RetrievalEvaluator,
        params=RetrievalParams,
        description="Cross-modal retrieval recall@k (video->sensor and sensor->video) on the test split.",
    )
    register(
        kind="evaluator",
        name="recording_probe",
        factory=RecordingProbeEvaluator,
        params=RecordingProbeParams,
        description="Recording-level linear probe on the mean of each recording's window features (HWU-USP).",
    )
    register(
        kind="evaluator",
        name="robustness",
        factory=RobustnessEvaluator,
        params=RobustnessParams,
        description="The linear probe on perturbed sensor windows (a fixture silenced, a clock offset, more noise): "
        "weighted F1 and macro mAP per condition, a table and a figure.",
    )


@hookimpl
def detach_report_sections(context: ReportContext) -> list[Section]:
    """The robustness evaluator's table and figure, for each of the run's summaries holding one."""
    return report_sections(context)
