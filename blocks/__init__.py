"""sciflow's Prefect block types; ``prefect block register -m blocks`` registers them."""

from blocks.compute_unit import ComputeUnit, load_unit, local_unit

__all__ = ["ComputeUnit", "load_unit", "local_unit"]
