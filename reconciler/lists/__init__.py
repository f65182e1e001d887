"""The image lists sites already have, read as they are.

`osg` reads cvmfs-singularity-sync's `docker_images.txt`, `ducc` reads a DUCC
wishlist (recipe v1); both give `ListRead`s (record.py) whose lines `entries`
maps to watchlist entries. `refresh` re-reads the `[[list]]` files of a
watchlist each cycle; `toml_out` prints entries for `reconcile import`.
"""
