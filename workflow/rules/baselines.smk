# Baselines: ANTs and Elastix exactly as the paper ran them (or a named faster preset), through
# the same output contract as `vtn register`. VoxelMorph-2 is trained in train.smk.


rule baseline:
    input:
        subjects=lambda wc: prep_csv(test_set(wc.study)),
        pairs=lambda wc: pairs_csv(test_set(wc.study)),
    output:
        directory(reg_dir("{study}", "{tool}")),
    params:
        preset=lambda wc: BASELINES[wc.study][wc.tool],
    log:
        "logs/baseline/{study}/{tool}.log",
    benchmark:
        benchmark("baseline", "{study}", "{tool}")
    threads: THREADS
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn baseline --method {wildcards.tool} --preset {params.preset}"
        " --subjects {input.subjects} --pairs {input.pairs} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule supervision_targets:
    # ANTs flows of training pairs: the targets of the "supervised" variant (paper Tables II, VI).
    input:
        subjects=lambda wc: prep_csv(S.supervised_dataset(config, wc.study)),
        pairs=lambda wc: pairs_csv(S.supervised_dataset(config, wc.study)),
    # a folder: the flows of the pairs listed in pairs.csv (known once preprocessing ran)
    output:
        directory(targets_dir("{study}")),
    params:
        preset=lambda wc: BASELINES[wc.study].get("ants", "fast"),
    log:
        "logs/supervision_targets/{study}.log",
    benchmark:
        benchmark("supervision_targets", "{study}")
    threads: THREADS
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn baseline --method ants --preset {params.preset} --subjects {input.subjects}"
        " --pairs {input.pairs} --out {output} --threads {threads} > {log} 2>&1"
