from src.models.adapters.adaptformer import AdaptFormerAdapter
from src.models.adapters.base import Adapter, IdentityAdapter
from src.models.adapters.depthforge import DepthForgeAdapter
from src.models.adapters.fada import FADAAdapter
from src.models.adapters.lora import LoRAAdapter
from src.models.adapters.rein import ReinAdapter
from src.models.adapters.vpt import VPTAdapter

__all__ = [
    "AdaptFormerAdapter",
    "Adapter",
    "DepthForgeAdapter",
    "FADAAdapter",
    "IdentityAdapter",
    "LoRAAdapter",
    "ReinAdapter",
    "VPTAdapter",
]
