# Data: generate the synthetic datasets, check the real ones in place, draw the seeded few-shot lists.


rule make_synthetic_dataset:
    output:
        root=directory("results/data/{dataset}"),
        summary="results/data/{dataset}.summary.csv",
    log:
        "results/logs/make_synthetic_dataset/{dataset}.log",
    params:
        synthetic=get_synthetic_spec,
        dataset=get_dataset_params,
    threads: 1
    conda:
        "../../envs/aaclip.yaml"
    wildcard_constraints:
        dataset=_alternation(SYNTHETIC),
    script:
        "../scripts/make_synthetic_dataset.py"


rule check_dataset:
    output:
        summary="results/data/{dataset}.summary.csv",
    log:
        "results/logs/check_dataset/{dataset}.log",
    params:
        dataset=get_dataset_params,
    threads: 1
    conda:
        "../../envs/aaclip.yaml"
    wildcard_constraints:
        dataset=_alternation(REAL),
    script:
        "../scripts/check_dataset.py"


rule fewshot_split:
    input:
        summary="results/data/{dataset}.summary.csv",
    output:
        manifest="results/splits/{dataset}/{shotdir}/seed{seed}.json",
    log:
        "results/logs/fewshot_split/{dataset}/{shotdir}/seed{seed}.log",
    params:
        dataset=get_dataset_params,
        split=get_split_params,
    threads: 1
    conda:
        "../../envs/aaclip.yaml"
    script:
        "../scripts/fewshot_split.py"
