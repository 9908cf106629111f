"""Models, data, distributed entrypoints and checkpoints."""
