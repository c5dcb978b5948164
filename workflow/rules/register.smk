# Inference: every trained model registers the study's test pairs.


rule register_model:
    input:
        unpack(register_inputs),
    output:
        directory(reg_dir("{study}", "{model}")),
    params:
        device=config["device"],
        fast="--fast" if config["fast_inference"] else "",
    log:
        "logs/register/{study}/{model}.log",
    benchmark:
        benchmark("register", "{study}", "{model}")
    threads: THREADS
    resources:
        gpu=USE_GPU,
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn register --checkpoint {input.ckpt} --subjects {input.subjects}"
        " --pairs {input.pairs} --out {output} --device {params.device} {params.fast}"
        " > {log} 2>&1"
