"""CIR-LoRA: a mixture-of-experts LoRA for the cross-attention projections of a diffusion UNet.

``MoELoRALinear`` wraps a frozen ``nn.Linear``: ``y = W x + (alpha / r) * sum_e g_e(c) B_e A_e x``,
with ``E`` low-rank experts ``(A_e, B_e)`` and a router ``g(c) = softmax(R c)`` conditioned on a
description embedding ``c`` (set per batch with ``set_condition``, since the UNet calls the
projection with hidden states only). ``B_e`` start at zero, so an injected model computes exactly
what the base model does until it is trained. ``inject_cir_lora`` wraps the cross-attention
(``attn2``) projections of any module tree (diffusers UNets name them ``...attn2.to_q/to_k/to_v/
to_out.0``); ``save_adapter`` / ``load_adapter`` keep only the adapter (safetensors + config.json).
Pure PyTorch: the diffusers generator (``cirlab.synth.diffusion``) uses it.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CirlabError


@dataclass
class CIRLoRAConfig:
    cond_dim: int                     # width of the description embedding the router sees
    experts: int = 4
    rank: int = 4
    alpha: float = 4.0
    targets: list[str] = field(default_factory=lambda: ["attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"])

    def __post_init__(self) -> None:
        if self.experts < 1 or self.rank < 1 or self.cond_dim < 1:
            raise CirlabError(f"CIR-LoRA: experts, rank and cond_dim must be >= 1, got {self}")


class MoELoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, cfg: CIRLoRAConfig) -> None:
        super().__init__()
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        e, r = cfg.experts, cfg.rank
        self.lora_a = nn.Parameter(torch.randn(e, r, base.in_features) / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(e, base.out_features, r))
        self.router = nn.Linear(cfg.cond_dim, e)
        self.scaling = cfg.alpha / r
        self._cond: torch.Tensor | None = None

    def set_condition(self, cond: torch.Tensor | None) -> None:
        self._cond = cond

    def route(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, cond_dim) -> (B, experts) mixing weights (each row sums to 1)."""
        return torch.softmax(self.router(cond.to(self.router.weight.dtype)), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self._cond is None:
            raise RuntimeError("CIR-LoRA: call set_condition(description embedding) before the forward pass")
        g = self.route(self._cond)                                        # (B, E)
        if g.shape[0] != x.shape[0]:
            g = g.repeat_interleave(x.shape[0] // g.shape[0], dim=0)      # e.g. a batch repeated for guidance
        low = torch.einsum("erd,b...d->b...er", self.lora_a, x)           # (B, ..., E, r)
        up = torch.einsum("eor,b...er->b...eo", self.lora_b, low)         # (B, ..., E, out)
        shape = (g.shape[0],) + (1,) * (x.dim() - 2) + (g.shape[1], 1)
        return y + self.scaling * (up * g.view(shape)).sum(-2)


def inject_cir_lora(model: nn.Module, cfg: CIRLoRAConfig) -> dict[str, MoELoRALinear]:
    """Wrap every ``nn.Linear`` whose qualified name ends with one of ``cfg.targets``; returns them by name."""
    found: dict[str, MoELoRALinear] = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and any(name.endswith(t) for t in cfg.targets):
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            wrapped = MoELoRALinear(module, cfg)
            if child.isdigit():        # inside an nn.ModuleList / nn.Sequential (diffusers' to_out.0)
                parent[int(child)] = wrapped
            else:
                setattr(parent, child, wrapped)
            found[name] = wrapped
    if not found:
        raise CirlabError(f"CIR-LoRA: no nn.Linear named like {cfg.targets} in {type(model).__name__}")
    return found


def set_condition(adapters: dict[str, MoELoRALinear], cond: torch.Tensor | None) -> None:
    for m in adapters.values():
        m.set_condition(cond)


def adapter_parameters(adapters: dict[str, MoELoRALinear]) -> list[nn.Parameter]:
    return [p for m in adapters.values() for p in (m.lora_a, m.lora_b, *m.router.parameters())]


def adapter_state(adapters: dict[str, MoELoRALinear]) -> dict[str, torch.Tensor]:
    out = {}
    for name, m in adapters.items():
        out[f"{name}.lora_a"], out[f"{name}.lora_b"] = m.lora_a, m.lora_b
        out[f"{name}.router.weight"], out[f"{name}.router.bias"] = m.router.weight, m.router.bias
    return {k: v.detach().float().cpu().contiguous() for k, v in out.items()}


def save_adapter(adapters: dict[str, MoELoRALinear], cfg: CIRLoRAConfig, directory: str | os.PathLike[str],
                 extra: dict | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(adapters), str(d / "adapter.safetensors.tmp"), metadata={"kind": "cir-lora"})
    os.replace(d / "adapter.safetensors.tmp", d / "adapter.safetensors")
    (d / "config.json").write_text(json.dumps({"kind": "cir-lora", "cir_lora": asdict(cfg), **(extra or {})}, indent=1))
    return d


def load_adapter(model: nn.Module, directory: str | os.PathLike[str]) -> tuple[dict[str, MoELoRALinear], CIRLoRAConfig]:
    """Inject CIR-LoRA into ``model`` as saved in ``directory`` and load its weights."""
    d = Path(directory)
    try:
        meta = json.loads((d / "config.json").read_text())
        cfg = CIRLoRAConfig(**meta["cir_lora"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CirlabError(f"{d / 'config.json'}: not a CIR-LoRA adapter config ({e})") from None
    adapters = inject_cir_lora(model, cfg)
    state = load_file(str(d / "adapter.safetensors"))
    want = set(adapter_state(adapters))
    if set(state) != want:
        raise CirlabError(f"{d / 'adapter.safetensors'}: adapter does not fit this model "
                          f"(missing {sorted(want - set(state))[:3]}, unexpected {sorted(set(state) - want)[:3]})")
    with torch.no_grad():
        for name, m in adapters.items():
            m.lora_a.copy_(state[f"{name}.lora_a"])
            m.lora_b.copy_(state[f"{name}.lora_b"])
            m.router.weight.copy_(state[f"{name}.router.weight"])
            m.router.bias.copy_(state[f"{name}.router.bias"])
    return adapters, cfg


__all__ = ["CIRLoRAConfig", "MoELoRALinear", "adapter_parameters", "adapter_state", "inject_cir_lora",
           "load_adapter", "save_adapter", "set_condition"]
