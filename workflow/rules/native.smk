# Native space (config `outputs: native_space: true`): every method's test registrations
# written in the original image space of the scans (vtn native-space).


rule native_space:
    input:
        unpack(native_inputs),
    output:
        directory(native_dir("{study}", "{method}")),
    log:
        "logs/native_space/{study}/{method}.log",
    benchmark:
        benchmark("native_space", "{study}", "{method}")
    threads: 1
    resources:
        runtime=lambda wc, attempt: J.runtime_minutes(
            "native_space", test_pair_count(wc.study), SIZE, attempt
        ),
    conda:
        "../envs/vtn.yaml"
    shell:
        "python -m vtn native-space --reg {input.reg} --subjects {input.subjects}"
        " --pairs {input.pairs} --out {output} > {log} 2>&1"
