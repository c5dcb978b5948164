# Inference: every trained model registers the study's test pairs.


rule register_model:
    input:
        unpack(register_inputs),
    output:
        directory(reg_dir("{study}", "{model}")),
    params:
        device=DEVICE,
        fast="--fast" if config["fast_inference"] else "",
        disp=config["disp_dtype"],
    log:
        "logs/register/{study}/{model}.log",
    benchmark:
        benchmark("register", "{study}", "{model}")
    threads: GPU_THREADS
    resources:
        gpu=USE_GPU,
        runtime=lambda wc, attempt: J.runtime_minutes(
            "register", test_pair_count(wc.study), SIZE, attempt
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn register --checkpoint {input.ckpt} --subjects {input.subjects}"
        " --pairs {input.pairs} --out {output} --device {params.device} {params.fast}"
        " --disp-dtype {params.disp} > {log} 2>&1"
