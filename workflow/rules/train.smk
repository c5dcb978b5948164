# Training of every cascade variant (and VoxelMorph-2) on the GPU when there is one.


rule model_config:
    # the training config decided by vtn.study.model_config, written as it is
    output:
        model_file("{study}", "{model}", "model.yaml"),
    params:
        cfg=lambda wc: json.dumps(S.model_config(config, wc.study, wc.model), sort_keys=True),
    log:
        "logs/model_config/{study}/{model}.log",
    conda:
        "../envs/vtn.yaml"
    shell:
        "printf '%s\\n' {params.cfg:q} > {output} 2> {log}"


rule train:
    input:
        unpack(train_inputs),
    output:
        ckpt=model_file("{study}", "{model}", "checkpoint.pt"),
        log=report(
            model_file("{study}", "{model}", "train_log.csv"),
            caption="../report/train_log.rst",
            category="Training logs",
            labels={"study": "{study}", "model": "{model}"},
        ),
    params:
        targets=lambda wc, input: (
            f"--targets {input.targets} --target-pairs {input.pairs}"
            if "targets" in input.keys()
            else ""
        ),
        device=DEVICE,
        ckpt_dir=lambda wc: model_file(wc.study, wc.model, "ckpt"),
    log:
        "logs/train/{study}/{model}.log",
    benchmark:
        benchmark("train", "{study}", "{model}")
    threads: GPU_THREADS
    resources:
        gpu=USE_GPU,
    conda:
        "../envs/vtn.yaml"
    # exec: SIGTERM (SLURM's time limit, pre-emption) reaches the training itself, which
    # checkpoints its current step and exits 75; the retry resumes from there
    shell:
        "exec python -m vtn train --subjects {input.subjects} --config {input.config} --out {output.ckpt}"
        " --log {output.log} --device {params.device} --ckpt-dir {params.ckpt_dir}"
        " {params.targets} > {log} 2>&1"
