"""Small PyAV helpers to write and read a whole (short) clip: test clips, figures and demos.

``src.predict`` streams real videos frame by frame itself; these hold every frame in memory.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def write_clip(path: str | Path, frames: list[np.ndarray], rate: int = 12, codec: str = "libx264rgb") -> None:
    """RGB uint8 frames (H, W, 3) -> a video; ``libx264rgb`` at crf 0 is lossless, so the frames decode exactly."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, options={"crf": "0"})
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "rgb24" if codec == "libx264rgb" else "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_clip(path: str | Path) -> list[np.ndarray]:
    """Every frame of a video as RGB uint8 (H, W, 3)."""
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
