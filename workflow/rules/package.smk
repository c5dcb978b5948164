# Model packages: every trained model with its preprocessing recipe and model card
# (vtn package-model), for `vtn register-images` on scans of one's own.


rule package_model:
    input:
        unpack(package_inputs),
    output:
        package=package_file("{study}", "{model}"),
        card=model_file("{study}", "{model}", "model.md"),
    params:
        name=lambda wc: S.package_card(config, wc.study, wc.model)["name"],
        source=lambda wc: S.package_card(config, wc.study, wc.model)["source"],
    log:
        "logs/package_model/{study}/{model}.log",
    benchmark:
        benchmark("package_model", "{study}", "{model}")
    threads: 1
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn package-model --checkpoint {input.ckpt} --train-subjects {input.subjects}"
        " --metrics {input.metrics} --name {params.name:q} --source {params.source:q}"
        " --out {output.package} > {log} 2>&1"
