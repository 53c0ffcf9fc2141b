from src.models.adapters.base import Adapter, IdentityAdapter

__all__ = ["Adapter", "IdentityAdapter"]
