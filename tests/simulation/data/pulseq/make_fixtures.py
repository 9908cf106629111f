"""Write ``v1_4.seq`` and ``v1_5.seq`` with pypulseq (``pip install pypulseq==1.5.0.post1``).

One sequence of every event kind the reader maps: a block pulse (pypulseq gives it an RF time
shape), a delay, a sinc pulse with its slice gradient and rephaser, a trapezoid readout with an
ADC, and an arbitrary gradient. ``v1_2.seq`` and ``v1_3.seq`` are written by hand (pypulseq
writes only 1.4.1 and 1.5). Run from the repository root:
``python tests/simulation/data/pulseq/make_fixtures.py``.
"""

import warnings
from pathlib import Path

import numpy as np
import pypulseq as pp

HERE = Path(__file__).resolve().parent


def main() -> None:
    warnings.simplefilter("ignore")  # pypulseq's timing and version notices
    system = pp.Opts(
        max_grad=30, grad_unit="mT/m", max_slew=150, slew_unit="T/m/s", rf_dead_time=0,
        rf_ringdown_time=0, adc_dead_time=0,
    )  # fmt: skip
    seq = pp.Sequence(system=system)
    sinc, gz, gz_rephase = pp.make_sinc_pulse(
        flip_angle=np.pi / 6, duration=1e-3, slice_thickness=5e-3, apodization=0.5,
        time_bw_product=4, phase_offset=0.3, system=system, return_gz=True,
    )  # fmt: skip
    gx = pp.make_trapezoid("x", flat_area=32 / 0.256, flat_time=640e-6, system=system)
    adc = pp.make_adc(32, duration=640e-6, delay=gx.rise_time, phase_offset=0.5, system=system)
    ramp = np.concatenate([np.linspace(0, 1e5, 10), np.linspace(1e5, 0, 10)])
    seq.add_block(pp.make_block_pulse(flip_angle=np.pi / 2, duration=1e-4, system=system))
    seq.add_block(pp.make_delay(5e-4))
    seq.add_block(sinc, gz)
    seq.add_block(gz_rephase)
    seq.add_block(gx, adc)
    seq.add_block(pp.make_arbitrary_grad("y", ramp, first=0, last=0, system=system))
    seq.set_definition("FOV", [0.256, 0.256, 5e-3])
    seq.set_definition("Name", "mixed")
    seq.write(str(HERE / "v1_5.seq"))
    seq.write(str(HERE / "v1_4.seq"), v141_compat=True)


if __name__ == "__main__":
    main()
