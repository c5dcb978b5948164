# Entry point: the workflow lives in workflow/Snakefile (snakemake-workflows layout).
include: "workflow/Snakefile"


# `include:` discards default_target of included files (snakemake/snakemake#2056): restore it.
workflow.default_target = "all"
