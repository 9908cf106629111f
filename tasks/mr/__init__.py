"""MR readers, noise statistics, reconstructions, SNR maps and exports (plain numerics)."""
