"""The training layout a command line describes: its axes (``--mesh`` or the shorthands), knobs, the
default global batch and, on a TPU, the map of mesh axes onto the torus (``--ici``)."""
from __future__ import annotations

from ..errors import ParplanError


def build_layout(cluster, model, *, mesh, tp, pp, dp, cp, micro_batch, global_batch, seq, recompute, dtype,
                 zero, shard_group, sp, tp_mode, cp_mode, vpp, schedule, ep=None, etp=None, ici=None,
                 first_stage_layers=None, last_stage_layers=None, recompute_layers=None):
    from ..layouts.layout import DEFAULT_ORDER, Layout, mesh_order, parse_mesh
    from ..plan.candidates import default_global_batch

    order = DEFAULT_ORDER
    given = {"tp": tp, "pp": pp, "dp": dp, "cp": cp, "ep": ep, "etp": etp}
    extra = {}
    if mesh:
        sizes = parse_mesh(mesh)
        for axis, size in sizes.items():
            if given.get(axis) is not None and given[axis] != size:
                raise ParplanError(f"--{axis} {given[axis]} contradicts --mesh {axis}={size}")
            if axis in given:
                given[axis] = size
            else:
                extra[axis] = size
        order = mesh_order(sizes)
    for axis in ("ep", "etp"):
        if given[axis] is not None:
            if given[axis] < 1:
                raise ParplanError(f"--{axis} must be a positive whole number, got {given[axis]}")
            extra[axis] = given[axis]
    for axis in ("tp", "pp", "cp"):
        given[axis] = 1 if given[axis] is None else given[axis]
        if given[axis] < 1:
            raise ParplanError(f"--{axis} must be a positive whole number, got {given[axis]}")
    if given["dp"] is None:
        inner = given["tp"] * given["pp"] * given["cp"]
        if cluster.devices % inner:
            raise ParplanError(f"tp*pp*cp = {inner} does not divide the {cluster.devices} devices of {cluster.label}")
        given["dp"] = cluster.devices // inner
    for name, v in (("micro-batch", micro_batch), ("global-batch", global_batch), ("seq", seq), ("vpp", vpp),
                    ("shard-group", shard_group), ("dp", given["dp"])):
        if v is not None and v < 1:
            raise ParplanError(f"--{name} must be a positive whole number, got {v}")
    if global_batch is None:  # the plan's default, in whole rounds of micro-batches
        global_batch = default_global_batch(model, cluster, seq or model.seq_len, micro_batch * given["dp"])
    if recompute is None:  # --recompute-layers alone implies a full recompute
        recompute = "full" if recompute_layers is not None else "none"
    layout = Layout(tp=given["tp"], pp=given["pp"], dp=given["dp"], cp=given["cp"], micro_batch=micro_batch,
                    global_batch=global_batch, seq_len=seq, recompute=recompute, dtype=dtype, zero=zero,
                    shard_group=shard_group, sp=sp, tp_mode=tp_mode, cp_mode=cp_mode, vpp=vpp,
                    schedule=schedule, order=tuple(order), axes=tuple(extra.items()),
                    first_stage_layers=first_stage_layers, last_stage_layers=last_stage_layers,
                    recompute_layers=recompute_layers)
    if ici is not None:
        from dataclasses import replace
        from ..layouts.torus_map import parse_map
        layout = replace(layout, torus_map=parse_map(ici, layout.sizes(), cluster))
    return layout
