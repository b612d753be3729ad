"""A MaxText config for a plan, and the plan back from a user's MaxText config.

Keys of MaxText's ``src/maxtext/configs/base.yml`` (AI-Hypercomputer/maxtext e591f30; every key listed
in ``maxtext_keys.txt``): the mesh as ``ici_*_parallelism`` (within a slice) times
``dcn_*_parallelism`` (across slices) over the axes ``data``, ``fsdp``, ``tensor``, ``pipeline`` and
``context``; ``per_device_batch_size`` (global batch = it times the chips, per accumulation step),
``gradient_accumulation_steps`` (micro-batches without a pipeline) or ``num_pipeline_microbatches``,
``num_pipeline_repeats`` (circular repeats, the interleaving), ``shard_optimizer_over_data`` (ZeRO-1),
``remat_policy`` (``full``; ``minimal`` keeps every projection's output and recomputes the rest, parplan's
save-dots; ``minimal_with_context`` keeps the context too, parplan's none, since MaxText
rematerialises every layer under some policy), ``max_target_length``, ``dtype`` / ``quantization``
(fp8), the model's shapes (``base_emb_dim`` ...) and a ``base_config`` that inherits base.yml.

ZeRO-3 is FSDP; HSDP is ``ici_fsdp`` (the shard group) with ``data`` replicas; on a TPU plan the
torus map's slices (its ``dcn`` factors) go to the ``dcn_*`` axes: the data replicas first, then FSDP
(MaxText's ``dcn_fsdp_parallelism``), and the pipeline's own share.
"""
from __future__ import annotations

from importlib import resources

import yaml

from ...errors import ParplanError
from ...layouts.layout import Layout
from ...specs.model import ModelSpec
from .common import agree, launch, profile_for, rule_problem, software_problem, split_dp, whole

TARGET = "maxtext"
PROFILE = "jax"
REMAT = {"full": "full", "save-dots": "minimal", "none": "minimal_with_context"}
REMAT_READ = {"full": "full", "minimal": "save-dots", "minimal_with_context": "none", "minimal_flash": "none"}
# The names a decoder layer gives its saved tensors (checkpoint_name), which remat_policy custom sets each to
# device, remat or offload; offloading (--offload-layers) sends full remat's layer inputs, or save-dots' projections.
PROJECTIONS = ("query_proj", "key_proj", "value_proj", "qkv_proj", "out_proj", "mlpwi", "mlpwi_0", "mlpwi_1", "mlpwo")
REMAT_NAMES = ("decoder_layer_input", "context") + PROJECTIONS
OFFLOADED = {"full": ("decoder_layer_input",), "save-dots": PROJECTIONS}
ACTIVATIONS = {"swiglu": ["silu", "linear"], "gelu": ["gelu"], "relu": ["relu"]}
DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32", "fp8": "bfloat16"}
AXES = ("data", "fsdp", "tensor", "pipeline", "context")
MODELLED = {f"{net}_{a}_parallelism" for net in ("ici", "dcn") for a in AXES}


def maxtext_keys() -> frozenset[str]:
    """Every key of MaxText's base.yml at e591f30 (``maxtext_keys.txt``)."""
    text = resources.files(__package__).joinpath("maxtext_keys.txt").read_text()
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def problem(layout: Layout, model: ModelSpec, software=None) -> str | None:
    fw = profile_for(TARGET, software, PROFILE)
    said = rule_problem(layout, model, fw) or software_problem(software, fw)
    if said:
        return said
    if layout.tp_mode != "1d":
        return f"MaxText shards tensors over one tensor axis; tp-mode {layout.tp_mode} has no MaxText setting"
    return None


def _dcn(layout: Layout, axis: str) -> int:
    """The slices ``axis`` spans on the plan's torus map (1 without one)."""
    for name, factors in layout.torus_map or ():
        if name == axis:
            return int(factors[-1])
    return 1


def mesh(layout: Layout) -> dict:
    """The ``ici_*`` and ``dcn_*`` parallelism of each MaxText axis for a layout."""
    fsdp = (layout.shard_group or layout.dp) if layout.zero == 3 else 1
    data = layout.dp // fsdp
    dcn_dp, dcn_pp = _dcn(layout, "dp"), _dcn(layout, "pp")
    dcn_data = next(d for d in range(min(dcn_dp, data), 0, -1) if data % d == 0 and dcn_dp % d == 0)
    dcn_fsdp = dcn_dp // dcn_data
    if fsdp % dcn_fsdp:
        raise ParplanError(f"--emit maxtext: the plan's {dcn_dp} slices do not split its data parallelism "
                           f"({data} replicas x {fsdp} FSDP shards)")
    sizes = {"data": (data // dcn_data, dcn_data), "fsdp": (fsdp // dcn_fsdp, dcn_fsdp), "tensor": (layout.tp, 1),
             "pipeline": (layout.pp // dcn_pp, dcn_pp), "context": (layout.cp, 1)}
    out = {}
    for net, i in (("ici", 0), ("dcn", 1)):
        out.update({f"{net}_{a}_parallelism": sizes[a][i] for a in AXES})
    return out


def config(layout: Layout, model: ModelSpec, software=None) -> dict:
    devices = layout.tp * layout.pp * layout.dp * layout.cp
    micro_batches = layout.micro_batches
    steps = 1 if layout.pp > 1 else micro_batches
    per_device = layout.batch / (devices * steps)
    cfg = {"base_config": "base.yml",
           "base_emb_dim": model.hidden, "base_num_query_heads": model.heads, "base_num_kv_heads": model.kv_heads,
           "head_dim": model.head_dim, "base_mlp_dim": model.ffn_hidden, "base_num_decoder_layers": model.layers,
           "vocab_size": model.vocab, "mlp_activations": ACTIVATIONS[model.activation],
           "logits_via_embedding": model.tied_embeddings,
           "max_target_length": layout.seq_len or model.seq_len,
           "per_device_batch_size": int(per_device) if float(per_device).is_integer() else per_device,
           "gradient_accumulation_steps": steps,
           "dtype": DTYPES[layout.dtype], "remat_policy": REMAT[layout.recompute],
           "shard_optimizer_over_data": layout.zero == 1, **mesh(layout)}
    if software is not None and software.offload_layers:  # MaxText offloads a name in every layer of the stack
        cfg["remat_policy"] = "custom"
        cfg.update(_custom_remat(layout.recompute))
    if model.mtp_layers:
        cfg["mtp_num_layers"] = model.mtp_layers
    if layout.dtype == "fp8":
        cfg["quantization"] = "fp8"
    if layout.pp > 1:
        cfg["num_pipeline_microbatches"] = micro_batches
        cfg["num_pipeline_repeats"] = layout.vpp
    if layout.cp > 1:
        cfg["context_parallel_strategy"] = "ring" if layout.cp_mode == "ring" else "all_gather"
    return cfg


def text(layout: Layout, model: ModelSpec, software=None) -> str:
    head = ("# MaxText config (keys of src/maxtext/configs/base.yml); run: python3 -m maxtext.trainers.pre_train.train "
            "this.yml\n")
    return head + yaml.safe_dump(config(layout, model, software), sort_keys=False).rstrip()


def read(data: dict, world_size: int, model: ModelSpec):
    """A :class:`LaunchConfig` from a MaxText config mapping (a ``base_config`` overlay or a base.yml copy)."""
    keys = maxtext_keys()
    from ...specs.yamlio import suggest

    for k in data:
        if k not in keys:
            raise ParplanError(f"MaxText config: unknown key '{k}'{suggest(str(k), keys)}")
    for k in sorted(keys):
        if k.endswith("_parallelism") and (k.startswith("ici_") or k.startswith("dcn_")) and k not in MODELLED:
            if data.get(k, 1) not in (1, None):
                raise ParplanError(f"MaxText config: {k} = {data[k]}; parplan lays out the data, fsdp, tensor, "
                                   f"pipeline and context axes only")
    size = {a: _axis(data, a) for a in AXES}
    fixed = 1
    for a in AXES:
        fixed *= abs(size[a])
    auto = [a for a in AXES if size[a] < 0]
    if len(auto) > 1:
        raise ParplanError(f"MaxText config: more than one axis is -1 ({', '.join(auto)}); give all but one")
    if auto:
        size[auto[0]] = split_dp(world_size, fixed)
    elif fixed != world_size:
        raise ParplanError(f"MaxText config: its axes multiply to {fixed} chips, not the cluster's {world_size}")
    tp, pp, cp = size["tensor"], size["pipeline"], size["context"]
    dp = size["data"] * size["fsdp"]
    zero = 3 if size["fsdp"] > 1 else (1 if data.get("shard_optimizer_over_data") else 0)
    remat, offload = data.get("remat_policy", "full"), None
    if remat == "custom":  # the two custom policies parplan models: an offload of full's or save-dots' tensors
        names = {n: data.get(n, "remat") for n in REMAT_NAMES}
        remat = next((REMAT[r] for r in OFFLOADED if names == _custom_remat(r)), None)
        if remat is None:
            raise ParplanError("MaxText config: remat_policy custom is modelled only as offloading "
                               "decoder_layer_input (full remat) or every projection (minimal), the rest remat")
        offload = model.layers
    if remat not in REMAT_READ:
        raise ParplanError(f"MaxText config: remat_policy '{remat}' is not modelled; parplan runs "
                           f"{', '.join(REMAT_READ)}")
    per_device = data.get("per_device_batch_size", 12.0)  # base.yml's default
    if isinstance(per_device, bool) or not isinstance(per_device, (int, float)) or per_device <= 0:
        raise ParplanError(f"MaxText config: per_device_batch_size must be a positive number, got {per_device!r}")
    steps = whole(data.get("gradient_accumulation_steps", 1), "gradient_accumulation_steps")
    batch = per_device * world_size * steps
    if not float(batch).is_integer():
        raise ParplanError(f"MaxText config: per_device_batch_size {per_device} x {world_size} chips is not a whole "
                           f"number of sequences")
    batch = int(batch)
    micro = whole(data.get("num_pipeline_microbatches", pp), "num_pipeline_microbatches") if pp > 1 else steps
    if batch % (dp * micro):
        raise ParplanError(f"MaxText config: {batch} sequences do not split into {micro} micro-batches on {dp} "
                           f"data-parallel ranks")
    _check_model(data, model)
    dtype = "fp8" if data.get("quantization") == "fp8" else {v: k for k, v in DTYPES.items()
                                                              if k != "fp8"}.get(data.get("dtype", "bfloat16"))
    if dtype is None:
        raise ParplanError(f"MaxText config: dtype '{data.get('dtype')}' is not one of bfloat16, float16, float32")
    layout = dict(tp=tp, pp=pp, cp=cp, dp=dp, zero=zero, micro_batch=batch // (dp * micro), global_batch=batch,
                  seq_len=whole(data["max_target_length"], "max_target_length") if "max_target_length" in data
                  else None, shard_group=size["fsdp"] if zero == 3 and size["data"] > 1 else None,
                  recompute=REMAT_READ[remat], dtype=dtype)
    if pp > 1:
        repeats = data.get("num_pipeline_repeats", 1)
        layout["vpp"] = 1 if repeats in (-1, None) else whole(repeats, "num_pipeline_repeats")
        layout["schedule"] = "interleaved" if layout["vpp"] > 1 else "gpipe"
    if cp > 1:
        layout["cp_mode"] = "ring" if data.get("context_parallel_strategy") == "ring" else "allgather"
    return launch(TARGET, PROFILE, layout, fp8_recipe="current" if dtype == "fp8" else None, offload_layers=offload)


def _custom_remat(recompute: str) -> dict:
    """remat_policy custom's names for an offload under ``recompute``: its tensors offloaded, the rest remat."""
    if recompute not in OFFLOADED:
        raise ParplanError(f"MaxText offloads under full or save-dots remat, not {recompute}")
    return {n: "offload" if n in OFFLOADED[recompute] else "remat" for n in REMAT_NAMES}


BASE_ICI, BASE_DCN = {"fsdp": -1}, {"data": -1}  # base.yml: ici_fsdp_parallelism -1, dcn_data_parallelism -1


def _axis(data: dict, axis: str) -> int:
    """ici x dcn of one MaxText axis; negative when one of them is -1 (filled from the chip count)."""
    ici = data.get(f"ici_{axis}_parallelism", BASE_ICI.get(axis, 1))
    dcn = data.get(f"dcn_{axis}_parallelism", BASE_DCN.get(axis, 1))
    for name, v in ((f"ici_{axis}_parallelism", ici), (f"dcn_{axis}_parallelism", dcn)):
        if isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1:
            raise ParplanError(f"MaxText config: {name} must be a positive whole number or -1, got {v!r}")
    if dcn == -1:  # the slices: the cluster's device count alone does not say how many, so one
        dcn = 1
    return -abs(ici * dcn) if ici == -1 else ici * dcn


def _check_model(data: dict, model: ModelSpec) -> None:
    for key, value, what in (("base_emb_dim", model.hidden, "hidden"), ("base_num_query_heads", model.heads, "heads"),
                             ("base_num_kv_heads", model.kv_heads, "kv_heads"), ("head_dim", model.head_dim,
                                                                                  "head_dim"),
                             ("base_mlp_dim", model.ffn_hidden, "ffn_hidden"),
                             ("base_num_decoder_layers", model.layers, "layers"), ("vocab_size", model.vocab, "vocab")):
        agree(f"MaxText {key}", data.get(key), value, f"the model's {what}")
    mtp = data.get("mtp_num_layers") or 0
    agree("MaxText mtp_num_layers", whole(mtp, "MaxText mtp_num_layers") if mtp else 0, model.mtp_layers,
          "the model's mtp_layers")
