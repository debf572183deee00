"""Where the work runs: device and precision, data-parallel processes (DDP, synchronised batch norm), checkpoints."""
