# Preprocessing as the paper describes it: canonical orientation, crop around the organ,
# resampling to the model size, intensity windowing, histogram matching; ANTs atlas pre-alignment
# for the brain star variants; ground-truth displacements of embedded test pairs.


rule preprocess:
    input:
        subjects=lambda wc: raw_csv(wc.dataset),
        reference=lambda wc: organ_reference(wc.dataset),
        listed=preprocess_pairs_from,
    output:
        subjects=prep_csv("{dataset}"),
        pairs=pairs_csv("{dataset}"),
    params:
        pairs_from=lambda wc, input: f"--pairs-from {input.listed}" if input.listed else "",
        organ=lambda wc: DATASETS[wc.dataset]["organ"],
        out=lambda wc, output: str(Path(output.subjects).parent),
        max_pairs=lambda wc: S.test_pairs(config, wc.dataset),
        size=config["image_size"],
        label=lambda wc: liver_label_arg(wc.dataset),
    log:
        "logs/preprocess/{dataset}.log",
    benchmark:
        benchmark("preprocess", "{dataset}")
    threads: 1
    resources:
        runtime=lambda wc, attempt: J.runtime_minutes(
            f"preprocess/{DATASETS[wc.dataset]['organ']}", n_subjects(wc.dataset), SIZE, attempt
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn preprocess --subjects {input.subjects} --organ {params.organ} --size {params.size}"
        " --reference-subjects {input.reference} --out {params.out} {params.label}"
        " --pairs-out {output.pairs} --max-pairs {params.max_pairs} {params.pairs_from}"
        " > {log} 2>&1"


rule ground_truth:
    input:
        raw=lambda wc: raw_csv(wc.embedded),
        prep=lambda wc: prep_csv(wc.embedded),
        pairs=lambda wc: pairs_csv(wc.embedded),
    output:
        directory(gt_dir("{embedded}")),
    params:
        raw=lambda wc, input: str(Path(input.raw).parent),
        prep=lambda wc, input: str(Path(input.prep).parent),
        disp=config["disp_dtype"],
    log:
        "logs/ground_truth/{embedded}.log",
    benchmark:
        benchmark("ground_truth", "{embedded}")
    threads: THREADS
    resources:
        runtime=lambda wc, attempt: J.runtime_minutes(
            "ground_truth",
            J.n_pairs(config, wc.embedded, n_subjects(wc.embedded)) / THREADS,
            SIZE,
            attempt,
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn ground-truth --raw {params.raw} --prep {params.prep} --pairs {input.pairs}"
        " --out {output} --jobs {threads} --disp-dtype {params.disp} > {log} 2>&1"


rule prealign:
    # one chunk of `prealign_chunk` subjects (rows START-STOP of the preprocessed table)
    input:
        subjects=lambda wc: prep_csv(wc.dataset),
        atlas=lambda wc: prep_csv(STUDIES[wc.study]["atlas"]["dataset"]),
    output:
        temp(directory(chunk_dir("{study}", "prealign/{dataset}", "{chunk}"))),
    params:
        atlas=lambda wc, input: (
            f"{Path(input.atlas).parent}/{STUDIES[wc.study]['atlas']['subject']}_image.nii.gz"
        ),
        preset=lambda wc: BASELINES[wc.study].get("ants", "fast"),
        rows=lambda wc: rows_arg(wc.chunk),
    log:
        "logs/prealign/{study}/{dataset}/{chunk}.log",
    benchmark:
        benchmark("prealign", "{study}", "{dataset}", "{chunk}")
    threads: THREADS
    resources:
        runtime=lambda wc, attempt: J.runtime_minutes(
            f"prealign/{BASELINES[wc.study].get('ants', 'fast')}",
            chunk_items(wc.chunk),
            SIZE,
            attempt,
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn prealign --subjects {input.subjects} --atlas {params.atlas} --out {output}"
        " --threads {threads} --preset {params.preset} --rows {params.rows} > {log} 2>&1"


rule gather_prealign:
    input:
        subjects=lambda wc: prep_csv(wc.dataset),
        parts=lambda wc: [
            chunk_dir(wc.study, f"prealign/{wc.dataset}", c) for c in subject_chunks(wc.dataset)
        ],
    output:
        prealigned_csv("{study}", "{dataset}"),
    params:
        out=lambda wc, output: str(Path(output[0]).parent),
    log:
        "logs/gather_prealign/{study}/{dataset}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn gather --parts {input.parts} --subjects {input.subjects} --out {params.out}"
        " > {log} 2>&1"
