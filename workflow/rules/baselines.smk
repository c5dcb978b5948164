# Baselines: ANTs and Elastix exactly as the paper ran them (or a named faster preset), through
# the same output contract as `vtn register`. VoxelMorph-2 is trained in train.smk.
# One job per chunk of `baseline_chunk` pairs (rows START-STOP of pairs.csv; a failed pair loses
# only its chunk), gathered into the method's folder by hard links.


rule baseline:
    input:
        subjects=lambda wc: prep_csv(test_set(wc.study)),
        pairs=lambda wc: pairs_csv(test_set(wc.study)),
    output:
        temp(directory(chunk_dir("{study}", "{tool}", "{chunk}"))),
    params:
        preset=lambda wc: BASELINES[wc.study][wc.tool],
        rows=lambda wc: rows_arg(wc.chunk),
        disp=config["disp_dtype"],
    log:
        "logs/baseline/{study}/{tool}/{chunk}.log",
    benchmark:
        benchmark("baseline", "{study}", "{tool}", "{chunk}")
    threads: THREADS
    resources:
        runtime=lambda wc, attempt: J.runtime_minutes(
            f"{wc.tool}/{BASELINES[wc.study][wc.tool]}", chunk_items(wc.chunk), SIZE, attempt
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn baseline --method {wildcards.tool} --preset {params.preset}"
        " --subjects {input.subjects} --pairs {input.pairs} --rows {params.rows} --out {output}"
        " --threads {threads} --disp-dtype {params.disp} > {log} 2>&1"


rule gather_baseline:
    input:
        pairs=lambda wc: pairs_csv(test_set(wc.study)),
        parts=lambda wc: [
            chunk_dir(wc.study, wc.tool, c) for c in pair_chunks(test_set(wc.study))
        ],
    output:
        directory(reg_dir("{study}", "{tool}")),
    log:
        "logs/gather_baseline/{study}/{tool}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn gather --parts {input.parts} --pairs {input.pairs} --out {output}"
        " > {log} 2>&1"


rule supervision_targets:
    # ANTs flows of training pairs: the targets of the "supervised" variant (paper Tables II, VI)
    input:
        subjects=lambda wc: prep_csv(S.supervised_dataset(config, wc.study)),
        pairs=lambda wc: pairs_csv(S.supervised_dataset(config, wc.study)),
    output:
        temp(directory(chunk_dir("{study}", "targets", "{chunk}"))),
    params:
        preset=lambda wc: BASELINES[wc.study].get("ants", "fast"),
        rows=lambda wc: rows_arg(wc.chunk),
        disp=config["disp_dtype"],
    log:
        "logs/supervision_targets/{study}/{chunk}.log",
    benchmark:
        benchmark("supervision_targets", "{study}", "{chunk}")
    threads: THREADS
    resources:
        runtime=lambda wc, attempt: J.runtime_minutes(
            f"ants/{BASELINES[wc.study].get('ants', 'fast')}", chunk_items(wc.chunk), SIZE, attempt
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn baseline --method ants --preset {params.preset} --subjects {input.subjects}"
        " --pairs {input.pairs} --rows {params.rows} --out {output} --threads {threads}"
        " --disp-dtype {params.disp} > {log} 2>&1"


rule gather_targets:
    input:
        pairs=lambda wc: pairs_csv(S.supervised_dataset(config, wc.study)),
        parts=lambda wc: [
            chunk_dir(wc.study, "targets", c)
            for c in pair_chunks(S.supervised_dataset(config, wc.study))
        ],
    # a folder: the flows of the pairs listed in pairs.csv (known once preprocessing ran)
    output:
        directory(targets_dir("{study}")),
    log:
        "logs/gather_targets/{study}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn gather --parts {input.parts} --pairs {input.pairs} --out {output}"
        " > {log} 2>&1"
