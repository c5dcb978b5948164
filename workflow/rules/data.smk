# Data: pinned registry packages -> embedded datasets (or user datasets listed in place).


rule fetch_resources:
    output:
        touch(f"{RES}/{{organ}}.done"),
    log:
        "logs/fetch_resources/{organ}.log",
    wildcard_constraints:
        organ="liver|brain",
    params:
        out=lambda wc, output: str(Path(output[0]).parent),
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn fetch --out {params.out} --only {wildcards.organ} > {log} 2>&1"


rule make_embedded:
    input:
        lambda wc: resource_manifest(DATASETS[wc.embedded]["organ"]),
    output:
        csv=raw_csv("{embedded}"),
        figure=report(
            data_figure("{embedded}"),
            caption="../report/embedded.rst",
            category="Data",
        ),
    params:
        organ=lambda wc: DATASETS[wc.embedded]["organ"],
        n=lambda wc: DATASETS[wc.embedded]["n"],
        seed=lambda wc: DATASETS[wc.embedded]["seed"],
        out=lambda wc, output: str(Path(output.csv).parent),
        resources=RES,
    log:
        "logs/make_embedded/{embedded}.log",
    benchmark:
        benchmark("make_embedded", "{embedded}")
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn make-embedded --organ {params.organ} --resources {params.resources} --n {params.n}"
        " --seed {params.seed} --prefix {wildcards.embedded} --out {params.out}"
        " --figure {output.figure} > {log} 2>&1"


rule import_dataset:
    output:
        raw_csv("{user}"),
    params:
        layout=lambda wc: DATASETS[wc.user]["source"],
        path=lambda wc: DATASETS[wc.user]["path"],
        landmarks=lambda wc: (
            f"--landmarks-dir {DATASETS[wc.user]['landmarks']}"
            if "landmarks" in DATASETS[wc.user]
            else ""
        ),
    log:
        "logs/import_dataset/{user}.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn import --layout {params.layout} --path {params.path} {params.landmarks}"
        " --out {output} > {log} 2>&1"


rule import_learn2reg:
    # a Learn2Reg task folder: the subset's images and the pairs the task lists among them
    output:
        subjects=raw_csv("{l2r}"),
        pairs=task_pairs_csv("{l2r}"),
    params:
        path=lambda wc: DATASETS[wc.l2r]["path"],
        subset=lambda wc: S.learn2reg_subset(config, wc.l2r),
    log:
        "logs/import_dataset/{l2r}.log",
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn import --layout learn2reg --path {params.path:q} --subset {params.subset}"
        " --out {output.subjects} --pairs-out {output.pairs} > {log} 2>&1"
