"""Reference implementations that benchmarks time our code against.

- ``mroptimum``: MR Optimum's SNR algorithms (AC/Kellman, B1, RSS, PMR) written the way its
  reference code (cloudmrhub/cloudmr-tools, cloudmrhub/mroptimum-tools) runs them.

Baselines are reimplemented from reading the public code, not copied; each function names the
file and function it mirrors. They are for timing and cross-checking only, never used by flows.
"""
