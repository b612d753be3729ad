"""Text renderings of profiles, models and explain tables for the terminal."""
from __future__ import annotations

from ..specs.dtypes import DTYPES
from ..specs.hardware import Hardware
from ..specs.model import ModelSpec



def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {prefix}{unit}"
    return f"{value:.4g} {unit}"


def format_hardware(hw: Hardware) -> str:
    lines = [f"{hw.name}: {hw.description}" if hw.description else hw.name,
             f"  aliases            {', '.join(hw.aliases) or '-'}",
             f"  kind               {hw.kind} ({hw.vendor}), {hw.compute_units} compute units"]
    for dtype in DTYPES:
        if hw.peak_flops.get(dtype):
            lines.append(f"  peak {dtype:<13} {_si(hw.peak_flops[dtype], 'FLOP/s')} (dense)")
    if hw.clocks is not None:
        c = hw.clocks
        lines.append(f"  SM clock           {c.peak_mhz:g} MHz behind the tensor peaks, {c.boost_mhz:g} MHz boost"
                     + (f", rated at {c.power_limit_w:g} W" if c.power_limit_w else "")
                     + (f"; held {c.loaded_mhz:g} MHz under GEMM load when measured" if c.loaded_mhz else "")
                     + (f"; rates scaled to a sustained {c.sustained_mhz:g} MHz" if c.sustained_mhz else ""))
    lines += [
        f"  HBM                {hw.hbm_bytes / 1e9:.0f} GB at {_si(hw.hbm_bandwidth, 'B/s')}",
        f"  devices per node   {hw.devices_per_node}" + (f" (scale-up domain {hw.scale_up_domain})"
                                                          if hw.scale_up_domain != hw.devices_per_node else ""),
        f"  intra-node link    {hw.intra_node.name}: {_si(hw.intra_node.bandwidth, 'B/s')} per direction, "
        f"{hw.intra_node.latency_s * 1e6:.2g} us/step, {hw.intra_node.efficiency:.0%} achievable"
        + (", in-switch reduction" if hw.intra_node.in_switch_reduction else ""),
        f"  inter-node network {hw.inter_node.name}: {_si(hw.inter_node.bandwidth, 'B/s')} per device per "
        f"direction, {hw.inter_node.latency_s * 1e6:.2g} us/step, {hw.inter_node.efficiency:.0%} achievable",
        f"  matmul efficiency  {hw.matmul_efficiency:.1%} of peak (best shape)"
        + ("; calibrated curve" if hw.matmul_curve else ""),
        *_torus_lines(hw),
        "",
        "  derived (bf16 or the fastest 16-bit rate):",
    ]
    dtype = "bf16" if hw.peak_flops.get("bf16") else ("fp16" if hw.peak_flops.get("fp16") else next(iter(hw.peak_flops)))
    r = hw.ratios(dtype)
    lines += [
        f"    FLOP per HBM byte (roofline ridge)       {r['flops_per_hbm_byte']:8.0f}",
        f"    FLOP per intra-node byte                 {r['flops_per_intra_node_byte']:8.0f}"
        "  = tokens per device above which FSDP hides its all-gathers in a node",
        f"    FLOP per inter-node byte                 {r['flops_per_inter_node_byte']:8.0f}"
        "  = the same across nodes",
    ]
    if hw.sources:
        lines += ["", "  sources:"] + [f"    {k}: {v}" for k, v in hw.sources.items()]
    return "\n".join(lines)


def _torus_lines(hw: Hardware) -> list[str]:
    """A TPU's torus: its links, the largest slice and which slice axes wrap."""
    t = hw.torus
    if t is None:
        return []
    wrap = {"cubes": f"every axis of a slice made of whole {t.wrap_side}-chip-sided cubes",
            "full-axis": f"an axis of {t.wrap_side} chips"}.get(t.wrap_rule or "", "none below a pod")
    return [f"  ICI torus          {t.dims}D, {_si(t.link_bandwidth, 'B/s')} per link one way; largest slice "
            f"{'x'.join(map(str, t.max_slice)) or t.pod_devices} (more join over DCN: NAMExSLICESxCOUNT); "
            f"wraparound: {wrap}"]


def format_model(m: ModelSpec) -> str:
    lines = [
        f"{m.name}" + (f"  (aliases: {', '.join(m.aliases)})" if m.aliases else ""),
        f"  layers {m.layers}, hidden {m.hidden}, heads {m.heads} (kv {m.kv_heads}, head dim {m.head_dim}), "
        f"ffn {m.ffn_hidden} {m.activation}, vocab {m.vocab}, seq {m.seq_len}",
        f"  {m.norm}, {m.position} positions, bias {'yes' if m.bias else 'no'}, "
        f"embeddings {'tied' if m.tied_embeddings else 'untied'}"
        + ("" if m.causal else ", attention over every position (not causal)")
        + (", attention and MLP side by side" if m.parallel_layers else ""),
        f"  parameters        {m.total_params() / 1e9:10.3f} B",
        f"    per layer       {m.layer_params() / 1e6:10.2f} M (attention {m.attention_params() / 1e6:.2f} M, "
        f"MLP {m.mlp_params() / 1e6:.2f} M)",
        f"    embeddings      {m.embedding_params() / 1e6:10.2f} M",
        f"  model FLOPs/token {6 * m.total_params() + 12 * m.layers * m.hidden * m.seq_len:10.4g} "
        "(6N + 12 L h s, PaLM App. B)",
    ]
    if m.is_moe:
        lines[6:6] = [
            f"  experts           {m.experts} routed (top-{m.top_k}, width {m.expert_width})"
            + (f", {m.shared_experts} shared (width {m.shared_width})" if m.shared_experts else "")
            + f" in {m.moe_layers} of {m.layers} layers, {m.router} router",
            f"  active parameters {m.active_params() / 1e9:10.3f} B per token (embedding and head included)",
        ]
        lines[-1] = (f"  model FLOPs/token {6 * m.active_params() + 12 * m.layers * m.hidden * m.seq_len:10.4g} "
                     "(6 N_active + 12 L h s)")
        if m.mtp_layers:
            lines.append(f"  MTP modules       {m.mtp_layers} ({m.mtp_params() / 1e9:.2f} B more, not in the total)")
    if m.mla:
        lines.append(f"  latent attention  kv_lora_rank {m.kv_lora_rank}, q_lora_rank {m.q_lora_rank or 'none'}, "
                     f"rope {m.qk_rope_dim}, v {m.v_dim}")
    if m.max_seq_len:
        lines.append(f"  context window    {m.max_seq_len} tokens")
    if m.seq_note:
        lines.append(f"  sequence length   {m.seq_note}")
    if m.source:
        lines.append(f"  source: {m.source}")
    return "\n".join(lines)


def format_explain(data: dict) -> str:
    lines = ["one layer, one micro-batch, one device:",
             f"  {'op':<22}{'kind':<16}{'fwd GFLOP':>10}{'fwd MB':>10}{'FLOP/B':>9}{'bound':>9}"
             f"{'fwd ms':>9}{'bwd ms':>9}"]
    for r in data["ops"]:
        lines.append(f"  {r['op']:<22}{r['kind']:<16}{r['fwd_flops'] / 1e9:10.2f}{r['fwd_bytes'] / 1e6:10.2f}"
                     f"{r['intensity_flops_per_byte']:9.0f}{r['bound']:>9}{r['forward_s'] * 1e3:9.3f}"
                     f"{r['backward_s'] * 1e3:9.3f}")
    layer = data["layer"]
    lines.append(f"  layer total: forward {layer['forward_s'] * 1e3:.3f} ms, backward {layer['backward_s'] * 1e3:.3f} ms")
    slow = [r for r in data["ops"] if r.get("aligned_rate_fraction", 1.0) < 1.0]
    if slow:
        dims = sorted({int(d) for r in slow for d in r["misaligned_rows"]})
        lines.append(f"  note: {', '.join(r['op'] for r in slow)} run at "
                     f"{min(r['aligned_rate_fraction'] for r in slow):.0%} of the aligned GEMM rate: rows of "
                     f"{', '.join(map(str, dims))} elements are not multiples of 16 bytes "
                     "(efficiency.matmul_misaligned); 16-byte multiples run at full rate")
    lines += ["", "collectives per step (one device):",
              f"  {'name':<28}{'op':<15}{'axis':<5}{'group':>6}{'MB/call':>10}{'calls':>9}{'ms/call':>9}"
              f"{'link s':>9}{'exposed s':>10}  overlaps"]
    for c in data["collectives"]:
        lines.append(f"  {c['name']:<28}{c['op']:<15}{c['axis']:<5}{c['group']:>6}{c['bytes'] / 1e6:10.2f}"
                     f"{c['calls_per_step']:9.0f}{c['time_s'] * 1e3:9.3f}{c['link_s']:9.3f}{c['exposed_s']:10.3f}"
                     f"  {c['overlaps_with']}" + (f" on {c['links']}" if "links" in c else ""))
    lines += ["", "per mesh axis (exposed includes the slowdown of the compute the overlapped collectives run beside):",
              f"  {'axis':<6}{'on link s':>11}{'hidden s':>10}{'exposed s':>11}{'slowdown s':>12}"
              "  bus bandwidth to hide it"]
    for a in data.get("axes", []):
        need = f"{a['bandwidth_to_hide'] / 1e9:.1f} GB/s" if a["bandwidth_to_hide"] else "n/a (" + a["note"] + ")"
        lines.append(f"  {a['axis']:<6}{a['link_s']:11.3f}{a['hidden_s']:10.3f}{a['exposed_s']:11.3f}"
                     f"{a['compute_slowdown_s']:12.3f}  {need}")
    contention = data.get("contention")
    if contention:
        lines.append(f"  {contention}")
    return "\n".join(lines)
