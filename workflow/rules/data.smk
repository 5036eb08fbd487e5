# Data: generate the synthetic datasets, check the real ones in place, draw the seeded few-shot lists.


rule make_synthetic_dataset:
    output:
        root=directory("results/data/{dataset}"),
        summary="results/data/{dataset}.summary.csv",
    log:
        "results/logs/make_synthetic_dataset/{dataset}.log",
    wildcard_constraints:
        dataset=_alternation(SYNTHETIC),
    conda:
        "../../envs/aaclip.yaml"
    threads: 1
    params:
        synthetic=get_synthetic_spec,
        dataset=get_dataset_params,
    script:
        "../scripts/make_synthetic_dataset.py"


rule check_dataset:
    output:
        summary="results/data/{dataset}.summary.csv",
    log:
        "results/logs/check_dataset/{dataset}.log",
    wildcard_constraints:
        dataset=_alternation(REAL),
    conda:
        "../../envs/aaclip.yaml"
    threads: 1
    params:
        dataset=get_dataset_params,
    script:
        "../scripts/check_dataset.py"


rule fewshot_split:
    input:
        summary="results/data/{dataset}.summary.csv",
    output:
        manifest="results/splits/{dataset}/{shotdir}/seed{seed}.json",
    log:
        "results/logs/fewshot_split/{dataset}/{shotdir}/seed{seed}.log",
    conda:
        "../../envs/aaclip.yaml"
    threads: 1
    params:
        dataset=get_dataset_params,
        split=get_split_params,
    script:
        "../scripts/fewshot_split.py"
