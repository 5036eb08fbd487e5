# Training: the four arms. Pairing lives in the paths: every arm of (dataset, shot, seed) reads the same
# manifest, and the from-base arms read that seed's baseline files through the same wildcards.


rule train_baseline:
    input:
        manifest="results/splits/{dataset}/{shotdir}/seed{seed}.json",
    output:
        text="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/text_adapter.pth",
        image="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/image_adapter.pth",
        record="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/run.json",
        train_log=report(
            "results/runs/{dataset}/{shotdir}/seed{seed}/baseline/train_log.csv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"shot": "{shotdir}", "seed": "{seed}", "arm": "baseline"},
        ),
        train_text_log="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/train.log",
    log:
        "results/logs/train_baseline/{dataset}/{shotdir}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_baseline/{dataset}/{shotdir}/seed{seed}/baseline.tsv"
    params:
        train=get_train_settings(),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/aaclip.yaml"
    script:
        "../scripts/train_baseline.py"


rule train_xattn_from_base:
    input:
        manifest="results/splits/{dataset}/{shotdir}/seed{seed}.json",
        base_text="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/text_adapter.pth",
        base_image="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/image_adapter.pth",
        base_record="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/run.json",
    output:
        text="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_from_base/text_adapter.pth",
        image="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_from_base/image_adapter.pth",
        record="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_from_base/run.json",
        train_log=report(
            "results/runs/{dataset}/{shotdir}/seed{seed}/xattn_from_base/train_log.csv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"shot": "{shotdir}", "seed": "{seed}", "arm": "xattn_from_base"},
        ),
        train_text_log="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_from_base/train.log",
    log:
        "results/logs/train_xattn_from_base/{dataset}/{shotdir}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_xattn_from_base/{dataset}/{shotdir}/seed{seed}/xattn_from_base.tsv"
    params:
        train=get_train_settings(),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/aaclip.yaml"
    script:
        "../scripts/train_xattn_from_base.py"


rule train_baseline_continued:
    input:
        manifest="results/splits/{dataset}/{shotdir}/seed{seed}.json",
        base_text="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/text_adapter.pth",
        base_image="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/image_adapter.pth",
        base_record="results/runs/{dataset}/{shotdir}/seed{seed}/baseline/run.json",
    output:
        text="results/runs/{dataset}/{shotdir}/seed{seed}/baseline_continued/text_adapter.pth",
        image="results/runs/{dataset}/{shotdir}/seed{seed}/baseline_continued/image_adapter.pth",
        record="results/runs/{dataset}/{shotdir}/seed{seed}/baseline_continued/run.json",
        train_log=report(
            "results/runs/{dataset}/{shotdir}/seed{seed}/baseline_continued/train_log.csv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"shot": "{shotdir}", "seed": "{seed}", "arm": "baseline_continued"},
        ),
        train_text_log="results/runs/{dataset}/{shotdir}/seed{seed}/baseline_continued/train.log",
    log:
        "results/logs/train_baseline_continued/{dataset}/{shotdir}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_baseline_continued/{dataset}/{shotdir}/seed{seed}/baseline_continued.tsv"
    params:
        train=get_train_settings(),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/aaclip.yaml"
    script:
        "../scripts/train_baseline_continued.py"


rule train_xattn_scratch:
    input:
        manifest="results/splits/{dataset}/{shotdir}/seed{seed}.json",
    output:
        text="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_scratch/text_adapter.pth",
        image="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_scratch/image_adapter.pth",
        record="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_scratch/run.json",
        train_log=report(
            "results/runs/{dataset}/{shotdir}/seed{seed}/xattn_scratch/train_log.csv",
            caption="../report/train_log.rst",
            category="Training",
            subcategory="{dataset}",
            labels={"shot": "{shotdir}", "seed": "{seed}", "arm": "xattn_scratch"},
        ),
        train_text_log="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_scratch/train.log",
    log:
        "results/logs/train_xattn_scratch/{dataset}/{shotdir}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train_xattn_scratch/{dataset}/{shotdir}/seed{seed}/xattn_scratch.tsv"
    params:
        train=get_train_settings(),
    threads: 1
    resources:
        gpu=GPU_PER_JOB,
    conda:
        "../../envs/aaclip.yaml"
    script:
        "../scripts/train_xattn_scratch.py"
