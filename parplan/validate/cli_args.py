"""The command line a user types to predict one validation record: ``parplan plan`` with the record's fields
as flags, its model and (where the record changes the hardware's defaults) its cluster as spec files.

``validate`` predicts every record through :func:`parplan.validate.published.predict_record`, the library path
``plan`` runs; ``scripts/validate_via_cli.py`` runs these command lines instead and compares, and the tests
check that both give the same step time (one path for everyone: no field of a record reaches the prediction
except as a flag or a spec a user can write).
"""
from __future__ import annotations

from pathlib import Path

import yaml

from .published import record_model_data, record_setup

# Record layout keys and the plan options that fix them.
LAYOUT_FLAGS = {"tp": "--tp", "pp": "--pp", "dp": "--dp", "cp": "--cp", "ep": "--ep", "etp": "--etp",
                "zero": "--zero", "micro_batch": "--micro-batch", "vpp": "--vpp", "shard_group": "--shard-group",
                "recompute": "--recompute", "recompute_layers": "--recompute-layers",
                "first_stage_layers": "--first-stage-layers", "last_stage_layers": "--last-stage-layers"}
# Record software keys and the options that take them.
SOFTWARE_FLAGS = {"framework": "--framework", "fp8_recipe": "--fp8-recipe", "moe_overlap": "--moe-overlap",
                  "moe_dispatcher": "--moe-dispatcher", "tp_overlap": "--tp-overlap",
                  "optimizer_states": "--optimizer-states", "offload_layers": "--offload-layers"}
# Record switches and their (on, off) options; a switch the record leaves out is the framework's default.
SWITCHES = {"compiled": ("--compile", "--no-compile"), "fp8_params": ("--fp8-params", "--no-fp8-params")}
# Cluster-file keys a record may set beside its hardware and device count.
CLUSTER_FIELDS = ("devices_per_node", "inter_node_bandwidth", "slices", "slice")


def record_cli_args(rec: dict, workdir: Path, framework: str | None = None) -> list[str]:
    """``parplan plan`` arguments (without the command) for ``rec``, writing its model, and its cluster where
    needed, as YAML files under ``workdir``. ``framework``: for a record that names none, as ``validate
    --framework`` takes it."""
    setup = record_setup(rec, framework)  # the same checks and normalised knobs validate uses
    rid = str(rec["id"])
    model = record_model_data(rec)
    model_path = Path(workdir) / f"{rid}-model.yaml"
    model_path.write_text(yaml.safe_dump(model, sort_keys=False))
    hw = f"{rec['hardware']}x{rec['devices']}"
    if any(rec.get(k) is not None for k in CLUSTER_FIELDS):
        cluster = {"hardware": rec["hardware"], "devices": rec["devices"]}
        cluster.update({k: rec[k] for k in CLUSTER_FIELDS if rec.get(k) is not None})
        hw = str(Path(workdir) / f"{rid}-cluster.yaml")
        Path(hw).write_text(yaml.safe_dump(cluster, sort_keys=False))
    args = ["--model", str(model_path), "--hw", hw, "--global-batch", str(setup.global_batch),
            "--seq", str(setup.model.seq_len), "--dtype", setup.dtype]
    for key, option in LAYOUT_FLAGS.items():
        if key in setup.fixed:
            args += [option, str(setup.fixed[key])]
    if "sp" in setup.fixed:
        args.append("--sp" if setup.fixed["sp"] else "--no-sp")
    fields = dict(rec, framework=rec.get("framework") or framework)
    for key, option in SOFTWARE_FLAGS.items():
        if fields.get(key) is not None:
            args += [option, str(fields[key])]
    for key, (on, off) in SWITCHES.items():
        if rec.get(key) is not None:
            args.append(on if rec[key] else off)
    # Only an explicit false overrides the framework's kernels, as validate reads these two.
    args += ["--no-flash-attention"] if rec.get("flash_attention") is False else []
    args += ["--no-fused-kernels"] if rec.get("fused_kernels") is False else []
    return args


__all__ = ["record_cli_args"]
