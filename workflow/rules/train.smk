# Training of every cascade variant (and VoxelMorph-2) on the GPU when there is one.


rule model_config:
    output:
        "results/models/{study}/{model}/model.yaml",
    params:
        cfg=lambda wc: json.dumps(model_config(wc), sort_keys=True),
    log:
        "logs/model_config/{study}/{model}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "printf '%s\\n' {params.cfg:q} > {output} 2> {log}"


rule train:
    input:
        unpack(lambda wc: {"config": f"results/models/{wc.study}/{wc.model}/model.yaml",
                           "subjects": train_inputs(wc), **supervised_inputs(wc)}),
    output:
        ckpt="results/models/{study}/{model}/checkpoint.pt",
        log=report(
            "results/models/{study}/{model}/train_log.csv",
            caption="../report/train_log.rst",
            category="Training logs",
            labels={"study": "{study}", "model": "{model}"},
        ),
    params:
        targets=lambda wc, input: (
            f"--targets {Path(input.targets).parent} --target-pairs {input.pairs}"
            if "targets" in input.keys()
            else ""
        ),
        device=config["device"],
        ckpt_dir=lambda wc: f"results/models/{wc.study}/{wc.model}/ckpt",
    log:
        "logs/train/{study}/{model}.log",
    benchmark:
        "benchmarks/train/{study}/{model}.tsv"
    threads: THREADS
    resources:
        gpu=USE_GPU,
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn train --subjects {input.subjects} --config {input.config} --out {output.ckpt}"
        " --log {output.log} --device {params.device} --ckpt-dir {params.ckpt_dir}"
        " {params.targets} > {log} 2>&1"
