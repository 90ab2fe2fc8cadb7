"""Response models of every route (they are the OpenAPI contract at /docs).

The contract depends on no service: services and routes import it, never the reverse. What a
constructor here reads from a service's result is a :class:`~typing.Protocol` of the fields it
reads (:class:`Outcome`, :class:`Explained`); the exam's and the audit log's answers are in
``exam_schemas.py`` and ``audit_schemas.py``.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from retina.assessment import Assessment
from retina.referral import DISCLAIMER

if TYPE_CHECKING:
    from retina.volume import VolumeAssessment

Task = Literal["oct", "fundus"]

_OCT_PROBS = {"CNV": 0.91, "DME": 0.04, "DRUSEN": 0.03, "NORMAL": 0.02}


class Refusal(Protocol):
    """A refused file of a batch: the domain error's stable ``code`` and its ``detail``."""

    code: str
    detail: str


class Outcome(Protocol):
    """One file of a batch as the pipeline answers it: its name and its assessment or refusal."""

    @property
    def filename(self) -> str | None: ...

    @property
    def result(self) -> Assessment | Refusal: ...


class Drawing(Protocol):
    """A CAM as the pipeline draws it: PNG bytes of the overlay and the heatmap, and what it explains."""

    @property
    def target(self) -> str: ...

    @property
    def method(self) -> str: ...

    @property
    def width(self) -> int: ...

    @property
    def height(self) -> int: ...

    @property
    def overlay_png(self) -> bytes: ...

    @property
    def heatmap_png(self) -> bytes | None: ...


class Explained(Protocol):
    """An explained image: the assessment /predict would answer and the CAM drawn for it."""

    @property
    def assessment(self) -> Assessment: ...

    @property
    def drawing(self) -> Drawing: ...


class ErrorResponse(BaseModel):
    """The one error body of the API."""

    error: str = Field(description="Stable machine-readable code, e.g. `unknown_model`, `file_too_large`.")
    detail: str = Field(description="Human-readable explanation (never a traceback).")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"error": "unsupported_media_type", "detail": "the file is not an image ..."}]}
    )


class DerivedProbabilities(BaseModel):
    """Binary DR probabilities derived from the 5 grade probabilities."""

    referable: float = Field(description="P(grade >= 2): moderate or worse, refer to an ophthalmologist.")
    any: float = Field(description="P(grade >= 1): any diabetic retinopathy.")


ReferralLevel = Literal[
    "urgent", "routine", "observation", "refer", "rescreen_12_months", "ungradable", "not_informative"
]


class GateInfo(BaseModel):
    """What the image gate found (see `retina/gate.py`)."""

    modality: Literal["oct", "fundus", "other"] = Field(description="Detected image kind.")
    gradable: bool = Field(description="False: the image is too dark, blurred, over-exposed or incomplete to grade.")
    reasons: list[str] = Field(default_factory=list, description="Why it is not gradable (empty when gradable).")
    probabilities: dict[str, float] = Field(
        default_factory=dict,
        description="The gate CNN's probability of each kind (oct, fundus, other); empty when the image was too "
        "small to look at.",
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Smallest probability at which each retinal kind is accepted (fitted for <= 1% false "
        "acceptance of photographs).",
    )
    quality: dict[str, float] = Field(default_factory=dict, description="Quality measures of the detected modality.")
    quality_grade: Literal["Good", "Usable", "Reject"] | None = Field(
        default=None,
        description="Learned quality grade of a fundus photo (EyeQ's Good / Usable / Reject); null for OCT, refusals "
        "and gates without a grader.",
    )
    quality_grade_probabilities: dict[str, float] = Field(
        default_factory=dict, description="The quality grade's probability of Good, Usable and Reject."
    )


class Referral(BaseModel):
    """Referral advice derived from the calibrated probabilities (thresholds: `RETINA_REFERRAL_*`).

    Every word in it is written by `retina/referral.py`, the one author of referral wording: a UI or a
    report prints `headline`, `advice` and `note` as given and writes none of its own.
    """

    level: ReferralLevel = Field(
        description="OCT: urgent (CNV/DME), routine (drusen), observation. Fundus: urgent (proliferative), "
        "refer (grade >= 2), rescreen_12_months. Any: ungradable (no assessment), not_informative."
    )
    headline: str = Field(
        description="The level's short title, one per level: `Urgent referral`, `Referral advised` (refer), "
        "`Routine referral`, `Observation`, `Rescreen in 12 months`, `Not gradable`, "
        "`No advice (model not informative)`."
    )
    advice: str = Field(description="What to do, in one sentence.")
    reason: str = Field(
        description="The probability and threshold that decided it, e.g. `P(grade >= 2) = 0.71 >= 0.50`."
    )
    probability: float | None = Field(default=None, description="The probability compared with the threshold.")
    threshold: float | None = None
    note: str = Field(description="The disclaimer (the same text as `GET /models`' `disclaimer`).")
    profile: str = Field(
        default="default",
        description="Which operating points decided it: a site profile's name (`site=`, `RETINA_DEFAULT_SITE`) or "
        "`default` (the model's own). Site profiles apply to fundus answers only; OCT answers always say `default`.",
    )


class PredictResponse(BaseModel):
    """One image's prediction (or, for an ungradable image, the reasons and no diagnosis)."""

    model: str = Field(description="Id of the model that answered (aliases are resolved).")
    model_version: str
    task: Task
    gradable: bool = Field(default=True, description="False: no diagnosis is given; see `gate.reasons`.")
    label: str | None = Field(
        description="Most probable class among those consistent with the referral (e.g. a referable grade when "
        "the advice is to refer); null when the image is not gradable."
    )
    confidence: float | None = Field(ge=0, le=1, description="Probability of `label`; null when not gradable.")
    probabilities: dict[str, float] | None = Field(
        description="Calibrated softmax probability per class, in model order; null when not gradable."
    )
    inference_ms: float = Field(description="Forward-pass time of the micro-batch this image was scored in, in ms.")
    derived: DerivedProbabilities | None = Field(
        default=None, description="For 5-grade DR models: referable / any-DR probabilities; else null."
    )
    referral: Referral | None = Field(
        default=None, description="Referral advice (null for models whose classes have no referral policy)."
    )
    gate: GateInfo | None = Field(default=None, description="Image gate result (null when the gate is disabled).")

    @classmethod
    def of(cls, result: Assessment, **extra: Any) -> PredictResponse:
        return cls(**result.to_dict(), **extra)

    model_config = ConfigDict(
        protected_namespaces=(),
        json_schema_extra={
            "examples": [
                {
                    "model": "oct-resnet18",
                    "model_version": "1.0.0",
                    "task": "oct",
                    "label": "CNV",
                    "confidence": 0.91,
                    "probabilities": _OCT_PROBS,
                    "inference_ms": 4.2,
                    "derived": None,
                }
            ]
        },
    )


class BatchItem(PredictResponse):
    """A successful entry of /predict/batch."""

    filename: str | None = None


class BatchError(BaseModel):
    """A failed entry of /predict/batch: the other files are still answered."""

    filename: str | None = None
    error: str
    detail: str


class BatchResponse(BaseModel):
    """Results in upload order."""

    results: list[BatchItem | BatchError]

    @classmethod
    def of(cls, outcomes: Sequence[Outcome]) -> BatchResponse:
        results: list[BatchItem | BatchError] = []
        for o in outcomes:
            if isinstance(o.result, Assessment):
                results.append(BatchItem.of(o.result, filename=o.filename))
            else:
                results.append(BatchError(filename=o.filename, error=o.result.code, detail=o.result.detail))
        return cls(results=results)

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "results": [
                        {
                            "filename": "scan1.jpeg",
                            "model": "oct-resnet18",
                            "model_version": "1.0.0",
                            "task": "oct",
                            "label": "CNV",
                            "confidence": 0.91,
                            "probabilities": _OCT_PROBS,
                            "inference_ms": 6.1,
                            "derived": None,
                        },
                        {"filename": "notes.txt", "error": "unsupported_media_type", "detail": "the file is not ..."},
                    ]
                }
            ]
        }
    )


class VolumeFrame(BaseModel):
    """One B-scan of a volume."""

    index: int = Field(description="0-based frame number in the DICOM file.")
    status: Literal["graded", "ungradable", "not_oct"] = Field(
        description="`graded`: scored; `ungradable` / `not_oct`: counted and skipped (see `reasons`)."
    )
    label: str | None = Field(description="This B-scan's own label (as /predict would answer); null when skipped.")
    probabilities: dict[str, float] | None = Field(description="This B-scan's calibrated probabilities.")
    reasons: list[str] = Field(default_factory=list, description="Why the B-scan was skipped.")


class VolumeResponse(BaseModel):
    """An OCT volume's answer: the volume first, then every B-scan."""

    model: str
    model_version: str
    task: Task
    gradable: bool = Field(description="False: too few gradable B-scans (`needed_graded`); no diagnosis.")
    label: str | None = Field(description="The volume's label, consistent with its referral; null when ungradable.")
    confidence: float | None = Field(ge=0, le=1, description="Volume probability of `label`.")
    probabilities: dict[str, float] | None = Field(
        description="Volume probability per class: the graded B-scans' probabilities aggregated by `rule`."
    )
    inference_ms: float = Field(description="Forward-pass time attributable to this volume's B-scans, in ms.")
    derived: DerivedProbabilities | None = None
    referral: Referral | None = Field(description="Referral advice for the volume (same thresholds as one image).")
    rule: Literal["mean", "top3_mean", "max", "noisy_or", "vote"] = Field(
        description="Aggregation rule (RETINA_VOLUME_RULE)."
    )
    rule_text: str = Field(description="The rule in words.")
    n_frames: int = Field(description="B-scans in the file.")
    n_graded: int = Field(description="B-scans scored.")
    n_ungradable: int = Field(description="B-scans the gate found ungradable (skipped).")
    n_not_oct: int = Field(description="B-scans the gate did not see as OCT (skipped).")
    needed_graded: int = Field(description="Fewest graded B-scans for a volume answer.")
    deciding_frames: list[int] = Field(
        description="0-based indices of the B-scans with the highest probability of `label`, highest first "
        "(at most 3); empty when ungradable."
    )
    frames: list[VolumeFrame] = Field(description="Every B-scan, in frame order.")

    model_config = ConfigDict(protected_namespaces=())

    @classmethod
    def of(cls, result: VolumeAssessment) -> VolumeResponse:
        return cls(**result.to_dict())


class GradcamResponse(BaseModel):
    """/gradcam?format=json."""

    model: str
    model_version: str
    label: str = Field(description="Predicted class (same as /predict for this image).")
    confidence: float
    probabilities: dict[str, float]
    target: str = Field(description="Class the heatmap explains (default: the predicted one).")
    method: str
    width: int
    height: int
    overlay_png: str = Field(description="Base64 PNG: heatmap blended over the image as the model saw it.")
    heatmap_png: str = Field(description="Base64 PNG: the colour-mapped heatmap alone (JET; red = most relevant).")
    referral: Referral | None = None
    gate: GateInfo | None = None

    model_config = ConfigDict(protected_namespaces=())

    @classmethod
    def of(cls, explained: Explained) -> GradcamResponse:
        body, drawing = explained.assessment.to_dict(), explained.drawing
        assert drawing.heatmap_png is not None
        return cls(
            model=body["model"],
            model_version=body["model_version"],
            label=body["label"],
            confidence=body["confidence"],
            probabilities=body["probabilities"],
            target=drawing.target,
            method=drawing.method,
            width=drawing.width,
            height=drawing.height,
            overlay_png=base64.b64encode(drawing.overlay_png).decode("ascii"),
            heatmap_png=base64.b64encode(drawing.heatmap_png).decode("ascii"),
            referral=body["referral"],
            gate=body["gate"],
        )


class Figure(BaseModel):
    """One headline figure of one evaluation, as the model card prints it."""

    key: str = Field(description="`accuracy`, `balanced_accuracy`, `macro_f1`, `referable_roc_auc`, `ece`, ...")
    label: str = Field(description="Readable name, e.g. `ECE after temperature scaling`.")
    value: float = Field(description="The figure, in [0, 1].")
    ci95: list[float] | None = Field(default=None, description="95% bootstrap interval over patients.")
    text: str = Field(description="How the card, the UI and the PDF print it: `0.921 [0.900, 0.940]`.")


class EvaluationFigures(BaseModel):
    """The headline figures of one evaluation set of the shipped file (a results section of its model card)."""

    name: str = Field(description="The card's key: `cv`, `test`, `idrid`, `external`, `val`, ...")
    kind: Literal["cv", "test", "validation", "held-out"]
    title: str = Field(description="What the set is, as the model card says.")
    heading: str = Field(description="The split and its size: `Test split (742 images, 371 patients)`.")
    n: int | None = None
    n_patients: int | None = None
    figures: list[Figure]


class SiteInfo(BaseModel):
    """A site profile for a fundus model (`site=<name>`): loaded, or rejected with the reason."""

    name: str
    loaded: bool
    default: bool = Field(default=False, description="Whether it is `RETINA_DEFAULT_SITE`.")
    error: str | None = Field(default=None, description="Why it was rejected (e.g. fitted for other weights).")
    profile: dict[str, Any] | None = Field(
        default=None,
        description="The profile as fitted (retina/site_profile.py `SiteProfile`): `temperature`, `refer` and "
        "`urgent` points with sensitivity / specificity and 95% CIs on the site's photos, `n_images`, "
        "`n_referable`, `n_patients`, `target_sensitivity`, the model identity, `created`.",
    )


class ModelInfo(BaseModel):
    """A servable model (or one that failed to load: `loaded` false and `error` set)."""

    id: str
    task: Task
    arch: str
    classes: list[str]
    input_size: int = Field(description="Side of the square model input in pixels.")
    channels: int = Field(description="1 = grayscale, 3 = RGB input.")
    version: str | None = Field(description="Checkpoint version; null when not loaded.")
    metrics: dict[str, Any] = Field(
        default_factory=dict,
        description="The training run's own record from the checkpoint (float32 weights before int8 storage, "
        "pooled splits). The shipped file's figures, which the model card, the UI and the PDF show, are `figures`.",
    )
    figures: list[EvaluationFigures] = Field(
        default_factory=list,
        description="The headline figures of each evaluation of the shipped file, in the model card's order "
        "(from the card stored in the checkpoint; from `metrics` when it has no card).",
    )
    default: bool = Field(description="Whether `?model=<task>` resolves to this model.")
    description: str = ""
    card: dict[str, Any] = Field(default_factory=dict, description="Model card from the checkpoint (data, limits).")
    temperature: float | None = Field(default=None, description="Softmax calibration temperature.")
    calibration: dict[str, Any] = Field(
        default_factory=dict,
        description="How the temperature was fitted and the expected calibration error before / after it "
        "(`ece_before`, `ece_after`, on the split named in `fitted_on`).",
    )
    operating_points: dict[str, Any] = Field(
        default_factory=dict,
        description="Referral operating points stored in the checkpoint (`refer`, `urgent`, `routine`): the "
        "threshold, where it was fitted and its sensitivity / specificity there and on check sets.",
    )
    served_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="The referral thresholds this service applies (a `RETINA_REFERRAL_*` setting overrides the "
        "checkpoint's operating point).",
    )
    operating_point_text: dict[str, str] = Field(
        default_factory=dict,
        description="Per referral threshold (`refer`, `urgent`, `routine`: the keys of `served_thresholds` and "
        "`operating_points`), the sentence a UI prints for it: the rule at the served threshold, where the "
        "operating point was chosen with its sensitivity / specificity and 95% intervals there and on its "
        "check sets, a `RETINA_REFERRAL_*` setting that overrides it, and the default site profile "
        "(`RETINA_DEFAULT_SITE`) that decides instead when one applies. E.g. `Refer when P(grade >= 2) >= "
        "0.108, chosen on <split>: sensitivity 0.92 [0.89, 0.96], specificity 0.33 [0.29, 0.38] (n = 1008, "
        "262 positive).`",
    )
    disclaimer: str = Field(
        default=DISCLAIMER,
        description="The disclaimer to show with this model's answers (the same text as every answer's "
        "`referral.note`).",
    )
    informative: bool = Field(
        default=True,
        description="False when the model's validated balanced-accuracy interval includes chance: its answers "
        "carry `referral.level: not_informative`.",
    )
    advice_note: str | None = Field(
        default=None,
        description="When this model's answers carry no referral advice, why, in the service's words (its validated "
        "accuracy is indistinguishable from chance, or its classes have no referral policy); null when they do.",
    )
    cam_layer: str | None = None
    sites: list[SiteInfo] = Field(
        default_factory=list,
        description="Site profiles fitted for this model (fundus only), loaded or rejected; profiles naming no "
        "served model are listed under the default fundus model.",
    )
    engine: dict[str, Any] | None = Field(
        default=None,
        description="What runs the forward pass (`RETINA_ENGINE`): `name` (torch, onnxruntime, onnxruntime-int8, "
        "openvino, openvino-int8), `requested`, `detail` (precision, parity / re-measured metrics) and `fallbacks` "
        "(engines that were tried and why they were not used). Grad-CAM always runs on torch.",
    )
    loaded: bool = True
    error: str | None = None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "oct-resnet18",
                    "task": "oct",
                    "arch": "simplecnn",
                    "classes": ["CNV", "DME", "DRUSEN", "NORMAL"],
                    "input_size": 128,
                    "channels": 1,
                    "version": "1.0.0",
                    "metrics": {"test_accuracy": 0.9},
                    "default": True,
                    "description": "Small CNN on OCT B-scans",
                    "card": {},
                    "temperature": 1.2,
                    "cam_layer": "features.3",
                    "loaded": True,
                    "error": None,
                }
            ]
        }
    )


class ModelStatus(BaseModel):
    id: str
    task: str | None
    loaded: bool
    version: str | None = None
    error: str | None = None


class UploadLimits(BaseModel):
    """The upload limits this service enforces; the UI shows and applies these, never its own."""

    max_upload_mb: float = Field(description="Largest accepted file, in MB (10^6 bytes): RETINA_MAX_UPLOAD_MB.")
    max_batch_files: int = Field(description="Most files in one /predict/batch call: RETINA_MAX_BATCH_FILES.")


class HealthResponse(BaseModel):
    """Liveness: the process answers. Always 200 while it runs."""

    status: Literal["ok"] = "ok"
    ready: bool = Field(description="Same as GET /ready returning 200.")
    models: list[ModelStatus]
    limits: UploadLimits


class ReadyResponse(BaseModel):
    status: Literal["ready"] = "ready"
    models: list[ModelStatus]
    limits: UploadLimits


class NotReadyResponse(ErrorResponse):
    """503 body of /ready: the error shape plus each model's status."""

    models: list[ModelStatus]
