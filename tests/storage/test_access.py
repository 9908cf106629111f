"""What a compute unit's runs may read and write (``tasks.storage.access``)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from blocks.compute_unit import ComputeUnit, local_unit
from tasks.errors import InputError

AWS = ComputeUnit(
    name="lab",
    platform="aws",
    region="us-east-1",
    storage_root="s3://lab/runs",
    readable_prefixes=["s3://raw/scans"],
    writable_prefixes=["s3://results/shared"],
)


def refusal(check, uri: str, parameter: str = "signal") -> str:
    """The one-line refusal of ``check(uri, parameter)``."""
    with pytest.raises(InputError) as caught:
        check(uri, parameter)
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.fixture
def box(tmp_path: Path) -> tuple[ComputeUnit, Path]:
    """A local unit confined to ``root`` (its storage root) and ``data/a``, and a file outside."""
    root, data = tmp_path / "root", tmp_path / "data"
    for folder in (root, data / "a", data / "ab"):
        folder.mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("not yours")
    unit = ComputeUnit(
        name="box", confined=True, storage_root=str(root), readable_prefixes=[str(data / "a")]
    )
    return unit, tmp_path


def test_an_aws_unit_reads_its_root_and_declared_prefixes():
    """Guards against confinement refusing what the unit declares (root, readable, writable)."""
    access = AWS.access()
    for uri in ("s3://lab/runs/r1/x.h5", "s3://raw/scans/knee.h5", "s3://results/shared/m.npy"):
        assert access.check_read(uri, "signal") == uri
    assert access.check_write("s3://results/shared/out", "output") == "s3://results/shared/out"


def test_an_aws_unit_refuses_another_bucket_naming_parameter_value_and_prefixes():
    """Guards against a run reading any bucket its role can reach (before: no check at all)."""
    message = refusal(AWS.access().check_read, "s3://patients/all.h5")
    assert message == (
        "signal='s3://patients/all.h5': compute unit 'lab' may not read it; expected a path "
        "under ['s3://lab/runs', 's3://results/shared', 's3://raw/scans']"
    )


def test_an_aws_unit_refuses_writes_to_a_readable_only_prefix_and_other_buckets():
    """Guards against overwriting inputs or other buckets: readable is not writable."""
    access = AWS.access()
    for uri in ("s3://raw/scans/out", "s3://other/out"):
        message = refusal(access.check_write, uri, "output")
        assert message.startswith(f"output={uri!r}: compute unit 'lab' may not write it")
        assert "['s3://lab/runs', 's3://results/shared']" in message


@pytest.mark.parametrize(
    "uri", ["s3://lab/runsX/r1/x.h5", "s3://raw/scans2/knee.h5", "s3://lab/run", "s3://lab"]
)
def test_a_prefix_matches_only_on_a_key_segment_boundary(uri):
    """Guards against ``s3://lab/runs`` admitting ``s3://lab/runsX/...`` as a string prefix."""
    assert "may not read it" in refusal(AWS.access().check_read, uri)


@pytest.mark.parametrize("uri", ["s3://lab/runs/../private/x", "s3://lab/runs/./r1/x"])
def test_dot_segments_in_an_s3_key_are_refused(uri):
    """Guards against keys that a client or the console would normalise out of the prefix."""
    message = refusal(AWS.access().check_read, uri)
    assert re.search(r"S3 key has '\.\.?' segments", message)


def test_an_aws_unit_is_confined_even_when_it_says_it_is_not():
    """Guards against an AWS unit opting out of confinement with confined=False."""
    unit = AWS.model_copy(update={"confined": False})
    assert unit.access().confined
    refusal(unit.access().check_read, "s3://patients/all.h5")


def test_a_local_path_is_not_under_an_s3_prefix():
    """Guards against an AWS run reading the flow host's disk."""
    refusal(AWS.access().check_read, "/etc/passwd")


def test_a_confined_local_unit_reads_inside_its_prefixes(box):
    """Guards against confinement refusing paths (and file:// URIs) inside the prefixes."""
    unit, tmp = box
    access = unit.access()
    assert access.check_read(str(tmp / "data" / "a" / "x.h5"), "signal")
    assert access.check_write(str(tmp / "root" / "out"), "output")
    assert access.check_read(f"file://{tmp}/root/x", "signal")


def test_dot_dot_out_of_a_local_prefix_is_refused(box):
    """Guards against ``<root>/../secret.txt`` reaching past the storage root."""
    unit, tmp = box
    uri = f"{tmp}/root/../secret.txt"
    message = refusal(unit.access().check_read, uri)
    assert message.startswith(f"signal={uri!r}: compute unit 'box' may not read it")
    assert f"(it resolves to {tmp / 'secret.txt'})" in message


def test_a_symlink_inside_a_prefix_that_points_out_is_refused(box):
    """Guards against a link under the prefix reading (or writing) a file outside it."""
    unit, tmp = box
    link = tmp / "data" / "a" / "scan.h5"
    link.symlink_to(tmp / "secret.txt")
    message = refusal(unit.access().check_read, str(link))
    assert f"resolves to {tmp / 'secret.txt'}" in message
    out = tmp / "root" / "out"
    out.symlink_to(tmp / "data" / "ab", target_is_directory=True)
    refusal(unit.access().check_write, str(out / "SNR.nii.gz"), "output")


def test_a_symlink_that_stays_inside_is_accepted(box):
    """Guards against refusing links judged by their text rather than where they lead."""
    unit, tmp = box
    link = tmp / "root" / "scan.h5"
    link.symlink_to(tmp / "data" / "a" / "scan.h5")
    assert unit.access().check_read(str(link), "signal") == str(link)


def test_a_local_prefix_matches_only_on_a_path_component_boundary(box):
    """Guards against ``/data/a`` admitting ``/data/ab``."""
    unit, tmp = box
    refusal(unit.access().check_read, str(tmp / "data" / "ab" / "x.h5"))


def test_a_relative_path_is_judged_where_it_leads(box, monkeypatch):
    """Guards against relative paths escaping (or being refused) by their text alone."""
    unit, tmp = box
    monkeypatch.chdir(tmp / "root")
    assert unit.access().check_read("x.h5", "signal") == "x.h5"
    refusal(unit.access().check_read, os.path.join("..", "secret.txt"))


def test_the_built_in_local_unit_reaches_anything():
    """Guards against confining the laptop user's built-in unit."""
    access = local_unit().access()
    assert not access.confined
    assert access.check_read("/etc/passwd", "signal") == "/etc/passwd"
    assert access.check_write("s3://anyone/x", "output") == "s3://anyone/x"


def test_a_url_shows_no_password_or_query_in_a_refusal():
    """Guards against a presigned URL's signature or a password reaching an error message."""
    message = refusal(AWS.access().check_read, "https://u:pw@host/f.h5?X-Amz-Signature=abc")
    assert "pw" not in message
    assert "abc" not in message
    assert "signal='https://host/f.h5?<redacted>'" in message


@pytest.mark.parametrize("prefix", ["s3://raw/../lab", "s3://raw/./x", "ftp://host/x", ""])
def test_a_unit_with_a_malformed_prefix_is_refused(prefix):
    """Guards against a prefix that admits more than it says ('..', '.', another scheme)."""
    with pytest.raises(ValueError, match=r"prefix|storage URI"):
        ComputeUnit(name="x", readable_prefixes=[prefix])
