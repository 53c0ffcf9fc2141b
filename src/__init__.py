"""depthforge: DepthForge (ICCV 2025) domain-generalised semantic segmentation with frozen VFMs."""

from pathlib import Path

from omegaconf import OmegaConf

__version__ = "0.1.0"

# `${project_root:}` in the configs: the checkout's root, so shipped assets resolve from any working directory
OmegaConf.register_new_resolver("project_root", lambda: str(Path(__file__).resolve().parents[1]), replace=True)
