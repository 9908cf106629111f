import copy
import json
from typing import get_args

import pytest
from pydantic import ValidationError

from tasks.credentials import REDACTED
from tasks.errors import InputError
from tasks.mr.options import (
    DEFAULT_GRAPPA_KERNEL,
    MASKS,
    METHODS,
    RECONS,
    SENSITIVITIES,
    MrOptions,
    is_job_uri,
    load_job,
    parse_job,
    refuse_pasted_credentials,
)

# MR_PRIMER.md section 8, verbatim: "a|b" strings list the alternatives and the noise block
# says "as signal", so it is a template rather than a job (see resolve_primer_job).
PRIMER_JOB = """
{"version": "v0", "acquisition": 2, "type": "SNR", "id": 2, "name": "PMR",
 "options": {"NR": 20, "boxSize": 9,
  "reconstructor": {"type": "recon", "id": 3, "name": "SENSE", "options": {
    "signal": {"type": "file", "options": {"type": "local|s3", "filename": "s.dat", "bucket": "",
               "key": "", "options": {}, "multiraid": false, "vendor": "Siemens"}},
    "noise": {"type": "file", "options": {"...": "as signal"}},
    "sensitivityMap": {"type": "sensitivityMap", "id": 1, "name": "inner", "options": {
        "sensitivityMapMethod": "inner|innerACL",
        "mask": {"method": "no|reference|percentage|threshold|percentagemean|espirit|upload",
                 "value": 30, "k": 8, "r": 24, "t": 0.01, "c": 0.995, "file": {}}}},
    "decimate": true, "accelerations": [1, 2], "acl": [null, 24], "kernelSize": [3, 4],
    "correction": {"useCorrection": false, "faCorrection": {}}, "gfactor": false}}}}
"""

FAKE_TOKEN = "Bearer not-a-real-token"  # noqa: S105 - a stand-in, checked to be redacted
FAKE_PRESIGNED = (
    "https://mrodata.s3.amazonaws.com/u1/signal.dat?X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=ASIAFAKE%2F20261205%2Fus-east-1%2Fs3%2Faws4_request"
    "&X-Amz-Signature=0badc0ffee0badc0ffee"
)

PMR_SENSE = MrOptions(
    method="pmr",
    recon="sense",
    acceleration=(1, 2),
    acl=(None, 24),
    decimate=True,
    replicas=20,
    convention="mroptimum",
)


def first_alternative(value):
    if isinstance(value, dict):
        return {k: first_alternative(v) for k, v in value.items()}
    if isinstance(value, list):
        return [first_alternative(v) for v in value]
    if isinstance(value, str) and "|" in value:
        return value.split("|")[0]
    return value


def resolve_primer_job():
    """The primer's template as a job: first alternative of each "a|b", noise like signal."""
    job = first_alternative(json.loads(PRIMER_JOB))
    recon_options = job["options"]["reconstructor"]["options"]
    noise = copy.deepcopy(recon_options["signal"])
    noise["options"]["filename"] = "n.dat"
    recon_options["noise"] = noise
    return job


def gui_wrapper():
    """The same PMR/SENSE job as the MR Optimum web GUI sends it: lower case, S3 files."""
    task = resolve_primer_job()
    task["name"], task["type"] = "pmr", "snr"
    recon = task["options"]["reconstructor"]
    recon["name"] = "sense"
    for role in ("signal", "noise"):
        recon["options"][role]["options"].update(
            {"type": "s3", "bucket": "mrodata", "key": f"u1/{role}.dat", "filename": f"{role}.dat"}
        )
    return {
        "version": "v0",
        "alias": "knee PMR",
        "output": {"coilsensitivity": False, "gfactor": False, "matlab": False},
        "task": task,
    }


def raises_one_line(value, match, **kwargs):
    with pytest.raises(InputError, match=match) as caught:
        parse_job(value, **kwargs)
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_the_primer_template_verbatim_is_refused_at_its_first_placeholder():
    raises_one_line(
        PRIMER_JOB,
        r"sensitivityMapMethod='inner\|innerACL' is not recognised; "
        r"expected one of inner, innerACL, espirit",
    )


def test_a_pasted_job_and_the_gui_wrapper_give_the_same_options():
    job = parse_job(resolve_primer_job())
    gui = parse_job(gui_wrapper())
    assert job.options == gui.options == PMR_SENSE
    assert (job.source, gui.source) == ("mroptimum-job", "mroptimum-gui")
    assert (job.signal, job.noise) == ("s.dat", "n.dat")
    assert (gui.signal, gui.noise) == ("s3://mrodata/u1/signal.dat", "s3://mrodata/u1/noise.dat")
    assert gui.alias == "knee PMR"
    assert gui.outputs == {"coilsensitivity": False, "gfactor": False, "matlab": False}
    assert job.vendor == "siemens"
    assert job.job["name"] == "PMR"  # kept as given, for info.json headers.options


def test_json_text_of_each_form_parses_like_the_mapping():
    assert parse_job(json.dumps(resolve_primer_job())).options == PMR_SENSE
    assert parse_job(json.dumps(gui_wrapper())).options == PMR_SENSE
    assert parse_job(PMR_SENSE.model_dump_json()).options == PMR_SENSE


def test_what_was_dropped_or_forced_is_noted():
    notes = " ".join(parse_job(resolve_primer_job()).notes)
    assert "boxSize=9 ignored: only CR uses it" in notes
    assert "kernelSize=[3, 4] ignored" in notes
    assert "mask value=30 ignored" in notes
    assert "convention='mroptimum'" in notes


def test_an_mr_optimum_job_gets_mroptimum_convention_unless_overridden():
    assert parse_job(resolve_primer_job()).options.convention == "mroptimum"
    physical = parse_job(resolve_primer_job(), convention="physical")
    assert physical.options.convention == "physical"
    assert not any("convention" in note for note in physical.notes)


def test_our_own_options_and_their_dict_round_trip():
    options = MrOptions(method="cr", recon="b1", box_size=3, replicas=50, seed=7)
    assert parse_job(options).options == options
    assert parse_job(options.model_dump()).options == options
    assert parse_job(options.model_dump(mode="json")).source == "sciflow"
    assert parse_job(None).options == MrOptions()
    assert parse_job("  ").options == MrOptions()


def test_s3_and_local_file_references_become_uris():
    job = resolve_primer_job()
    recon_options = job["options"]["reconstructor"]["options"]
    recon_options["signal"]["options"] = {"type": "s3", "bucket": "b", "key": "/dir/sig.dat"}
    recon_options["noise"]["options"] = {"type": "local", "filename": "/data/noise.dat"}
    parsed = parse_job(job)
    assert (parsed.signal, parsed.noise) == ("s3://b/dir/sig.dat", "/data/noise.dat")


def test_an_s3_reference_without_a_key_is_refused():
    job = resolve_primer_job()
    job["options"]["reconstructor"]["options"]["noise"]["options"] = {"type": "s3", "bucket": "b"}
    raises_one_line(job, r"noise\.options has type 's3' but bucket='b', key=None; expected both")


def test_multiraid_signal_takes_noise_from_its_own_first_raid():
    job = resolve_primer_job()
    job["options"]["reconstructor"]["options"]["signal"]["options"]["multiraid"] = True
    parsed = parse_job(job)
    assert parsed.multiraid
    assert parsed.noise is None


def test_numpy_vendor_keeps_its_array_key():
    job = resolve_primer_job()
    signal = job["options"]["reconstructor"]["options"]["signal"]["options"]
    signal.update({"vendor": "numpy", "filename": "sig.npz"})
    signal["npz_key"] = "k"
    parsed = parse_job(job)
    assert (parsed.vendor, parsed.key, parsed.signal) == ("numpy", "k", "sig.npz")
    del signal["npz_key"]
    assert parse_job(job).key == "kspace"  # MR Optimum's default array name


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"name": "SNRX"}, r"name='SNRX' is not recognised; expected one of AC, MR, PMR, CR"),
        ({"version": "v1"}, r"version='v1' is not supported; expected 'v0'"),
        ({"version": None}, r"version is missing; expected 'v0'"),
        ({"acquisition": 3}, r"acquisition=3 is not supported; expected 2 \(2D k-space\)"),
    ],
)
def test_top_level_keys_are_checked_as_mr_optimum_does(change, match):
    job = resolve_primer_job() | change
    raises_one_line(job, f"^MR Optimum job: {match}$")


def test_an_unknown_reconstruction_lists_the_allowed_names():
    job = resolve_primer_job()
    job["options"]["reconstructor"]["name"] = "CG-SENSE"
    raises_one_line(
        job, r"reconstructor\.name='CG-SENSE' .* expected one of RSS, B1, SENSE, GRAPPA"
    )
    job["options"]["reconstructor"]["name"] = "espirit"
    raises_one_line(job, r"'espirit' is not a reconstruction .* use 'sense'")


@pytest.mark.parametrize(
    ("where", "value", "match"),
    [
        (("options", "NR"), 1, r"options\.NR=1 is invalid: Input should be greater than or equal"),
        (
            ("options", "reconstructor", "options", "accelerations"),
            [0, 2],
            r"options\.reconstructor\.options\.accelerations\[0\]=0 is invalid",
        ),
    ],
)
def test_bad_field_values_name_the_job_key(where, value, match):
    job = resolve_primer_job()
    target = job
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    raises_one_line(job, match)


def test_nr_and_boxsize_are_also_read_from_the_old_top_level():
    job = resolve_primer_job()
    del job["options"]["NR"], job["options"]["boxSize"]
    job |= {"name": "CR", "NR": 6, "boxsize": 9}
    options = parse_job(job).options
    assert (options.method, options.replicas, options.box_size) == ("cr", 6, 9)


def test_gui_outputs_become_options_only_where_the_recon_has_them():
    wrapper = gui_wrapper()
    wrapper["output"] = {"coilsensitivity": True, "gfactor": True, "matlab": True}
    sense = parse_job(wrapper)
    assert sense.options.gfactor
    assert sense.options.coil_sensitivity_output
    wrapper["task"]["options"]["reconstructor"]["name"] = "rss"
    rss = parse_job(wrapper)
    assert not rss.options.gfactor
    assert not rss.options.coil_sensitivity_output
    assert rss.outputs == {"coilsensitivity": True, "gfactor": True, "matlab": True}
    assert rss.options.acceleration is None  # RSS ignores accelerations, as MR Optimum does


def test_gui_output_inside_the_task_is_found_too():
    wrapper = gui_wrapper()
    wrapper["task"]["output"] = {"gfactor": True}
    del wrapper["output"]
    assert parse_job(wrapper).options.gfactor


def test_a_grappa_kernel_size_is_converted_to_acquired_lines():
    job = resolve_primer_job()
    job["options"]["reconstructor"]["name"] = "GRAPPA"
    job["options"]["reconstructor"]["options"]["kernelSize"] = [4, 4]
    parsed = parse_job(job)
    assert parsed.options.grappa_kernel == (4, 2)
    assert any("read as grappa_kernel=(4, 2)" in note for note in parsed.notes)
    del job["options"]["reconstructor"]["options"]["kernelSize"]  # MR Optimum's [4, 4] default
    assert parse_job(job).options.grappa_kernel == (4, 2)


def test_masks_read_method_and_value():
    job = resolve_primer_job()
    sensitivity = job["options"]["reconstructor"]["options"]["sensitivityMap"]["options"]
    sensitivity["mask"] = {"method": "Percentage", "value": 10}
    options = parse_job(job).options
    assert (options.mask, options.mask_value) == ("percentage", 10)
    sensitivity["mask"] = "reference"
    assert parse_job(job).options.mask == "reference"
    sensitivity["mask"] = {"method": "upload", "file": {}}
    raises_one_line(job, r"mask\.method='upload' \(a mask file\) is not supported yet")
    sensitivity["mask"] = {"method": "threshold"}
    raises_one_line(job, r"mask_value is required for mask='threshold'")


def test_flip_angle_correction_needs_a_map():
    job = resolve_primer_job()
    recon_options = job["options"]["reconstructor"]["options"]
    recon_options["correction"] = {
        "useCorrection": True,
        "faCorrection": {"type": "file", "options": {"type": "s3", "bucket": "b", "key": "fa.nii"}},
    }
    assert parse_job(job).options.flip_angle_map == "s3://b/fa.nii"
    recon_options["correction"] = {"useCorrection": True, "faCorrection": {}}
    raises_one_line(job, r"names no file")


def test_malformed_json_text_is_one_line():
    raises_one_line('{"version": "v0",', r"^options is not valid JSON: .* at line 1 column")


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"recon": "sense", "acceleration": (1, 1)}, r"acceleration=\(1, 1\) leaves recon='sense'"),
        ({"recon": "rss", "decimate": True}, r"decimate=True applies to recon 'sense' or 'grappa'"),
        ({"method": "pmr", "box_size": 4}, r"box_size=4 applies to method 'cr' only"),
        ({"method": "ac", "replicas": 50}, r"replicas=50 applies to method 'pmr' or 'cr'"),
        ({"gfactor": True}, r"gfactor=True needs recon 'sense' or 'grappa', not 'rss'"),
        ({"recon": "rss", "mask": "reference"}, r"apply to recon 'b1' or 'sense'"),
        ({"recon": "b1", "mask": "percentage", "mask_value": 150}, r"must be in \(0, 100\]"),
        ({"recon": "b1", "mask_value": 3.0}, r"mask_value=3.0 is read only for mask"),
        ({"flip_angle_correction": True}, r"flip_angle_correction=True needs flip_angle_map"),
        ({"coil_sensitivity_output": True}, r"coil_sensitivity_output=True needs recon 'b1'"),
        ({"slices": [0, 2, 2]}, r"slices=\[0, 2, 2\] repeats an index"),
        ({"replicas": 1}, r"^options: replicas=1 is invalid: Input should be greater than or"),
        ({"method": "PMR!"}, r"method='PMR!' is invalid: Input should be 'ac', 'mr', 'pmr'"),
        ({"colour": "red"}, r"colour='red' is invalid: Extra inputs are not permitted"),
    ],
)
def test_inconsistent_options_are_refused_naming_the_field(fields, match):
    raises_one_line(fields, match)
    with pytest.raises(ValidationError):
        MrOptions(**fields)


def test_two_problems_are_reported_together_on_one_line():
    message = raises_one_line({"method": "ac", "replicas": 50, "box_size": 4}, "replicas=50")
    assert "box_size=4" in message


def test_the_json_schema_describes_every_field_and_enumerates_choices():
    schema = MrOptions.model_json_schema()
    assert schema["description"]
    for name, prop in schema["properties"].items():
        assert prop.get("description", "").endswith("."), name
        assert prop.get("title"), name
    enums = {
        "method": METHODS,
        "recon": RECONS,
        "sensitivity": SENSITIVITIES,
        "mask": MASKS,
        "convention": ("physical", "mroptimum"),
    }
    for name, allowed in enums.items():
        assert tuple(schema["properties"][name]["enum"]) == allowed
        assert get_args(MrOptions.model_fields[name].annotation) == allowed
    assert schema["properties"]["replicas"]["minimum"] == 2
    assert schema["properties"]["replicas"]["default"] == 20
    assert schema["properties"]["box_size"]["default"] == 2


def test_options_are_frozen_and_json_round_trip():
    options = MrOptions(method="pmr", recon="grappa", acceleration=(1, 3), slices=[0, 4])
    with pytest.raises(ValidationError):
        options.replicas = 5
    assert MrOptions.model_validate_json(options.model_dump_json()) == options


def test_recon_and_snr_specs_carry_the_options():
    snr = pytest.importorskip("tasks.mr.snr", reason="tasks/mr/snr.py is not written yet")
    options = MrOptions(
        method="pmr",
        recon="sense",
        sensitivity="inneracl",
        mask="percentage",
        mask_value=10,
        acceleration=(1, 2),
        acl=(None, 32),
        decimate=True,
        replicas=64,
        gfactor=True,
        convention="mroptimum",
        seed=11,
    )
    recon = options.recon_spec()
    assert isinstance(recon, snr.ReconSpec)
    assert (recon.recon, recon.sensitivity, recon.mask, recon.mask_value) == (
        "sense",
        "inneracl",
        "percentage",
        10,
    )
    assert (recon.acceleration, recon.acl, recon.decimate) == ((1, 2), (None, 32), True)
    spec = options.snr_spec(batch=8)
    assert isinstance(spec, snr.SnrSpec)
    assert (spec.method, spec.replicas, spec.box_size) == ("pmr", 64, 2)
    assert (spec.convention, spec.gfactor, spec.seed, spec.batch) == ("mroptimum", True, 11, 8)


def test_recon_spec_fills_what_the_options_leave_to_the_header():
    snr = pytest.importorskip("tasks.mr.snr", reason="tasks/mr/snr.py is not written yet")
    options = MrOptions(method="ac", recon="grappa")
    assert options.grappa_kernel == DEFAULT_GRAPPA_KERNEL == snr.ReconSpec().grappa_kernel
    from_header = options.recon_spec(header_acceleration=(1, 3), header_acl=(None, 30))
    assert (from_header.acceleration, from_header.acl) == ((1, 3), (None, 30))
    defaults = options.recon_spec()
    assert (defaults.acceleration, defaults.acl) == (
        snr.ReconSpec().acceleration,
        snr.ReconSpec().acl,
    )


def leaky_gui_wrapper():
    """The GUI job as the web app posts it: its bearer token, and a presigned URL kept under
    an innocent key three levels down, where no key-name rule would look."""
    wrapper = gui_wrapper()
    wrapper["token"] = wrapper["task"]["token"] = FAKE_TOKEN
    signal = wrapper["task"]["options"]["reconstructor"]["options"]["signal"]["options"]
    signal["options"] = {"link": FAKE_PRESIGNED}
    return wrapper


def test_a_pasted_job_with_a_token_or_presigned_url_is_refused_naming_the_path():
    """Guards against a pasted GUI job reaching outputs: it was parsed and run with its token
    and presigned URL, which the Prefect server had already stored as a parameter."""
    message = raises_one_line(leaky_gui_wrapper(), r"options\.token \(secret-named key\)")
    assert "options.task.token (secret-named key)" in message
    assert "options.task.options.reconstructor.options.signal.options.options.link" in message
    assert "(presigned URL)" in message
    assert "pass the MR Optimum job by URI" in message
    assert "not-a-real-token" not in message
    assert "0badc0ffee" not in message


def test_a_presigned_url_is_refused_under_any_key_and_as_json_text():
    """Guards against redaction by key name only: a presigned URL under ``filename`` passed."""
    job = resolve_primer_job()
    job["options"]["reconstructor"]["options"]["signal"]["options"]["filename"] = FAKE_PRESIGNED
    where = r"options\.options\.reconstructor\.options\.signal\.options\.filename"
    raises_one_line(job, where + r" \(presigned URL\)")
    raises_one_line(json.dumps(job), where)


def test_flow_parameters_are_checked_before_json_text_is_parsed():
    with pytest.raises(InputError, match=r"^parameters: signal \(presigned URL\) carries"):
        refuse_pasted_credentials({"signal": FAKE_PRESIGNED, "options": None})
    with pytest.raises(InputError, match=r"options\.task\.token \(secret-named key\)"):
        refuse_pasted_credentials({"options": json.dumps(leaky_gui_wrapper())})
    refuse_pasted_credentials({"signal": "s3://b/k.h5", "options": PMR_SENSE})  # clean: passes


def test_a_job_file_has_its_credentials_dropped_before_parsing():
    """Guards against a job read from storage keeping its token in info.json's job."""
    text = json.dumps(leaky_gui_wrapper()).encode()
    parsed = load_job("s3://jobs/job.json", {"s3://jobs/job.json": text}.__getitem__)
    kept = json.dumps(parsed.job)
    assert "not-a-real-token" not in kept
    assert "X-Amz-Signature" not in kept
    assert parsed.job["task"]["token"] == REDACTED
    assert parsed.options == PMR_SENSE
    assert parsed.signal == "s3://mrodata/u1/signal.dat"
    dropped = next(n for n in parsed.notes if n.startswith("credentials dropped"))
    assert "task.token" in dropped
    assert "not-a-real-token" not in " ".join(parsed.notes)


def test_a_job_file_that_is_not_a_job_is_refused():
    with pytest.raises(InputError, match=r"options='j\.json' is not JSON"):
        load_job("j.json", lambda _: b"not json")
    with pytest.raises(InputError, match=r"is 2097152 bytes; expected a job of at most"):
        load_job("j.json", lambda _: b" " * (2 << 20))


def test_only_uris_and_json_paths_name_a_job_file():
    assert is_job_uri("s3://b/jobs/job.json")
    assert is_job_uri("s3://b/jobs/job")
    assert is_job_uri("/data/job.json")
    assert not is_job_uri(json.dumps(resolve_primer_job()))
    assert not is_job_uri({"method": "ac"})
    assert not is_job_uri("  ")


def test_device_defaults_to_cpu_and_reaches_the_snr_spec():
    assert MrOptions().device == "cpu"
    assert MrOptions().snr_spec().device == "cpu"
    options = MrOptions(method="pmr", recon="b1", device="cuda")
    assert options.snr_spec().device == "cuda"


def test_device_cuda_refuses_what_the_gpu_path_does_not_cover():
    with pytest.raises((InputError, ValidationError), match="device='cuda' supports recon"):
        MrOptions(method="ac", recon="grappa", acceleration=(1, 2), device="cuda")


@pytest.mark.parametrize("method", ["ac", "mr", "pmr", "cr"])
@pytest.mark.parametrize("recon", ["rss", "b1", "sense"])
def test_device_cuda_accepts_every_method_with_rss_b1_and_sense(method, recon):
    acceleration = (1, 2) if recon == "sense" else None
    options = MrOptions(method=method, recon=recon, acceleration=acceleration, device="cuda")
    assert options.snr_spec().device == "cuda"


def test_options_and_snr_map_apply_the_same_device_rule():
    from tasks.mr.arrays import DEVICE_RECONS

    for recon in ("rss", "b1", "sense", "grappa"):
        acceleration = (1, 2) if recon in ("sense", "grappa") else None
        allowed = recon in DEVICE_RECONS["cuda"]
        try:
            MrOptions(recon=recon, acceleration=acceleration, device="cuda")
        except (InputError, ValidationError):
            assert not allowed
        else:
            assert allowed
    with pytest.raises((InputError, ValidationError), match="device"):
        MrOptions(device="tpu")
