"""Storage by URI (local paths, file://, s3://) and the per-run directory."""
