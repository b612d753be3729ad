"""Floor 2, cost: first-principles costs on one device or one group of devices. The ops of a layer
(FLOPs, bytes), the roofline time of each kernel, the alpha-beta time of each collective, and the
bytes each tensor kept for the backward occupies."""
