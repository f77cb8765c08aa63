"""Shared lower layers, K copies of the top m layers run as one batched computation.

::

    embeddings → layers 0 … L−m−1          shared, frozen, run once on B rows
        │  (a pre-hook on layer L−m captures its inputs and stops the base forward)
        ▼
    vmap over K stacked parameter sets:   layers L−m … L−1   (K, B, L, d)
        ▼
    the architecture's final norm (GPT-2 ``ln_f``, Llama ``norm``; none for BERT)

Cost ≈ (L − m + K·m) / L of one model. The copies start from the pretrained top
layers (plus seeded noise ``init_noise`` for diversity) and are the only weights
that train. The captured call (attention mask, position embeddings, …) is
replayed unchanged for every member, so the copies see exactly what the
original layers would have seen.
"""

from __future__ import annotations

import inspect
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from auq.backbone import Backbone
from auq.members.base import MemberBackbone, check_n_members, register_members, relative_noise
from auq.utils.io import CheckpointError, load_safetensors

__all__ = ["ARCHITECTURES", "PartialMembers"]

#: model_type → (path of the layer list, path of the final norm after it, or None)
ARCHITECTURES: dict[str, tuple[str, str | None]] = {
    "bert": ("encoder.layer", None),
    "roberta": ("encoder.layer", None),
    "xlm-roberta": ("encoder.layer", None),
    "electra": ("encoder.layer", None),
    "distilbert": ("transformer.layer", None),
    "gpt2": ("h", "ln_f"),
    "llama": ("layers", "norm"),
    "mistral": ("layers", "norm"),
    "qwen2": ("layers", "norm"),
    "qwen3": ("layers", "norm"),
}
_WEIGHTS_NAME = "partial_members.safetensors"
_CONFIG_NAME = "partial_members.json"


class _StopForward(Exception):
    """Raised by the capture hook to end the base model's forward at layer L−m."""


def _architecture(model: nn.Module) -> tuple[nn.ModuleList, nn.Module | None]:
    model_type = getattr(model.config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ValueError(
            f"uq='partial' does not support model_type={model_type!r} "
            f"({type(model).__name__}); supported: {', '.join(sorted(ARCHITECTURES))}. "
            "uq='lora', 'deep' or 'mc_dropout' work with any model"
        )
    layers_path, norm_path = ARCHITECTURES[model_type]
    norm = model.get_submodule(norm_path) if norm_path else None
    return model.get_submodule(layers_path), norm


def _sdpa_context(device: torch.device):
    """On CPU, the fused SDPA kernel has no vmap rule (it would loop); use the math one."""
    if device.type != "cpu":
        return nullcontext()
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3: the fallback loop is still correct
        return nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


@register_members
class PartialMembers(MemberBackbone):
    """K copies of the top ``n_top_layers`` layers on one shared lower stack.

    Build with :meth:`build`. Trains only ``member_params`` (the K stacked
    copies); the base model, including its own top layers and final norm, stays
    frozen. Supported architectures: :data:`ARCHITECTURES`.

    Attributes
    ----------
    n_top_layers : int
        m, the number of copied layers.
    member_params : nn.ParameterList
        Stacked copies, entry i of shape (K, *shape of ``param_names[i]``).
    param_names : list of str
        ``"{j}.{name}"`` for parameter ``name`` of copied layer j (0 = layer L−m).
    """

    method = "partial"

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        *,
        n_members: int,
        n_top_layers: int = 2,
        init_noise: float = 0.01,
        seed: int = 0,
    ) -> PartialMembers:
        """Copy the top ``n_top_layers`` layers K times.

        Parameters
        ----------
        backbone : Backbone
            A plain ``AutoModel`` backbone of a supported architecture.
        n_members : int
            K ≥ 2.
        n_top_layers : int
            m, between 1 and the model's depth L (m = L: only the embeddings are shared).
        init_noise : float
            Each copied tensor gets ``init_noise · rms(tensor) · N(0, 1)`` noise
            (seeded, different per member); 0 makes the copies identical.
        seed : int
        """
        check_n_members(n_members)
        if not init_noise >= 0:
            raise ValueError(f"init_noise must be >= 0, got {init_noise!r}")
        member = cls._adopt(backbone)
        layers, norm = _architecture(member.model)
        depth = len(layers)
        if isinstance(n_top_layers, bool) or not isinstance(n_top_layers, int):
            raise ValueError(
                f"n_top_layers must be an integer in [1, {depth}], got {n_top_layers!r}"
            )
        if not 1 <= n_top_layers <= depth:
            raise ValueError(
                f"n_top_layers must be in [1, {depth}] (the model has {depth} layers), "
                f"got {n_top_layers}"
            )
        member.n_members, member.n_top_layers = n_members, n_top_layers
        member.init_noise, member.seed = float(init_noise), seed
        # plain lists: the base model owns (and registers) these modules
        member._top = list(layers[depth - n_top_layers :])  # templates for functional_call
        member._final_norm = [] if norm is None else [norm]
        gen = torch.Generator().manual_seed(seed)
        names, stacked = [], []
        with torch.no_grad():
            for j, layer in enumerate(member._top):
                for name, p in layer.named_parameters():
                    copies = p.detach().float().cpu().expand(n_members, *p.shape).clone()
                    if init_noise > 0:  # each copy's noise is scaled by the layer's rms
                        copies += relative_noise(copies, init_noise, gen)
                    names.append(f"{j}.{name}")
                    stacked.append(nn.Parameter(copies.to(device=p.device, dtype=p.dtype)))
        member.param_names = names
        member.member_params = nn.ParameterList(stacked)
        member.set_trainable()
        return member.eval()

    def set_trainable(self) -> None:
        """Freeze the base model; train the K stacked copies."""
        self.model.requires_grad_(False)
        self.member_params.requires_grad_(True)

    def get_config(self) -> dict[str, Any]:
        return {"n_top_layers": self.n_top_layers, "init_noise": self.init_noise, "seed": self.seed}

    # -- forward ------------------------------------------------------------------
    def _capture(self, kwargs: dict[str, Tensor]) -> tuple[Tensor, tuple, dict]:
        """Run the shared lower part once; return layer L−m's (hidden, other args, kwargs)."""
        captured: dict[str, Any] = {}

        def stop(module: nn.Module, args: tuple, kw: dict) -> None:
            captured["args"], captured["kwargs"] = args, dict(kw)
            raise _StopForward

        handle = self._top[0].register_forward_pre_hook(stop, with_kwargs=True)
        accepts = inspect.signature(self.model.forward).parameters
        extra = {"use_cache": False} if "use_cache" in accepts else {}  # no KV cache to fill
        try:
            self.model(**kwargs, **extra)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(
                f"{type(self.model).__name__} never called layer "
                f"{len(self._top)} from the top; cannot split it for uq='partial'"
            )
        args, kw = captured["args"], captured["kwargs"]
        if args:
            hidden, rest = args[0], args[1:]
        else:
            hidden, rest = kw.pop("hidden_states"), ()
        if kw.get("past_key_values") is not None:
            kw["past_key_values"] = None  # no cache: the copies must not write into one
        return hidden, rest, kw

    def _member_hidden(self, kwargs: dict[str, Tensor]) -> Tensor:
        """Last hidden states of every member, (K, B, L, d): lower part once, copies batched."""
        hidden, rest, kw = self._capture(kwargs)  # (B, L, d)
        per_layer: list[dict[str, Tensor]] = [{} for _ in self._top]
        for key, p in zip(self.param_names, self.member_params, strict=True):
            j, name = key.split(".", 1)
            per_layer[int(j)][name] = p  # (K, …)

        def run_top(params: list[dict[str, Tensor]], x: Tensor) -> Tensor:
            for layer, p in zip(self._top, params, strict=True):
                out = functional_call(layer, p, (x, *rest), kw)
                x = out[0] if isinstance(out, tuple) else out
            return x

        x = hidden.expand(self.n_members, *hidden.shape)  # (K, B, L, d), no copy
        with _sdpa_context(hidden.device):
            out = vmap(run_top, randomness="different")(per_layer, x)  # (K, B, L, d)
        for norm in self._final_norm:
            out = norm(out)
        return out

    # -- checkpoints --------------------------------------------------------------
    def save_members(self, directory: str | Path) -> None:
        """Write the stacked copies (safetensors, keys ``"{j}.{name}"``) and their config."""
        from safetensors.torch import save_file

        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {
            key: p.detach().cpu().contiguous()
            for key, p in zip(self.param_names, self.member_params, strict=True)
        }
        save_file(tensors, str(out / _WEIGHTS_NAME), metadata={"format": "pt"})
        meta = {"method": self.method, "n_members": self.n_members, **self.get_config()}
        (out / _CONFIG_NAME).write_text(json.dumps(meta, indent=2))

    def load_members(self, directory: str | Path) -> None:
        """Read what :meth:`save_members` wrote (same architecture, K and m).

        Raises
        ------
        CheckpointError
            Naming the file, when it is missing, damaged or does not match the config.
        """
        path = Path(directory) / _WEIGHTS_NAME
        tensors = load_safetensors(path)
        missing = sorted(set(self.param_names) - set(tensors))
        if missing:
            raise CheckpointError(
                f"{path} lacks {len(missing)} copied weights, e.g. {missing[0]!r} "
                f"(n_top_layers={self.n_top_layers})"
            )
        with torch.no_grad():
            for key, p in zip(self.param_names, self.member_params, strict=True):
                if tensors[key].shape != p.shape:
                    raise CheckpointError(
                        f"{path}: {key!r} has shape {tuple(tensors[key].shape)}, expected "
                        f"{tuple(p.shape)} (n_members={self.n_members})"
                    )
                p.copy_(tensors[key])
