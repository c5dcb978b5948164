"""Print the GPU half's targets of the mini study (scripts/gpu/mini_study.sh run): the metrics
file of every trained model (its training, inference and evaluation), for the merged config
files given as arguments. Model packages are left out: `vtn package` embeds the histogram-matching
reference through SimpleITK, which the GPU machine lacks."""

import sys

import yaml
from snakemake.utils import update_config

from vtn import study

config: dict = {}
for path in sys.argv[1:]:
    with open(path) as fh:
        update_config(config, yaml.safe_load(fh))
for s in config["studies"]:
    for m in study.models(config, s):
        print(f"results/metrics/{s}/{m}.csv")
