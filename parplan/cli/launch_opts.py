"""Launch configs on the command line: the framework ``plan --emit`` implies, and ``--from-config``."""
from __future__ import annotations

from ..errors import ParplanError


def emit_framework(target: str, framework: str | None) -> str:
    """The framework a plan for ``--emit target`` is searched for: the target's profile, or the one given if it
    emits that target."""
    from ..plan.emitters import PROFILES
    from ..specs.framework_loader import load_framework

    if target not in PROFILES:
        raise ParplanError(f"--emit {target} writes serving flags; it needs --mode inference")
    if framework is None:
        return PROFILES[target]
    if load_framework(framework).emit != target:
        raise ParplanError(f"--emit {target} contradicts --framework {framework}, which launches as "
                           f"{load_framework(framework).emit or 'none of the --emit targets'}")
    return framework


LAUNCH_OPTIONS = {"seq_len": "seq"}  # LaunchConfig layout field -> option name, where they differ


def with_launch_config(path: str, model_name: str, hw: str, kw: dict, ctx) -> dict:
    """The options with a launch config's layout and software filled in, where the command line gave none."""
    from click.core import ParameterSource

    from ..plan.emitters import read_config
    from ..specs.cluster import load_cluster
    from ..specs.model_loader import load_model

    config = read_config(path, load_cluster(hw).devices, load_model(model_name))

    def given(name):
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP)
    kw = dict(kw)
    mesh_given = any(given(a) for a in ("tp", "pp", "cp", "mesh"))
    for key, value in config.layout.items():
        if key == "axes":  # the expert axes of an MoE launch
            for axis, size in value:
                if axis in kw and not given(axis) and not given("mesh"):
                    kw[axis] = size
            continue
        if key == "order":  # the rank order of the launch: a mesh of its sizes, innermost first
            if "mesh" in kw and not mesh_given and not given("dp"):
                sizes = {a: config.layout.get(a) for a in value}
                if all(isinstance(v, int) for v in sizes.values()):
                    kw["mesh"] = ",".join(f"{a}={n}" for a, n in sizes.items())
            continue
        option = LAUNCH_OPTIONS.get(key, key)
        if option not in kw or given(option) or (option == "dp" and mesh_given):
            continue
        kw[option] = value
    for option, value in (("framework", config.framework), ("compiled", config.compiled),
                          ("fp8_recipe", config.fp8_recipe), ("moe_overlap", config.moe_overlap),
                          ("optimizer_states", config.optimizer_states), ("moe_dispatcher", config.moe_dispatcher),
                          ("tp_overlap", config.tp_overlap), ("fp8_params", config.fp8_params),
                          ("offload_layers", config.offload_layers)):
        if not given(option) and value is not None:
            kw[option] = value
    return kw
