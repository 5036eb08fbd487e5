# Evaluation: one job per run, covering all test datasets of its training dataset (process start-up
# costs ~4 s, so one job per test dataset would be wasteful). The output list depends on the training
# dataset, and output patterns cannot be functions, so there is one `evaluate_<train dataset>` rule per
# configured training dataset; all of them log and benchmark under `evaluate/`.

for _train_dataset, _tests in TEST_DATASETS.items():

    rule:
        name:
            f"evaluate_{_train_dataset}"
        input:
            unpack(get_run_files),
            summaries=get_test_summaries(_train_dataset),
        output:
            tables=[
                report(
                    f"results/eval/{{dataset}}/{{shotdir}}/seed{{seed}}/{{arm}}/{test}.csv",
                    caption="../report/eval_table.rst",
                    category="Evaluation",
                    subcategory="{dataset}",
                    labels={
                        "test": test,
                        "shot": "{shotdir}",
                        "seed": "{seed}",
                        "arm": "{arm}",
                    },
                )
                for test in _tests
            ],
            sidecars=expand(
                "results/eval/{{dataset}}/{{shotdir}}/seed{{seed}}/{{arm}}/{test}.json",
                test=_tests,
            ),
        log:
            "results/logs/evaluate/{dataset}/{shotdir}/seed{seed}/{arm}.log",
        benchmark:
            "results/benchmarks/evaluate/{dataset}/{shotdir}/seed{seed}/{arm}.tsv"
        wildcard_constraints:
            dataset=re.escape(_train_dataset),
        conda:
            "../../envs/aaclip.yaml"
        threads: 1
        resources:
            gpu=GPU_PER_JOB,
        params:
            evaluate=get_eval_settings(),
            test_datasets=get_test_specs(_train_dataset),
        script:
            "../scripts/evaluate.py"
