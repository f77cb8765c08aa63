"""Backbone-level ensembles: K members inside the backbone, features of shape (K, B, d).

========================  ===============================================================
``uq=``                   class
========================  ===============================================================
``"lora"``                :class:`LoraMembers`: K LoRA adapters, one forward over K·B rows
``"partial"``             :class:`PartialMembers`: shared lower layers, K top-layer copies
``"deep"``                :class:`DeepMembers`: K full models (the reference)
``"mc_dropout"``          :class:`MCDropoutMembers`: T dropout passes in one forward
========================  ===============================================================

Every class is built from a loaded plain backbone with
``MEMBER_REGISTRY[uq].build(backbone, n_members=K, **options)``.
"""

from auq.members.base import MEMBER_REGISTRY, MemberBackbone, register_members
from auq.members.deep import DeepMembers
from auq.members.lora import LoraMembers
from auq.members.mc_dropout import MCDropoutMembers
from auq.members.partial import PartialMembers

__all__ = [
    "MEMBER_REGISTRY",
    "DeepMembers",
    "LoraMembers",
    "MCDropoutMembers",
    "MemberBackbone",
    "PartialMembers",
    "register_members",
]
