# Aggregation and statistics: local rules reading the result records (no torch, seconds each).


rule write_expected_runs:
    output:
        expected="results/stats/expected_runs.json",
    log:
        "results/logs/write_expected_runs/expected_runs.log",
    localrule: True
    conda:
        "../../envs/aaclip.yaml"
    params:
        expected=get_expected_runs(),
    script:
        "../scripts/write_expected_runs.py"


rule collect_metrics:
    input:
        tables=get_eval_tables(),
    output:
        metrics=report(
            "results/stats/metrics_long.csv",
            caption="../report/metrics_long.rst",
            category="Evaluation",
            subcategory="All runs",
        ),
    log:
        "results/logs/collect_metrics/metrics_long.log",
    localrule: True
    conda:
        "../../envs/aaclip.yaml"
    script:
        "../scripts/collect_metrics.py"


rule collect_benchmarks:
    input:
        benchmarks=get_benchmarks(),
    output:
        table=report(
            "results/stats/benchmarks.csv",
            caption="../report/benchmarks.rst",
            category="Training",
            subcategory="Runtime and memory",
        ),
    log:
        "results/logs/collect_benchmarks/benchmarks.log",
    localrule: True
    conda:
        "../../envs/aaclip.yaml"
    params:
        records=get_benchmark_records(),
    script:
        "../scripts/collect_benchmarks.py"


rule stats:
    input:
        metrics="results/stats/metrics_long.csv",
    output:
        comparisons=report(
            "results/stats/comparisons.csv",
            caption="../report/comparisons.rst",
            category="Statistics",
            subcategory="Comparisons",
        ),
    log:
        "results/logs/stats/comparisons.log",
    localrule: True
    conda:
        "../../envs/aaclip.yaml"
    params:
        stats=config["stats"],
    script:
        "../scripts/stats.py"


rule checklist:
    input:
        expected="results/stats/expected_runs.json",
        comparisons="results/stats/comparisons.csv",
        records=get_run_records(),
        splits=get_splits(),
        tables=get_eval_tables(),
        sidecars=get_eval_sidecars(),
    output:
        checklist=report(
            "results/stats/checklist.json",
            caption="../report/checklist.rst",
            category="Checklist",
            subcategory="Fair comparison",
        ),
    log:
        "results/logs/checklist/checklist.log",
    localrule: True
    conda:
        "../../envs/aaclip.yaml"
    params:
        stats=config["stats"],
    script:
        "../scripts/checklist.py"
