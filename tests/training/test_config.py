import json

import pytest
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from flows.distributed_training import distributed_training
from flows.pipeline import research_pipeline
from tasks.errors import InputError
from tasks.training.config import TrainConfig, TrainingSettings


def test_the_run_config_is_the_settings_plus_data_and_output():
    settings = TrainingSettings(model="linear", procs_per_node=1, epochs=3, max_restarts=0)
    cfg = TrainConfig.from_settings(settings, dataset="set", output="out", log_every=5)
    assert cfg.model_dump(exclude={"dataset", "output", "log_every"}) == settings.model_dump()
    assert (cfg.dataset, cfg.output, cfg.log_every) == ("set", "out", 5)
    # what the processes read back from config.json
    assert TrainConfig.model_validate_json(cfg.model_dump_json()) == cfg


def test_a_run_config_without_a_data_set_is_one_input_error():
    with pytest.raises(InputError, match=r"training parameters: .*dataset"):
        TrainConfig.from_settings(TrainingSettings(), dataset=None, output="out")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"batch_size": 7}, r"batch_size=7 does not split over 2 processes"),
        ({"backend": "nccl", "device": "cpu"}, r"backend='nccl' with device='cpu'"),
        ({"nodes": 0}, r"nodes\n.*greater than or equal to 1"),
        ({"lr": 0}, r"lr\n.*greater than 0"),
        ({"epoch": 2}, r"epoch\n.*Extra inputs are not permitted"),
    ],
)
def test_bad_settings_are_refused_naming_the_field(fields, match):
    with pytest.raises(ValidationError, match=match):
        TrainingSettings(**fields)


def test_every_setting_carries_a_description_for_the_ui_form():
    schema = TrainingSettings.model_json_schema()
    missing = [name for name, field in schema["properties"].items() if not field.get("description")]
    assert not missing
    assert schema["properties"]["procs_per_node"]["minimum"] == 1


@pytest.mark.parametrize(
    ("flow", "parameter"), [(distributed_training, "settings"), (research_pipeline, "training")]
)
def test_the_flows_take_the_settings_as_one_described_form(flow, parameter):
    schema = parameter_schema(flow).model_dump()
    reference = json.dumps(schema["properties"][parameter])
    assert "TrainingSettings" in reference
    form = schema["definitions"]["TrainingSettings"]["properties"]
    assert form["batch_size"]["description"].startswith("Samples per optimizer step")
    assert not {"dataset", "output"} & form.keys()
    assert not {"model", "epochs", "procs_per_node"} & schema["properties"].keys()
