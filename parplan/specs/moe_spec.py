"""The mixture-of-experts and latent-attention fields of a model spec, and their checks.

A mixture-of-experts layer (Shazeer et al. 2017; GShard, arXiv 2006.16668; Switch, arXiv 2101.03961)
replaces the dense MLP with ``experts`` expert MLPs of width ``expert_ffn`` and a router that sends
each token to its ``top_k`` best; ``shared_experts`` (DeepSeekMoE, arXiv 2401.06066) see every
token. Which layers are MoE: past ``moe_first_dense`` dense ones, every ``moe_every``-th, less the
``moe_dense_layers`` listed. ``capacity_factor``: a framework that drops tokens beyond
``capacity_factor`` times an expert's mean load (None: dropless). ``router_imbalance``: the busiest
device's routed tokens over the mean, where a publication gives one for the model.

Multi-head latent attention (DeepSeek-V2, arXiv 2405.04434, Sec. 2.1): ``kv_lora_rank`` (the
compressed key-value latent the cache holds), ``q_lora_rank`` (0: the query is one projection),
``qk_rope_dim`` (the decoupled rotary part of each query/key head, shared by the heads on the key
side), ``v_head_dim``; ``head_dim`` is a query/key head's whole size (nope + rope).
"""
from __future__ import annotations

from typing import Any, Mapping

from ..errors import ParplanError
from .yamlio import number, suggest

ROUTERS = ("softmax", "sigmoid")
MOE_KEYS = ("experts", "top_k", "shared_experts", "expert_ffn", "shared_ffn", "moe_first_dense", "moe_every",
            "moe_dense_layers", "router", "capacity_factor", "router_imbalance",
            "q_lora_rank", "kv_lora_rank", "qk_rope_dim", "v_head_dim", "mtp_layers")
MAX = 10_000_000


def moe_fields(data: Mapping[str, Any], what: str, *, heads: int, kv_heads: int, head_dim: int,
               layers: int) -> dict:
    """The MoE and MLA keyword arguments of a ModelSpec from a spec mapping, checked."""
    def whole(key, default=0):
        return number(data, key, what, required=False, integer=True, positive=False, default=default, maximum=MAX)

    out: dict[str, Any] = {k: whole(k) for k in ("experts", "top_k", "shared_experts", "expert_ffn", "shared_ffn",
                                                  "moe_first_dense", "q_lora_rank", "kv_lora_rank", "qk_rope_dim",
                                                  "v_head_dim", "mtp_layers")}
    out["moe_every"] = number(data, "moe_every", what, required=False, integer=True, default=1, maximum=MAX)
    for key, value in out.items():
        if value < 0:
            raise ParplanError(f"{what}: field '{key}' must not be negative, got {value}")
    dense = data.get("moe_dense_layers") or ()
    if not isinstance(dense, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) or not
                                                   0 <= i < layers for i in dense):
        raise ParplanError(f"{what}: field 'moe_dense_layers' must list layer indices from 0 to {layers - 1}")
    out["moe_dense_layers"] = tuple(sorted(set(dense)))
    router = data.get("router", "softmax")
    if router not in ROUTERS:
        raise ParplanError(f"{what}: unknown router {router!r}{suggest(str(router), ROUTERS)}; "
                           f"routers are {', '.join(ROUTERS)}")
    out["router"] = router
    out["capacity_factor"] = number(data, "capacity_factor", what, required=False, maximum=1000)
    out["router_imbalance"] = number(data, "router_imbalance", what, required=False, maximum=1000)
    _check_moe(out, what, layers)
    _check_mla(out, what, heads, kv_heads, head_dim)
    return out


def _check_moe(f: dict, what: str, layers: int) -> None:
    experts, k = f["experts"], f["top_k"]
    if not experts:
        given = [key for key in ("top_k", "shared_experts", "expert_ffn", "shared_ffn", "moe_first_dense")
                 if f[key]] + (["capacity_factor"] if f["capacity_factor"] else []) + \
            (["router_imbalance"] if f["router_imbalance"] else []) + (["moe_dense_layers"] if f["moe_dense_layers"]
                                                                       else [])
        if given:
            raise ParplanError(f"{what}: '{given[0]}' describes mixture-of-experts layers, but 'experts' is not "
                               f"given (a dense model)")
        return
    if experts < 2:
        raise ParplanError(f"{what}: a mixture of experts needs at least 2 routed experts, got experts: {experts}")
    if k < 1:
        raise ParplanError(f"{what}: a mixture of {experts} experts needs 'top_k', the experts each token visits")
    if k > experts:
        raise ParplanError(f"{what}: top-k {k} exceeds the {experts} routed experts")
    if f["moe_first_dense"] >= layers:
        raise ParplanError(f"{what}: moe_first_dense ({f['moe_first_dense']}) leaves none of the {layers} layers MoE")
    if f["capacity_factor"] is not None and f["capacity_factor"] < 1:
        raise ParplanError(f"{what}: capacity_factor {f['capacity_factor']} is below 1 (every expert would drop "
                           f"tokens even under a perfectly balanced router)")
    if f["router_imbalance"] is not None and f["router_imbalance"] < 1:
        raise ParplanError(f"{what}: router_imbalance is the busiest device's load over the mean, at least 1; "
                           f"got {f['router_imbalance']}")


def _check_mla(f: dict, what: str, heads: int, kv_heads: int, head_dim: int) -> None:
    mla = ("q_lora_rank", "qk_rope_dim", "v_head_dim")
    if not f["kv_lora_rank"]:
        given = [key for key in mla if f[key]]
        if given:
            raise ParplanError(f"{what}: '{given[0]}' describes multi-head latent attention, which needs "
                               f"'kv_lora_rank'")
        return
    if kv_heads != heads:
        raise ParplanError(f"{what}: latent attention gives every head its own key and value (kv_heads = heads "
                           f"= {heads}), got kv_heads {kv_heads}")
    if not f["qk_rope_dim"] or f["qk_rope_dim"] >= head_dim:
        raise ParplanError(f"{what}: latent attention needs qk_rope_dim, the rotary part of the {head_dim}-wide "
                           f"query/key head (head_dim = nope + rope)")
