"""Pure, CPU-only preprocessing: decode inputs and turn them into model-ready arrays."""
