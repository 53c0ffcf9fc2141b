from src.models.adapters.adaptformer import AdaptFormerAdapter
from src.models.adapters.base import Adapter, IdentityAdapter
from src.models.adapters.depthforge import DepthForgeAdapter
from src.models.adapters.depthforge_ablations import (
    ConcatFusionAdapter,
    DepthAwarenessOnlyAdapter,
    DepthBiasAdapter,
    DepthTokenAdapter,
    SoftmaxAverageAdapter,
)
from src.models.adapters.fada import FADAAdapter
from src.models.adapters.lora import LoRAAdapter
from src.models.adapters.rein import ReinAdapter
from src.models.adapters.vpt import VPTAdapter

__all__ = [
    "AdaptFormerAdapter",
    "Adapter",
    "ConcatFusionAdapter",
    "DepthAwarenessOnlyAdapter",
    "DepthBiasAdapter",
    "DepthForgeAdapter",
    "DepthTokenAdapter",
    "FADAAdapter",
    "IdentityAdapter",
    "LoRAAdapter",
    "ReinAdapter",
    "SoftmaxAverageAdapter",
    "VPTAdapter",
]
