# Training: the four arms. Pairing lives in the paths: every arm of (dataset, shot, seed) reads the same
# manifest, and the from-base arms read that seed's baseline files through the same wildcards.
#
# compute.seed_batch == 1 (default): one job per (dataset, shot, seed, arm), rules train_<arm>.
# compute.seed_batch > 1: one job per (dataset, shot, seed group, arm), rules train_group_<arm>_<k>
# (k = 1, 2, ...: the configured seeds chunked into groups of seed_batch, in config order). A group job
# trains its seeds together (aaclip_xattn.train.seed_batched) and writes exactly the per-seed files of
# the per-seed rules, so evaluation and the statistics read the same paths either way. Only one of the
# two rule sets is defined: Snakemake forbids two rules producing the same file.

if SEED_BATCH == 1:

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
        conda:
            "../../envs/aaclip.yaml"
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        params:
            train=get_train_settings(),
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
                labels={
                    "shot": "{shotdir}",
                    "seed": "{seed}",
                    "arm": "xattn_from_base",
                },
            ),
            train_text_log="results/runs/{dataset}/{shotdir}/seed{seed}/xattn_from_base/train.log",
        log:
            "results/logs/train_xattn_from_base/{dataset}/{shotdir}/seed{seed}.log",
        benchmark:
            "results/benchmarks/train_xattn_from_base/{dataset}/{shotdir}/seed{seed}/xattn_from_base.tsv"
        conda:
            "../../envs/aaclip.yaml"
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        params:
            train=get_train_settings(),
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
                labels={
                    "shot": "{shotdir}",
                    "seed": "{seed}",
                    "arm": "baseline_continued",
                },
            ),
            train_text_log="results/runs/{dataset}/{shotdir}/seed{seed}/baseline_continued/train.log",
        log:
            "results/logs/train_baseline_continued/{dataset}/{shotdir}/seed{seed}.log",
        benchmark:
            "results/benchmarks/train_baseline_continued/{dataset}/{shotdir}/seed{seed}/baseline_continued.tsv"
        conda:
            "../../envs/aaclip.yaml"
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        params:
            train=get_train_settings(),
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
        conda:
            "../../envs/aaclip.yaml"
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        params:
            train=get_train_settings(),
        script:
            "../scripts/train_xattn_scratch.py"

else:
    # One rule per arm and seed group: a group's output list depends on its seeds, and output patterns
    # cannot be functions (as for evaluate_<train dataset>).
    for _arm in ARMS:
        for _index, _seeds in enumerate(SEED_GROUPS, start=1):
            _group = seed_group_id(_seeds)

            rule:
                name:
                    f"train_group_{_arm}_{_index}"
                input:
                    unpack(get_group_inputs(_arm, _seeds)),
                output:
                    text=get_group_outputs(_arm, _seeds, "text_adapter.pth"),
                    image=get_group_outputs(_arm, _seeds, "image_adapter.pth"),
                    record=get_group_outputs(_arm, _seeds, "run.json"),
                    train_log=[
                        report(
                            path,
                            caption="../report/train_log.rst",
                            category="Training",
                            subcategory="{dataset}",
                            labels={
                                "shot": "{shotdir}",
                                "seed": str(seed),
                                "arm": _arm,
                            },
                        )
                        for seed, path in zip(
                            _seeds, get_group_outputs(_arm, _seeds, "train_log.csv")
                        )
                    ],
                    train_text_log=get_group_outputs(_arm, _seeds, "train.log"),
                log:
                    f"results/logs/train_group_{_arm}/{{dataset}}/{{shotdir}}/{_group}.log",
                benchmark:
                    f"results/benchmarks/train_group_{_arm}/{{dataset}}/{{shotdir}}/{_group}.tsv"
                conda:
                    "../../envs/aaclip.yaml"
                threads: 1
                resources:
                    gpu=GPU_PER_JOB,
                params:
                    train=get_train_settings(),
                    arm=_arm,
                    seeds=_seeds,
                script:
                    "../scripts/train_seed_group.py"
