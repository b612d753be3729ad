"""Megatron flags as text: a command line's flags and values, a Megatron or NeMo YAML as flags, and flags
laid out one per line (:mod:`.megatron` says what they mean)."""
from __future__ import annotations

import shlex

# The Megatron flags parplan reads that take a list of values.
LIST_FLAGS = frozenset({"recompute-modules"})


def flag_values(source: str) -> dict:
    """Each flag of a command line with its value (True for a switch; a list flag's values joined)."""
    tokens = shlex.split(source.replace("\\\n", " "), comments=True)
    values: dict = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("--"):
            if "=" in tok:
                key, val = tok[2:].split("=", 1)
                values[key] = val
            elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
                j = i + 2
                if tok[2:] in LIST_FLAGS:  # a flag that takes a list keeps every value up to the next flag
                    while j < len(tokens) and not tokens[j].startswith("--"):
                        j += 1
                values[tok[2:]] = " ".join(tokens[i + 1:j])
                i = j - 1
            else:
                values[tok[2:]] = True
        i += 1
    return values


def yaml_to_flags(data) -> str:
    """Megatron YAML (``--yaml-cfg``) or a NeMo config: keys with underscores, nested under ``model`` for NeMo."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]
    out = []
    for key, value in (data or {}).items():
        if isinstance(value, dict) or value is None or value is False:
            continue
        flag = "--" + str(key).replace("_", "-")
        if isinstance(value, list):  # a multi-valued flag (recompute_modules: [layernorm, moe_act])
            out += [flag] + [shlex.quote(str(v)) for v in value]
            continue
        out += [flag] if value is True else [flag, shlex.quote(str(value))]
    return " ".join(out)


def flag_pairs(args: list[str]) -> list[list[str]]:
    """Group flags with their values, one per output line."""
    out: list[list[str]] = []
    for a in args:
        if a.startswith("--") or not out:
            out.append([a])
        else:
            out[-1].append(a)
    return out


def one_line(pairs: list[list[str]]) -> str:
    """Flags with their values, one per shell-continued line."""
    return " \\\n  ".join(" ".join(shlex.quote(a) for a in pair) for pair in pairs)
