"""The training memory estimate counts what a real model holds, without building it."""

from tasks.training.models import PROCESS_BASE_BYTES, build_model, memory_estimate


def test_the_estimate_counts_the_real_models_parameters_and_outputs():
    """Guards against the meta-device count drifting from the model that is really built."""
    options = {"width": 8, "depth": 2}
    model = build_model("unet", **options)
    params = sum(p.numel() for p in model.parameters())
    one = memory_estimate("unet", options, (1, 1, 16, 16)) - PROCESS_BASE_BYTES
    two = memory_estimate("unet", options, (2, 1, 16, 16)) - PROCESS_BASE_BYTES
    outputs_per_image = (two - one) // 8  # 4 bytes, kept and its gradient
    assert one == 4 * (5 * params + 2 * outputs_per_image)
    assert outputs_per_image >= 16 * 16 * 8 * 6  # the stem alone: six 8-feature maps


def test_a_model_of_terabytes_is_estimated_without_allocating_it():
    """Guards against the check itself building the model it is meant to refuse: a model of
    tens of terabytes could not be built on this machine, so returning at all shows it was
    only counted."""
    size = memory_estimate("unet", {"width": 1024, "depth": 8}, (4, 1, 256, 256))
    assert size > 16 * 2**40
