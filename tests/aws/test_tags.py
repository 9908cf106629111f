from tasks.aws.tags import clean_tag, from_aws, run_tags, to_aws


def test_run_tags_carry_run_unit_and_flow():
    assert run_tags("0a1b-2c", "lab-aws", "mr-snr") == {
        "sciflow:run-id": "0a1b-2c",
        "sciflow:unit": "lab-aws",
        "sciflow:flow": "mr-snr",
    }


def test_unit_tags_are_kept_but_cannot_override_run_tags():
    tags = run_tags("r1", "u1", "f1", {"project": "mr", "sciflow:unit": "spoofed"})
    assert tags["project"] == "mr"
    assert tags["sciflow:unit"] == "u1"


def test_characters_aws_rejects_are_replaced():
    assert clean_tag("research pipeline #1 (test)") == "research pipeline _1 _test_"
    assert len(clean_tag("x" * 300)) == 256


def test_aws_tag_lists_round_trip_in_both_capitalisations():
    tags = {"a": "1", "b": "2"}
    assert from_aws(to_aws(tags)) == tags
    assert to_aws(tags, key="key", value="value")[0] == {"key": "a", "value": "1"}
    assert from_aws(to_aws(tags, key="key", value="value")) == tags
