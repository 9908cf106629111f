"""Analysis options for an SNR map, and MR Optimum job JSON accepted unchanged.

``MrOptions`` is the flow parameter ``options``: every field is typed, bounded and described,
so the Prefect UI renders it as a form. ``parse_job`` turns what a user pastes (our own
options, an MR Optimum job, or the MR Optimum web GUI's wrapper, as a mapping or JSON text)
into ``MrOptions`` plus the file references the job names. A pasted job that carries a
credential (the GUI's bearer token, a presigned URL) is refused, since Prefect has already
stored it as a parameter; ``load_job`` reads a job from a file in storage and drops its
credentials instead (``tasks.credentials``).

MR Optimum job layout (``mrotools/snr.py``; primer section 8)::

    {"version": "v0", "acquisition": 2, "type": "SNR", "name": "PMR",
     "options": {"NR": 20, "boxSize": 2,
                 "reconstructor": {"name": "SENSE", "options": {
                     "signal": {"options": {"type": "s3", "bucket": ..., "key": ...}},
                     "noise": {...}, "sensitivityMap": {"options": {
                         "sensitivityMapMethod": "inner", "mask": {"method": "no"}}},
                     "decimate": true, "accelerations": [1, 2], "acl": [null, 24],
                     "kernelSize": [3, 4]}}}}

The GUI wraps that job as ``{"version", "alias", "output": {"coilsensitivity", "gfactor",
"matlab"}, "task": {job}}``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from tasks.credentials import find_credentials, refuse_credentials, without_credentials
from tasks.errors import InputError, describe_validation
from tasks.forms import plain_optional_fields
from tasks.mr.arrays import device_problem

if TYPE_CHECKING:
    from tasks.mr.snr import ReconSpec, SnrSpec

Method = Literal["ac", "mr", "pmr", "cr"]
Recon = Literal["rss", "b1", "sense", "grappa"]
Sensitivity = Literal["inner", "inneracl", "espirit"]
Mask = Literal["no", "reference", "threshold", "percentage", "percentagemean", "espirit"]
Convention = Literal["physical", "mroptimum"]
Source = Literal["sciflow", "mroptimum-job", "mroptimum-gui"]

METHODS: tuple[str, ...] = ("ac", "mr", "pmr", "cr")
RECONS: tuple[str, ...] = ("rss", "b1", "sense", "grappa")
SENSITIVITIES: tuple[str, ...] = ("inner", "inneracl", "espirit")
MASKS: tuple[str, ...] = ("no", "reference", "threshold", "percentage", "percentagemean", "espirit")
MASKS_WITH_VALUE: tuple[str, ...] = ("threshold", "percentage", "percentagemean")

DEFAULT_REPLICAS = 20  # MR Optimum GUI default NR for PMR (setupSlice.ts)
DEFAULT_BOX_SIZE = 2  # MR Optimum's class default and generate.py's boxSize
DEFAULT_GRAPPA_KERNEL = (3, 4)  # tasks.mr.snr.ReconSpec default, tasks.mr.grappa geometry
MRO_GRAPPA_KERNEL = (4, 4)  # mrotools/snr.py default kernelSize (pygrappa geometry)
MRO_VERSION = "v0"
MRO_ACQUISITION = 2

Factor = Annotated[int, Field(ge=1, le=16)]
AclLines = Annotated[int, Field(ge=2, le=4096)]
KernelSize = Annotated[int, Field(ge=1, le=15)]
MAX_SLICE = 100_000  # more slices (or 3D x positions) than any scanner acquires
SliceIndex = Annotated[int, Field(ge=0, le=MAX_SLICE)]


class MrOptions(BaseModel):
    """How to compute an SNR map: method, reconstruction, coil maps and outputs.

    Example: ``MrOptions(method="pmr", recon="sense", acceleration=(1, 2), decimate=True)``.
    """

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        title="SNR analysis options",
        json_schema_extra=plain_optional_fields,
    )

    method: Method = Field(
        "ac",
        title="SNR method",
        description=(
            "How SNR is measured: ac = array combining (analytic, Kellman & McVeigh; needs "
            "noise), mr = multiple replicas (the data's own repetitions), pmr = pseudo multiple "
            "replicas (Robson; synthetic noise added to the data), cr = box-car 'CR' "
            "(pseudo replicas with a local standard deviation over a box)."
        ),
    )
    recon: Recon = Field(
        "rss",
        title="Reconstruction",
        description=(
            "Coil combination: rss = root sum of squares, b1 = Roemer B1-weighted, sense = "
            "SENSE unfolding, grappa = GRAPPA k-space filling then RSS."
        ),
    )
    sensitivity: Sensitivity = Field(
        "inner",
        title="Coil sensitivity maps",
        description=(
            "Coil maps for b1 and sense: inner = from the (prewhitened) reference images, "
            "inneracl = the same from the central calibration block, espirit = ESPIRiT maps."
        ),
    )
    mask: Mask = Field(
        "no",
        title="Sensitivity mask",
        description=(
            "Mask multiplied into the coil maps (b1 and sense): no, reference (RSS > mean - std), "
            "threshold (> mask_value), percentage (> max * mask_value / 100), percentagemean "
            "(> mean * mask_value, a fraction) or espirit."
        ),
    )
    mask_value: float | None = Field(
        None,
        ge=0,
        title="Mask value",
        description=(
            "Threshold for the threshold, percentage and percentagemean masks; empty for the "
            "others. MR Optimum's GUI default for percentage is 10."
        ),
    )
    acceleration: tuple[Factor, Factor] | None = Field(
        None,
        title="Acceleration (R_freq, R_phase)",
        description=(
            "Undersampling factors (readout, phase) for sense and grappa; for 3D data the "
            "(y, z) factors of each readout position's plane; empty = read from the raw data "
            "header."
        ),
        examples=[[1, 2]],
    )
    acl: tuple[AclLines | None, AclLines | None] | None = Field(
        None,
        title="Calibration lines (freq, phase)",
        description=(
            "Size of the central autocalibration block (readout, phase); an empty entry is the "
            "full extent; empty altogether = from the raw data header."
        ),
        examples=[[None, 24]],
    )
    decimate: bool = Field(
        False,
        title="Mimic acceleration",
        description=(
            "Undersample fully sampled data: keep every R-th line from 0 and use the central "
            "calibration block as the reference (MR Optimum's decimate)."
        ),
    )
    grappa_kernel: tuple[KernelSize, KernelSize] = Field(
        DEFAULT_GRAPPA_KERNEL,
        title="GRAPPA kernel (readout taps, source lines)",
        description=(
            "GRAPPA kernel for grappa: readout neighbours and *acquired* source lines "
            "(tasks.mr.grappa geometry; MR Optimum's kernelSize counts grid lines, holes "
            "included, so its [4, 4] at R = 2 is (4, 2) here). Default "
            f"{list(DEFAULT_GRAPPA_KERNEL)}."
        ),
    )
    replicas: int = Field(
        DEFAULT_REPLICAS,
        ge=2,
        le=100_000,
        title="Pseudo replicas (NR)",
        description=(
            f"Number of pseudo replicas for pmr and cr (MR Optimum's NR; GUI default "
            f"{DEFAULT_REPLICAS}). Per-pixel SNR error is about 1/sqrt(2 (NR - 1)): 16% at 20, "
            "7% at 100."
        ),
    )
    box_size: int = Field(
        DEFAULT_BOX_SIZE,
        ge=1,
        le=64,
        title="CR box half-width",
        description=(
            f"Half-width b of the (2b+1) x (2b+1) box for cr (MR Optimum's boxSize; default "
            f"{DEFAULT_BOX_SIZE} as its generator)."
        ),
    )
    gfactor: bool = Field(
        False,
        title="g-factor maps",
        description="Also write g and 1/g maps (sense and grappa).",
    )
    coil_sensitivity_output: bool = Field(
        False,
        title="Write coil maps",
        description="Also write the coil sensitivity maps and mask (b1 and sense).",
    )
    convention: Convention = Field(
        "physical",
        title="Noise convention",
        description=(
            "physical = noise covariance scaled to the signal's sampling (dwell, oversampling, "
            "bandwidth), or without a noise scan estimated from signal-free samples (readout "
            "margins, else background corners); mroptimum = MR Optimum's Psi / (2 NBW), which "
            "reads about 1.41x high on equally sampled data but reproduces its numbers, and "
            "Psi = I (raw ADC units) without a noise scan."
        ),
    )
    seed: int = Field(
        0,
        ge=0,
        le=2**63 - 1,
        title="Random seed",
        description="Seed of the pseudo-replica noise: the same seed gives the same map.",
    )
    slices: list[SliceIndex] | None = Field(
        None,
        min_length=1,
        max_length=MAX_SLICE + 1,
        title="Slices",
        description="Slice indices to compute, counted from 0; empty = all slices.",
    )
    flip_angle_correction: bool = Field(
        False,
        title="Flip-angle correction",
        description=(
            "Divide SNR by sin(flip angle map), as legacy MR Optimum (MATLAB) did; needs "
            "flip_angle_map."
        ),
    )
    flip_angle_map: str | None = Field(
        None,
        min_length=1,
        title="Flip-angle map",
        description="URI of a NIfTI flip-angle map in degrees (s3://..., file://... or a path).",
    )
    layout: Literal["slices", "replicas", "volume"] = Field(
        "slices",
        title="Array layout",
        description=(
            "What a NumPy/MATLAB array's axes after (x, y, coils) mean: slices = (slices[, "
            "replicas]); replicas = MR Optimum's (x, y, coils, replicas); volume = 3D Cartesian "
            "(x, y, z, coils[, replicas]). MRD and twix files say it themselves."
        ),
    )
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        title="Compute device",
        description=(
            "cpu = NumPy (default, everything); cuda = PyTorch on the GPU for every method with "
            "rss, b1 or sense, not grappa (pmr/cr pseudo-noise from torch's generator: same "
            "statistics, other numbers)."
        ),
    )

    @field_validator("flip_angle_map", mode="before")
    @classmethod
    def _empty_map_is_none(cls, value: Any) -> Any:
        """An empty form field: no map."""
        return value or None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = _problems(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def recon_spec(
        self,
        *,
        header_acceleration: tuple[int, int] | None = None,
        header_acl: tuple[int | None, int | None] | None = None,
    ) -> ReconSpec:
        """The numerics-level reconstruction settings (``tasks.mr.snr.ReconSpec``).

        Args:
            header_acceleration: (R_freq, R_phase) from the raw data header, used when
                ``acceleration`` is empty; ``ReconSpec``'s default (1, 1) when both are.
            header_acl: Calibration block from the header, used when ``acl`` is empty;
                ``ReconSpec``'s default (None, 24) when both are.
        """
        from tasks.mr.snr import ReconSpec

        known: dict[str, Any] = {}
        if (acceleration := self.acceleration or header_acceleration) is not None:
            known["acceleration"] = tuple(acceleration)
        if (acl := self.acl if self.acl is not None else header_acl) is not None:
            known["acl"] = tuple(acl)
        return ReconSpec(
            recon=self.recon,
            sensitivity=self.sensitivity,
            mask=self.mask,
            mask_value=self.mask_value,
            decimate=self.decimate,
            grappa_kernel=tuple(self.grappa_kernel),
            **known,
        )

    def snr_spec(self, *, batch: int = 16) -> SnrSpec:
        """The numerics-level SNR settings (``tasks.mr.snr.SnrSpec``).

        Args:
            batch: Pseudo replicas reconstructed at once (memory grows with it).
        """
        from tasks.mr.snr import SnrSpec

        return SnrSpec(
            method=self.method,
            replicas=self.replicas,
            box_size=self.box_size,
            convention=self.convention,
            gfactor=self.gfactor,
            seed=self.seed,
            batch=batch,
            device=self.device,
        )


def _problems(o: MrOptions) -> list[str]:
    """Cross-field inconsistencies, each naming its field."""
    problems: list[str] = []
    accelerated = o.recon in ("sense", "grappa")
    if problem := device_problem(o.device, o.recon):
        problems.append(problem)
    with_maps = o.recon in ("b1", "sense")
    if accelerated and o.acceleration == (1, 1) and not o.decimate:
        problems.append(
            f"acceleration=(1, 1) leaves recon={o.recon!r} nothing to unfold; set acceleration > 1 "
            "(e.g. (1, 2)), decimate=True, or leave acceleration empty to read it from the header"
        )
    if not accelerated:
        if o.acceleration not in (None, (1, 1)):
            problems.append(
                f"acceleration={o.acceleration} applies to recon 'sense' or 'grappa', "
                f"not {o.recon!r}"
            )
        if o.decimate:
            problems.append(f"decimate=True applies to recon 'sense' or 'grappa', not {o.recon!r}")
    if o.acl is not None and o.recon == "rss":
        problems.append(f"acl={o.acl} applies to recon 'b1', 'sense' or 'grappa', not 'rss'")
    if o.recon != "grappa" and o.grappa_kernel != DEFAULT_GRAPPA_KERNEL:
        problems.append(f"grappa_kernel={o.grappa_kernel} applies to recon 'grappa' only")
    if not with_maps and (o.sensitivity != "inner" or o.mask != "no"):
        problems.append(
            f"sensitivity={o.sensitivity!r} and mask={o.mask!r} apply to recon 'b1' or 'sense' "
            f"(coil maps); {o.recon!r} uses none: leave them at 'inner' and 'no'"
        )
    if o.mask in MASKS_WITH_VALUE and o.mask_value is None:
        problems.append(f"mask_value is required for mask={o.mask!r}")
    if o.mask not in MASKS_WITH_VALUE and o.mask_value is not None:
        problems.append(
            f"mask_value={o.mask_value} is read only for mask 'threshold', 'percentage' or "
            f"'percentagemean', not {o.mask!r}"
        )
    if o.mask == "percentage" and o.mask_value is not None and not 0 < o.mask_value <= 100:
        problems.append(f"mask_value={o.mask_value} must be in (0, 100] for mask='percentage'")
    if o.method not in ("pmr", "cr") and o.replicas != DEFAULT_REPLICAS:
        reason = "mr uses the data's repetitions" if o.method == "mr" else "ac is analytic"
        problems.append(
            f"replicas={o.replicas} applies to method 'pmr' or 'cr' ({reason}); "
            f"leave it at {DEFAULT_REPLICAS}"
        )
    if o.method != "cr" and o.box_size != DEFAULT_BOX_SIZE:
        problems.append(
            f"box_size={o.box_size} applies to method 'cr' only; leave it at {DEFAULT_BOX_SIZE}"
        )
    if o.gfactor and not accelerated:
        problems.append(f"gfactor=True needs recon 'sense' or 'grappa', not {o.recon!r}")
    if o.coil_sensitivity_output and not with_maps:
        problems.append(
            f"coil_sensitivity_output=True needs recon 'b1' or 'sense' (coil maps), not {o.recon!r}"
        )
    if o.flip_angle_correction and o.flip_angle_map is None:
        problems.append("flip_angle_correction=True needs flip_angle_map (a NIfTI URI)")
    if o.flip_angle_map is not None and not o.flip_angle_correction:
        problems.append("flip_angle_map is read only with flip_angle_correction=True")
    if o.slices is not None and len(set(o.slices)) != len(o.slices):
        problems.append(f"slices={o.slices} repeats an index")
    return problems


@dataclass(frozen=True)
class ParsedJob:
    """What a pasted job asks for: the options, and the files and outputs it names.

    Attributes:
        options: The analysis options; MR Optimum jobs get ``convention="mroptimum"``.
        signal: URI of the signal raw data (``s3://bucket/key`` or a local path), if named.
        noise: URI of the noise raw data, if named (None with ``multiraid``: noise comes
            from the signal file's noise-adjust raid).
        outputs: The GUI's output flags ``coilsensitivity``, ``gfactor`` and ``matlab``.
        vendor: Raw data vendor as the job names it, lower case (``siemens``, ``numpy``,
            ``matlab``), if any.
        key: Array name inside a NumPy ``.npz`` (``npz_key``) or MATLAB file (``mat_key``).
        source: ``sciflow`` (our options), ``mroptimum-job`` or ``mroptimum-gui``.
        multiraid: Noise comes from the signal file's first raid (Siemens multi-raid).
        orientation: ``{spacing, origin, direction, fov}`` of NumPy/MATLAB inputs, if given.
        reference: URI of a separate calibration/reference file, if given.
        alias: The GUI's job name.
        job: The job as given, secrets (the GUI's bearer token, presigned URLs) redacted;
            MR Optimum writes it into info.json ``headers.options``.
        notes: What was changed or ignored while reading the job, one sentence each.
    """

    options: MrOptions
    signal: str | None = None
    noise: str | None = None
    outputs: dict[str, bool] = field(default_factory=dict)
    vendor: str | None = None
    key: str | None = None
    source: Source = "sciflow"
    multiraid: bool = False
    orientation: dict[str, Any] | None = None
    reference: str | None = None
    alias: str | None = None
    job: dict[str, Any] | None = None
    notes: tuple[str, ...] = ()


def parse_job(
    value: MrOptions | Mapping[str, Any] | str | None,
    *,
    convention: Convention | None = None,
) -> ParsedJob:
    """Read analysis options from what a user pastes.

    Accepts ``MrOptions`` or its dict; an MR Optimum job ``{version, acquisition, type, id,
    name, options}``; the GUI wrapper ``{version, alias, output, task}``; JSON text of any
    of these; or None (the defaults). Names are case-insensitive (``PMR``/``pmr``,
    ``SENSE``/``sense``). MR Optimum jobs get ``convention="mroptimum"`` so that an old job
    gives the same numbers; ``convention`` overrides that.

    A job that carries a credential (a bearer token, a presigned URL, under any key) is
    refused: ``load_job`` reads one from storage and drops them instead.

    Raises:
        InputError: One line naming the key, the value and what is expected; for a
            credential, its JSON path and kind, never its value.
    """
    if isinstance(value, str):
        value = _loads(value)
    if isinstance(value, Mapping):
        refuse_credentials(value, what="options", fix=JOB_BY_URI_FIX, path="options")
    if value is None:
        options = MrOptions() if convention is None else MrOptions(convention=convention)
        return _from_options(options)
    if isinstance(value, MrOptions):
        return _from_options(value if convention is None else _replace(value, convention))
    if not isinstance(value, Mapping):
        raise InputError(
            f"options is a {type(value).__name__}; expected MrOptions, a mapping or JSON text"
        )
    task = value.get("task")
    if isinstance(task, Mapping):
        return _from_job(task, wrapper=value, convention=convention)
    if {"options", "version", "acquisition"} & value.keys():
        return _from_job(value, wrapper=None, convention=convention)
    data = dict(value)
    if convention is not None:
        data["convention"] = convention
    return _from_options(_validate(data, "options", _field_name))


JOB_BY_URI_FIX = (
    "the Prefect server keeps flow-run parameters for anyone who may read the run, so pass "
    "the MR Optimum job by URI (job='s3://bucket/job.json' or a local .json path: its "
    "credentials are dropped when it is read) or paste it without its token and presigned URLs"
)
FILE_BY_URI_FIX = (
    "the Prefect server keeps flow-run parameters for anyone who may read the run, so name "
    "files by storage URI (s3://bucket/key, which the unit's role reads, or a local path), "
    "never by presigned URL"
)
JOB_FILE_LIMIT = 1 << 20  # bytes: an MR Optimum job is a few kB of JSON


def refuse_pasted_credentials(parameters: Mapping[str, Any]) -> None:
    """Refuse flow parameters that carry a credential, naming where (values never shown).

    ``options`` given as JSON text is read first, so the path goes inside the job; as an
    ``MrOptions``, its fields are checked.

    Raises:
        InputError: One line naming each credential's parameter path and kind, and how to
            pass the job or file instead.
    """
    values: dict[str, Any] = {}
    for name, value in parameters.items():
        if isinstance(value, MrOptions):
            value = value.model_dump(mode="json")
        elif isinstance(value, str) and value.lstrip().startswith(("{", "[")):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # checked as text; parse_job names the JSON error
        values[name] = value
    found = find_credentials(values)
    if not found:
        return
    in_job = any(c.path.startswith(("options", "job")) for c in found)
    refuse_credentials(values, what="parameters", fix=JOB_BY_URI_FIX if in_job else FILE_BY_URI_FIX)


def is_job_uri(value: Any) -> bool:
    """Whether the ``options`` parameter names a job file rather than holding one.

    ``s3://…`` and ``file://…`` URIs, and local paths ending in ``.json``; JSON text never.
    """
    if not isinstance(value, str):
        return False
    text = value.strip()
    if not text or text.startswith(("{", "[")):
        return False
    return text.startswith(("s3://", "file://")) or text.lower().endswith(".json")


def load_job(
    uri: str, read: Callable[[str], bytes], *, convention: Convention | None = None
) -> ParsedJob:
    """A job read from a file in storage, with its credentials dropped before it is parsed.

    What the file holds is never stored as a flow-run parameter, so it may carry the GUI's
    token and presigned URLs; they are replaced by ``REDACTED`` (``without_credentials``)
    before anything else sees the job, and one note names their paths.

    Args:
        uri: Where the job is (``s3://bucket/job.json``, ``file://…`` or a path).
        read: Reads a URI's bytes (``ObjectStore.read_bytes``: the unit's storage access).
        convention: As for ``parse_job``.

    Raises:
        InputError: The file is larger than ``JOB_FILE_LIMIT``, is not JSON, or is not a
            job ``parse_job`` accepts.
    """
    data = read(uri)
    if len(data) > JOB_FILE_LIMIT:
        raise InputError(
            f"options={uri!r} is {len(data)} bytes; expected a job of at most "
            f"{JOB_FILE_LIMIT} bytes of JSON"
        )
    try:
        value = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(
            f"options={uri!r} is not JSON ({exc.__class__.__name__}); expected a job"
        ) from None
    if not isinstance(value, Mapping):
        raise InputError(f"options={uri!r} holds a {type(value).__name__}; expected a JSON object")
    found = find_credentials(value)
    parsed = parse_job(without_credentials(value), convention=convention)
    if not found:
        return parsed
    dropped = f"credentials dropped from the job file: {', '.join(c.path for c in found)}"
    return replace(parsed, notes=(*parsed.notes, dropped))


def _loads(text: str) -> Any:
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"options is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None


def _replace(options: MrOptions, convention: Convention) -> MrOptions:
    return _validate({**options.model_dump(), "convention": convention}, "options", _field_name)


def _from_options(options: MrOptions) -> ParsedJob:
    outputs = {
        "coilsensitivity": options.coil_sensitivity_output,
        "gfactor": options.gfactor,
        "matlab": False,
    }
    return ParsedJob(options=options, outputs=outputs, source="sciflow")


def _validate(data: Mapping[str, Any], what: str, name_of: Callable[[str], str]) -> MrOptions:
    try:
        return MrOptions.model_validate(data)
    except ValidationError as exc:
        raise InputError(f"{what}: {_one_line(exc, name_of)}") from None


def _one_line(exc: ValidationError, name_of: Callable[[str], str]) -> str:
    """``describe_validation`` for field errors; the model validator's text as it is."""
    errors = exc.errors()
    whole = [str(e["msg"]).removeprefix("Value error, ") for e in errors if not e["loc"]]
    fields = [e for e in errors if e["loc"]]
    parts = [describe_validation(SimpleNamespace(errors=lambda: fields), name_of)] if fields else []
    return "; ".join(parts + whole)


# Where each MrOptions field comes from in an MR Optimum job, for error messages.
_RECON_OPTIONS = "options.reconstructor.options"
_SENSITIVITY_OPTIONS = f"{_RECON_OPTIONS}.sensitivityMap.options"
JOB_KEYS: dict[str, str] = {
    "method": "name",
    "recon": "options.reconstructor.name",
    "sensitivity": f"{_SENSITIVITY_OPTIONS}.sensitivityMapMethod",
    "mask": f"{_SENSITIVITY_OPTIONS}.mask.method",
    "mask_value": f"{_SENSITIVITY_OPTIONS}.mask.value",
    "acceleration": f"{_RECON_OPTIONS}.accelerations",
    "acl": f"{_RECON_OPTIONS}.acl",
    "decimate": f"{_RECON_OPTIONS}.decimate",
    "grappa_kernel": f"{_RECON_OPTIONS}.kernelSize",
    "replicas": "options.NR",
    "box_size": "options.boxSize",
    "gfactor": "output.gfactor",
    "coil_sensitivity_output": "output.coilsensitivity",
    "flip_angle_correction": f"{_RECON_OPTIONS}.correction.useCorrection",
    "flip_angle_map": f"{_RECON_OPTIONS}.correction.faCorrection",
}


def _field_name(path: str, names: Mapping[str, str] | None = None) -> str:
    """``acceleration.0`` -> ``acceleration[0]``, the head renamed through ``names``."""
    head, *index = path.split(".")
    key = (names or {}).get(head, head)
    return key + "".join(f"[{part}]" for part in index)


def _job_key(path: str) -> str:
    return _field_name(path, JOB_KEYS)


def _get(mapping: Mapping[str, Any] | None, *names: str) -> Any:
    """The first of ``names`` present in ``mapping``, matched case-insensitively."""
    if not isinstance(mapping, Mapping):
        return None
    lowered = {str(k).lower(): v for k, v in mapping.items()}
    for name in names:
        if name in mapping:
            return mapping[name]
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _choice(value: Any, key: str, allowed: tuple[str, ...], shown: tuple[str, ...]) -> str:
    name = str(value).strip().lower() if isinstance(value, str) else None
    if name not in allowed:
        missing = " is missing" if value is None else f"={value!r} is not recognised"
        raise InputError(f"MR Optimum job: {key}{missing}; expected one of {', '.join(shown)}")
    return name


def _from_job(
    job: Mapping[str, Any], *, wrapper: Mapping[str, Any] | None, convention: Convention | None
) -> ParsedJob:
    notes: list[str] = []
    version = _get(job, "version")
    if version is None and wrapper is not None:
        version = _get(wrapper, "version")
    if version != MRO_VERSION:
        got = " is missing" if version is None else f"={version!r} is not supported"
        raise InputError(f"MR Optimum job: version{got}; expected {MRO_VERSION!r}")
    acquisition = _get(job, "acquisition")
    if isinstance(acquisition, bool) or acquisition != MRO_ACQUISITION:
        got = " is missing" if acquisition is None else f"={acquisition!r} is not supported"
        raise InputError(
            f"MR Optimum job: acquisition{got}; expected {MRO_ACQUISITION} (2D k-space)"
        )
    method = _choice(_get(job, "name"), "name", METHODS, ("AC", "MR", "PMR", "CR"))
    job_options = _get(job, "options")
    reconstructor = _get(job_options, "reconstructor")
    if not isinstance(reconstructor, Mapping):
        raise InputError("MR Optimum job: options.reconstructor is missing; expected a mapping")
    recon_name = _get(reconstructor, "name")
    if isinstance(recon_name, str) and recon_name.lower() == "espirit":
        raise InputError(
            "MR Optimum job: options.reconstructor.name='espirit' is not a reconstruction "
            "(MR Optimum rejects it too); use 'sense' with sensitivityMapMethod 'espirit'"
        )
    recon = _choice(
        recon_name, "options.reconstructor.name", RECONS, ("RSS", "B1", "SENSE", "GRAPPA")
    )
    ro = _get(reconstructor, "options") or {}
    accelerated, with_maps = recon in ("sense", "grappa"), recon in ("b1", "sense")
    data: dict[str, Any] = {"method": method, "recon": recon}

    # Pseudo replicas and box size: options.NR (the old top level and the GUI's
    # reconstructor level tolerated); a falsy value means MR Optimum's class default.
    places = (job_options, job, reconstructor)
    nr = next((v for v in (_get(p, "NR") for p in places) if v is not None), None)
    box = next((v for v in (_get(p, "boxSize") for p in places) if v is not None), None)
    if method in ("pmr", "cr") and nr:
        data["replicas"] = nr
    elif nr and method in ("ac", "mr"):
        notes.append(f"NR={nr} ignored: method {method.upper()} uses no pseudo replicas")
    if method == "cr" and box:
        data["box_size"] = box
    elif box and method != "cr":
        notes.append(f"boxSize={box} ignored: only CR uses it")

    if accelerated:
        data["decimate"] = bool(_get(ro, "decimate"))
        if (acc := _get(ro, "accelerations")) is not None:
            data["acceleration"] = acc
        if "acl" in {str(k).lower() for k in ro}:
            acl = _get(ro, "acl")
            data["acl"] = (None, None) if acl is None else acl
    else:
        ignored = [k for k in ("decimate", "accelerations", "acl") if _get(ro, k) is not None]
        if ignored:
            notes.append(f"{', '.join(ignored)} ignored: {recon.upper()} is not accelerated")
    kernel = _get(ro, "kernelSize")
    if recon == "grappa":
        kernel = list(MRO_GRAPPA_KERNEL) if kernel is None else kernel
        data["grappa_kernel"] = _grappa_kernel(kernel, data.get("acceleration"), notes)
    elif kernel is not None:
        notes.append(f"kernelSize={kernel} ignored: only GRAPPA uses it")

    sensitivity_map = _get(ro, "sensitivityMap")
    if with_maps and isinstance(sensitivity_map, Mapping):
        _read_sensitivity(sensitivity_map, data, notes)

    output = (_get(wrapper, "output") or _get(job, "output")) if wrapper else None
    output = output if isinstance(output, Mapping) else {}
    flags = {
        "coilsensitivity": bool(_get(output, "coilsensitivity")),
        "gfactor": bool(_get(output, "gfactor") if wrapper else _get(ro, "gfactor")),
        "matlab": bool(_get(output, "matlab")),
    }
    data["gfactor"] = flags["gfactor"] and accelerated
    data["coil_sensitivity_output"] = flags["coilsensitivity"] and with_maps
    if flags["matlab"]:
        notes.append("output.matlab ignored: sciflow writes NIfTI, PNG and info.json")

    correction = _get(ro, "correction")
    if isinstance(correction, Mapping) and _get(correction, "useCorrection"):
        data["flip_angle_correction"] = True
        fa = _get(correction, "faCorrection")
        fa_ref = _get(fa, "options") if isinstance(_get(fa, "options"), Mapping) else fa
        data["flip_angle_map"] = _file_uri(fa_ref, f"{_RECON_OPTIONS}.correction.faCorrection")

    data["convention"] = convention or "mroptimum"
    if convention is None:
        notes.append(
            "convention='mroptimum' (noise covariance Psi/(2 NBW)) so the numbers match MR "
            "Optimum's; pass convention='physical' for noise scaled to the signal's sampling"
        )
    options = _validate(data, "MR Optimum job", _job_key)

    signal_ref = _file_options(_get(ro, "signal"))
    noise_ref = _file_options(_get(ro, "noise"))
    multiraid = bool(_get(signal_ref, "multiraid")) or bool(_get(noise_ref, "multiraid"))
    signal = _file_uri(signal_ref, f"{_RECON_OPTIONS}.signal.options")
    noise = None
    if bool(_get(signal_ref, "multiraid")):
        if noise_ref is not None:
            notes.append("noise file ignored: signal multiraid takes noise from its first raid")
    else:
        noise = _file_uri(noise_ref, f"{_RECON_OPTIONS}.noise.options")
    if signal is None:
        notes.append(f"the job names no signal file ({_RECON_OPTIONS}.signal); pass one")
    vendor = _get(signal_ref, "vendor")
    orientation = _get(signal_ref, "orientation")
    reference = _get(signal_ref, "reference_filename")
    return ParsedJob(
        options=options,
        signal=signal,
        noise=noise,
        outputs=flags,
        vendor=vendor.lower() if isinstance(vendor, str) else None,
        key=_array_key(signal_ref, vendor),
        source="mroptimum-gui" if wrapper is not None else "mroptimum-job",
        multiraid=multiraid,
        orientation=dict(orientation) if isinstance(orientation, Mapping) else None,
        reference=str(reference) if reference else None,
        alias=_get(wrapper, "alias") or _get(job, "alias"),
        job=without_credentials(wrapper if wrapper is not None else job),
        notes=tuple(notes),
    )


def _array_key(signal_ref: Mapping[str, Any] | None, vendor: Any) -> str | None:
    """``npz_key``/``mat_key``; MR Optimum (v3.0.0) defaults both to ``kspace``."""
    key = _get(signal_ref, "npz_key") or _get(signal_ref, "mat_key")
    if key is None and isinstance(vendor, str) and vendor.lower() in ("numpy", "matlab"):
        return "kspace"
    return str(key) if key is not None else None


def _grappa_kernel(kernel: Any, acceleration: Any, notes: list[str]) -> Any:
    """MR Optimum's kernelSize (pygrappa: grid lines around the target) in our geometry.

    A window of ``ky`` grid lines at acceleration R holds about ``ceil(ky / R)`` acquired
    lines (exactly so at R = 2), which is what ``tasks.mr.grappa`` counts.
    """
    pair = isinstance(kernel, list | tuple) and len(kernel) == 2
    if not pair or not all(isinstance(k, int) and not isinstance(k, bool) for k in kernel):
        return kernel  # the model's validation names the problem
    factors = acceleration if isinstance(acceleration, list | tuple) else ()
    if len(factors) != 2 or not isinstance(factors[1], int) or factors[1] < 1:
        notes.append(
            f"kernelSize={list(kernel)} taken as sciflow's (readout taps, acquired lines): "
            "the acceleration comes from the header, so pygrappa's grid lines cannot be converted"
        )
        return tuple(kernel)
    ours = (kernel[0], max(1, math.ceil(kernel[1] / factors[1])))
    notes.append(
        f"kernelSize={list(kernel)} (pygrappa grid lines) read as grappa_kernel={ours} "
        f"(acquired source lines at R={factors[1]})"
    )
    return ours


def _read_sensitivity(sensitivity_map: Mapping[str, Any], data: dict, notes: list[str]) -> None:
    sm_options = _get(sensitivity_map, "options") or {}
    method = _get(sm_options, "sensitivityMapMethod") or _get(sensitivity_map, "name") or "inner"
    where = f"{_SENSITIVITY_OPTIONS}.sensitivityMapMethod"
    data["sensitivity"] = _choice(method, where, SENSITIVITIES, ("inner", "innerACL", "espirit"))
    mask = _get(sm_options, "mask")
    if mask is None or mask is False:
        return  # snr.py: no mask key means no mask
    mask_method = mask if isinstance(mask, str) else _get(mask, "method")
    if isinstance(mask_method, str) and mask_method.lower() == "zero":
        mask_method = "no"
    if isinstance(mask_method, str) and mask_method.lower() in ("upload", "numpy"):
        raise InputError(
            f"MR Optimum job: {_SENSITIVITY_OPTIONS}.mask.method={mask_method!r} (a mask file) "
            f"is not supported yet; expected one of {', '.join(MASKS)}"
        )
    data["mask"] = _choice(mask_method, f"{_SENSITIVITY_OPTIONS}.mask.method", MASKS, MASKS)
    value = _get(mask, "value") if isinstance(mask, Mapping) else None
    if data["mask"] in MASKS_WITH_VALUE:
        data["mask_value"] = value
    elif value is not None:
        notes.append(f"mask value={value} ignored: mask {data['mask']!r} takes no value")
    if data["mask"] == "espirit" and isinstance(mask, Mapping):
        given = [k for k in ("k", "r", "t", "c") if _get(mask, k) is not None]
        if given:
            notes.append(f"ESPIRiT mask parameters {given} ignored: sciflow's defaults apply")


def _file_options(ref: Any) -> Mapping[str, Any] | None:
    """``{"type": "file", "options": {...}}`` -> the inner options (a bare reference as is)."""
    if not isinstance(ref, Mapping):
        return None
    inner = _get(ref, "options")
    return inner if isinstance(inner, Mapping) else ref


def _file_uri(ref: Mapping[str, Any] | None, where: str) -> str | None:
    """A storage URI from an MR Optimum file reference.

    ``{"type": "local", "filename": f}`` -> ``f``; ``{"type": "s3", "bucket": b, "key": k}``
    -> ``s3://b/k``. Without a type, bucket and key mean S3 and a filename means local.
    """
    if ref is None:
        return None
    kind = _get(ref, "type")
    filename, bucket, key = (_get(ref, n) for n in ("filename", "bucket", "key"))
    if kind is None:
        if not filename and not (bucket and key):
            raise InputError(
                f"MR Optimum job: {where} names no file; expected type 'local' with a filename "
                "or type 's3' with bucket and key"
            )
        kind = "s3" if bucket and key else "local"
    if not isinstance(kind, str) or kind.lower() not in ("local", "s3"):
        raise InputError(
            f"MR Optimum job: {where}.type={kind!r} is not a storage type; expected 'local' or 's3'"
        )
    if kind.lower() == "s3":
        if not bucket or not key:
            raise InputError(
                f"MR Optimum job: {where} has type 's3' but bucket={bucket!r}, key={key!r}; "
                "expected both"
            )
        return f"s3://{bucket}/{str(key).lstrip('/')}"
    if not filename:
        raise InputError(
            f"MR Optimum job: {where} has type 'local' but no filename; expected a path"
        )
    return str(filename)
