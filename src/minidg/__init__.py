"""MiniDG: a procedural street-scene benchmark that runs the DG protocol end to end on CPU in minutes.

`render` draws scenes with exact labels and depth, `styles` turns one scene into the day/night/fog/snow domains,
`dataset` writes them in the Cityscapes/ACDC layouts, `vfms` builds the two small frozen VFMs through the project's
backbones and configs, `pretrain` trains them and `analysis` measures how stable their features are across domains.
"""
