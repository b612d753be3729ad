"""Floor 1: the element types parplan knows and their sizes."""
DTYPES = ("fp32", "tf32", "bf16", "fp16", "fp8")
BYTES_PER_ELEMENT = {"fp32": 4, "tf32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
