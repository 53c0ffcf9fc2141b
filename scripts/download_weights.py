"""Pre-download the frozen VFMs' weights into a Hugging Face hub cache, for compute nodes without internet.

Run it on a login node, then on the compute node export the printed variables (``HF_HUB_CACHE``,
``HF_HUB_OFFLINE=1``). timm and transformers both read that cache, so the backbones then load offline.

    python scripts/download_weights.py --preset depthforge --cache-dir /cluster/hf-cache
    python scripts/download_weights.py --timm samvit_huge_patch16.sa1b --hf depth-anything/Depth-Anything-V2-Large-hf
    python scripts/download_weights.py --preset depthforge --dry-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src.models.weights import offline_env_lines, timm_weight_source  # noqa: E402

#: The weights of the default DepthForge setting (docs/method.md D1/D2).
PRESETS: dict[str, dict[str, list[str]]] = {
    "depthforge": {
        "timm": ["vit_large_patch14_dinov2.lvd142m"],
        "hf": ["depth-anything/Depth-Anything-V2-Large-hf"],
    },
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timm", nargs="+", default=[], metavar="NAME", help="timm model names (with tag)")
    parser.add_argument("--hf", nargs="+", default=[], metavar="ID", help="HF depth model ids")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="add a named set of models")
    parser.add_argument("--cache-dir", help="hub cache to fill (default: HF_HUB_CACHE, else ~/.cache/huggingface/hub)")
    parser.add_argument("--dry-run", action="store_true", help="resolve the names and print the plan only")
    return parser


def _plan(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    timm_names, hf_ids = list(args.timm), list(args.hf)
    if args.preset:
        timm_names += PRESETS[args.preset]["timm"]
        hf_ids += PRESETS[args.preset]["hf"]
    return list(dict.fromkeys(timm_names)), list(dict.fromkeys(hf_ids))


def _download(timm_names: list[str], hf_ids: list[str], cache_dir: str | None) -> None:
    """Download by loading, so exactly the files the backbones will later ask for land in the cache."""
    import timm
    from transformers import AutoModelForDepthEstimation

    for name in timm_names:
        print(f"timm  {name}: downloading ...", flush=True)
        timm.create_model(name, pretrained=True, num_classes=0, cache_dir=cache_dir)
    for hub_id in hf_ids:
        print(f"hf    {hub_id}: downloading ...", flush=True)
        AutoModelForDepthEstimation.from_pretrained(hub_id, cache_dir=cache_dir)


def _report(cache_dir: str | None) -> None:
    from huggingface_hub import constants, scan_cache_dir

    cache = cache_dir or constants.HF_HUB_CACHE
    print(f"\nstored in {cache}:")
    for repo in sorted(scan_cache_dir(cache).repos, key=lambda r: r.repo_id):
        print(f"  {repo.repo_id:60s} {repo.size_on_disk_str:>10s}  {repo.repo_path}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    timm_names, hf_ids = _plan(args)
    if not timm_names and not hf_ids:
        parser.error("nothing to download: give --timm, --hf or --preset")
    try:
        sources = {name: timm_weight_source(name) for name in timm_names}
    except ValueError as err:
        parser.error(str(err))
    cache_dir = str(Path(args.cache_dir).expanduser().resolve()) if args.cache_dir else None

    print(f"cache: {cache_dir or 'default Hugging Face hub cache'}")
    for name, source in sources.items():
        print(f"timm  {name}  <- {source}")
    for hub_id in hf_ids:
        print(f"hf    {hub_id}  <- https://huggingface.co/{hub_id}")
    if not args.dry_run:
        _download(timm_names, hf_ids, cache_dir)
        _report(cache_dir)
    print("\non the compute node:")
    for line in offline_env_lines(cache_dir):
        print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
