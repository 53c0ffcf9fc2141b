"""depthforge: DepthForge (ICCV 2025) domain-generalised semantic segmentation with frozen VFMs."""

__version__ = "0.1.0"
