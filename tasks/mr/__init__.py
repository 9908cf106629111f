"""MR reconstruction and SNR maps as plain array functions (no Prefect, boto3 or torch import).

Conventions shared by every module here (see ``MR_PRIMER.md`` in the design docs):

- k-space and coil images are complex, coils last: one slice is ``(x, y, coils)``; a whole
  acquisition is ``(x, y, coils, slices, replicas)`` (``io.RawData.signal``).
  x = readout, y = phase encoding.
- Noise samples are ``(samples, coils)``. ``Psi = E[n n^H]`` is the complex noise covariance,
  ``(coils, coils)``; each real component has variance ``Psi_ii / 2``.
- Images come from ``fft.ifft2c`` (centered, orthonormal), so white k-space noise keeps its
  variance per pixel.
- SNR maps are real ``(x, y)`` per slice, in the per-component units of Kellman & McVeigh.
- Bad input raises ``tasks.errors.InputError`` naming the input, the problem and what was
  expected.

Modules: ``fft`` (transforms), ``phantom`` (known-truth data), ``noise`` (covariance,
prewhitening, bandwidth), ``coils`` (sensitivities, masks), ``recon`` (RSS, B1, SENSE),
``grappa``, ``espirit``, ``snr`` (AC, MR, PMR, CR, g-factors), ``io`` (MRD, twix, NumPy,
MATLAB), ``options`` (analysis options and MR Optimum jobs), ``export`` (NIfTI, PNG,
info.json), ``estimate`` (memory and time from the header).
"""
