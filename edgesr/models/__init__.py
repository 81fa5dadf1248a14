"""Models: one architecture per file, each preset registered as a builder function.

``create_model("rdn_small", scale=2)`` builds one; ``list_models("sr")`` lists them. SR models take
``(lr, base)`` and return the HR image; recon models take ``(masked_kspace, mask, sens_maps)`` and
return the complex image as a channel pair (see each module).
"""

from __future__ import annotations

# Importing the model modules registers their builders.
from edgesr.models import deepcomplex, modl, rdn, srgan  # noqa: F401
from edgesr.models._registry import create_model, list_models, model_task, register_model

__all__ = ["create_model", "list_models", "model_task", "register_model"]
