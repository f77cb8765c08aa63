"""Shared lower layers, K copies of the top m layers run as the model's own layer modules.

::

    embeddings → layers 0 … L−m−1          shared, frozen, run once on B rows
        │  (a pre-hook on layer L−m captures its inputs and stops the base forward)
        ▼
    for k in 0 … K−1:   layers L−m … L−1 with member k's weights   (B, L, d)
        ▼               (``functional_call`` on the real layer modules)
    the architecture's final norm (GPT-2 ``ln_f``, Llama ``norm``; none for BERT),
    then pooling, member by member → features (K, B, d)

Cost: exactly (L − m) + K·m layer passes over the B rows, i.e. (L − m + K·m)/L
of one model on the same micro-batches. The copies start from the pretrained
top layers (plus seeded noise ``init_noise`` for diversity) and are the only
weights that train. The captured call (attention mask, position embeddings, …)
is replayed unchanged for every member, so the copies see exactly what the
original layers would have seen.

Why a loop over the members, not ``vmap``
-----------------------------------------
An earlier version ran the K copies in one ``torch.func.vmap`` over stacked
parameters (K·B rows at once). Under vmap every ``nn.Linear`` becomes a ``bmm``
plus a separate bias ``add`` instead of one fused ``addmm``, a batched
LayerNorm weight is decomposed, and on CPU the fused SDPA kernel has no vmap
rule, so attention had to fall back to the math kernel (masked softmax,
``where``, ``isneginf``, ``all``). Profiled on MiniLM (L = 6, 128 built-in
texts, max_length 128, one thread), K = 4, m = 2: the vmapped linears took
~65 µs per layer-token against ~55 µs for ``addmm``, the bias adds 7 % of the
forward, and math attention ~2.8× the fused kernel per layer pass. Running each
member's top layers as the real modules (``functional_call`` with member k's
slices of the stacked parameters — views, no copies) uses the model's own
kernels: fused ``addmm``, fused SDPA, or whatever ``attn_implementation`` the
model was loaded with (flash-attention included, which vmap cannot batch), and
costs exactly the K·m layer passes. Measured against one model on the same
micro-batches (16 items each; CPU time, one thread, interleaved, minimum of 5;
bound in brackets): K = 5, m = 1: vmap 1.89×, loop 1.70× [1.67]; K = 4, m = 2:
vmap 2.26×, loop 1.98× [2.00].

Each member's states are pooled as soon as they are computed, so a forward
holds the activations of one layer pass over B rows at a time, as one model
does, plus the K pooled feature sets: :attr:`PartialMembers.rows_per_item` is
1 and the scoring engine plans the same micro-batches as for one model. (With
the vmap, K·B rows ran at once and the token budget counted K rows per item.
Its K× smaller micro-batches padded less under the default budget — 7,598 or
8,168 padded tokens against 9,984 for the 128 texts above — which is a
property of the planner that would help one model just as much, not of the
members.)
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

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

    @property
    def rows_per_item(self) -> int:
        """1: the shared layers and each member's copies run on the same B rows, one at a time.

        No forward holds more than the activations of one layer pass over B rows
        (plus the captured inputs of layer L−m and the K pooled feature sets), as
        for one model, so the token budget counts each item once.
        """
        return 1

    def _member_states(self, kwargs: dict[str, Tensor]) -> Iterator[Tensor]:
        """Member k's last hidden states, (B, L, d), for k = 0 … K−1 in turn.

        The lower part runs once; then, per member, the real top layer modules run
        with member k's slices of the stacked parameters (views) through
        ``functional_call``, and the final norm after them.
        """
        hidden, rest, kw = self._capture(kwargs)  # (B, L, d)
        per_layer: list[dict[str, Tensor]] = [{} for _ in self._top]
        for key, p in zip(self.param_names, self.member_params, strict=True):
            j, name = key.split(".", 1)
            per_layer[int(j)][name] = p  # (K, …)
        for k in range(self.n_members):
            x = hidden
            for layer, params in zip(self._top, per_layer, strict=True):
                own = {name: p[k] for name, p in params.items()}  # views of member k
                out = functional_call(layer, own, (x, *rest), kw)
                x = out[0] if isinstance(out, tuple) else out
            for norm in self._final_norm:
                x = norm(x)
            yield x  # (B, L, d)

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
