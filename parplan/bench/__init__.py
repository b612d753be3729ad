"""``parplan bench``: measure collectives, matmuls, HBM copies and a transformer layer with PyTorch,
then fit a hardware profile to the results (``calibrate``) and check the model against them (``compare``).

Only the per-rank worker (``worker``, ``measure``, ``layer``, ``moe``, ``model``, ``step``) imports
torch; everything the planner CLI loads (``cli``, ``sweep``, ``results``, ``calibrate``, ``compare``, ``nccl_tests``)
runs without it.
"""
